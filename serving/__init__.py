"""mult.serving: the local Triton server, the Triton gRPC encoder client and the FAISS gallery."""

from __future__ import annotations

from typing import Any

# Lazy re-exports: `import mult.serving` stays cheap (no tritonclient / onnxruntime until a name is used).
_EXPORTS = {
    "open_encoder": "mult.serving.encoders",
    "load_resized": "mult.serving.encoders",
    "OnnxEncoder": "mult.serving.onnx_local",
    "TritonEncoder": "mult.serving.triton_client",
    "TritonServer": "mult.serving.triton_server",
    "build_runtime_repository": "mult.serving.triton_server",
    "serve": "mult.serving.triton_server",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mult.serving' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
