"""SynthVI: a synthetic visible-infrared person dataset written in the real SYSU-MM01 / RegDB formats.

Modules, one job each: ``seeding`` (reproducible random streams), ``identity`` (a person's fixed appearance),
``cameras`` (camera layouts and sensors), ``scene`` (camera backgrounds), ``shapes`` (vectorised drawing),
``body`` (the painted person), ``render`` (pose and the visible / infrared image), ``plan`` (what to render, split files) and
``writer`` (:func:`synthesize`: atomic, parallel writing). See docs/SYNTHVI.md.
"""

from mult.data.synth.writer import SynthSummary, synthesize

__all__ = ["SynthSummary", "synthesize"]
