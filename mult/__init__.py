"""mult: unsupervised visible-infrared person re-identification with MULT + OCLR.

Core package shared by every stage: CLI, config, data readers, the encoder and the evaluation protocols.
The stage folders (train/, export/, serving/, app/) are installed as ``mult.train`` etc.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mult")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
