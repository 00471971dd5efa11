"""What a mult Triton model repository looks like: model and tensor names, file names, version folders.

Torch-free on purpose: the serving side (Triton client, local ONNX Runtime encoder, the server launcher)
reads a repository without the training stack installed. ``onnx_export`` and ``repository`` write what
this module names.
"""

from __future__ import annotations

from pathlib import Path

from mult.data.records import Modality

#: The ONNX graph's one input (uint8 NHWC RGB) and one output (unit embeddings).
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
#: ONNX metadata keys a client reads instead of hard-coding the input size.
META_PREFIX = "mult."

MODEL_NAMES: dict[Modality, str] = {Modality.visible: "mult_visible", Modality.infrared: "mult_infrared"}
ONNX_FILE = "model.onnx"
CONFIG_FILE = "config.pbtxt"
MANIFEST_FILE = "manifest.json"
#: Dynamic batcher wait: 100 us is the Triton docs' suggested starting point for latency-bound models.
DEFAULT_QUEUE_DELAY_US = 100
#: ``mult export``'s largest batch; ``mult serve`` also uses it when neither config.pbtxt nor the manifest says.
DEFAULT_MAX_BATCH_SIZE = 64


def existing_versions(model_dir: Path) -> list[int]:
    """Numeric version folders of one model (what Triton would load), sorted."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
