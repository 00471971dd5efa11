"""Import shims for the environments mult runs in.

torchvision's PyPI wheels are CUDA builds. With the CPU build of torch, ``import torchvision`` fails with
``RuntimeError: operator torchvision::nms does not exist`` (pytorch/vision#9085) because the wheel's C++
ops library does not load. Models and transforms are pure Python and work once the two op schemas that
``torchvision.ops`` registers fake kernels for are defined. The shim is applied only when the real import
fails in exactly that way; ``torchvision.ops.nms`` and ``torchvision.io`` decoding stay unavailable
(images are decoded with Pillow).
"""

from __future__ import annotations

import sys
from types import ModuleType


def _define_missing_torchvision_ops():
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return lib


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, applying the CPU-torch shim only if the plain import fails."""
    try:
        import torchvision
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # drop the half-imported package before retrying
        library = _define_missing_torchvision_ops()
        import torchvision

        # The Library object must live as long as the module, or its definitions are dropped again.
        torchvision._mult_cpu_shim = library  # type: ignore[attr-defined]
    return torchvision
