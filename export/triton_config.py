"""Every ``config.pbtxt`` mult writes or reads: built as Triton's ``ModelConfig`` protobuf message, written and
parsed with ``google.protobuf.text_format``.

A config is described as a dict shaped like the message (field names of Triton's model_config.proto, enum values
by name, maps as dicts), turned into the message with ``json_format.ParseDict`` (a misspelt field or enum value
fails there, not when Triton loads the model) and printed with ``text_format.MessageToString``. The message class
is Triton's own from tritonclient, imported lazily, or a built-in subset of it when tritonclient is not installed
(:mod:`mult.export.triton_schema`), so ``mult export`` works without the ``serve`` extra.

Two writers use it: :func:`triton_config` (the export's onnxruntime model for the official Triton container) and
``mult.serving.runtime_repository.runtime_config`` (the python-backend model of ``mult serve``); both start from
:func:`model_spec`, the tensors, batching and instances the two share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mult.errors import MultError
from mult.export.layout import DEFAULT_MAX_BATCH_SIZE, DEFAULT_QUEUE_DELAY_US, INPUT_NAME, OUTPUT_NAME
from mult.export.triton_schema import model_config_type

INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")


def model_spec(name: str, *, height: int, width: int, embedding_size: int, max_batch_size: int,
               max_queue_delay_us: int, instance_kind: str, instance_count: int) -> dict[str, Any]:
    """The fields every mult model config has: uint8 ``[H, W, 3]`` in, FP32 ``[D]`` out, dynamic batching, one
    instance group. ``max_batch_size > 0`` makes the batch dimension implicit, so ``dims`` exclude it."""
    return {
        "name": name,
        "max_batch_size": int(max_batch_size),
        "input": [{"name": INPUT_NAME, "data_type": "TYPE_UINT8", "dims": [int(height), int(width), 3]}],
        "output": [{"name": OUTPUT_NAME, "data_type": "TYPE_FP32", "dims": [int(embedding_size)]}],
        "dynamic_batching": {"max_queue_delay_microseconds": int(max_queue_delay_us)},
        "instance_group": [{"count": int(instance_count), "kind": instance_kind}],
    }


def config_text(spec: dict[str, Any]) -> str:
    """``config.pbtxt`` text of ``spec`` (a dict shaped like Triton's ModelConfig message)."""
    from google.protobuf import json_format, text_format

    return text_format.MessageToString(json_format.ParseDict(spec, model_config_type()()))


def parse_config(text: str) -> Any:
    """The ModelConfig message of ``config.pbtxt`` text; ``text_format.ParseError`` when it is not one."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_type()())


def read_config(path: Path) -> Any:
    """The ModelConfig message of the ``config.pbtxt`` at ``path``, or a one-line MultError naming it."""
    from google.protobuf import text_format

    try:
        return parse_config(path.read_text(encoding="utf-8"))
    except (text_format.ParseError, UnicodeDecodeError) as err:
        raise MultError(f"{path}: not a valid Triton model config ({str(err).splitlines()[0]}); fix it or "
                        "re-export with `mult export`") from None


def triton_config(
    name: str,
    *,
    height: int,
    width: int,
    embedding_size: int,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    tensorrt: bool = False,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instance_kind: str = "KIND_AUTO",
    instance_count: int = 1,
) -> str:
    """The ``config.pbtxt`` of one model for the official Triton container (onnxruntime backend).

    The ONNX graph has a symbolic batch axis to match the implicit one. ``model_warmup`` sends one all-zero batch
    at load (the model is not READY before, so the first real request does not pay for lazy initialisation or a
    TensorRT build). ``tensorrt`` adds the ONNX Runtime TensorRT execution accelerator in FP16
    (onnxruntime_backend README).
    """
    if int(max_batch_size) < 1:
        raise MultError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if instance_kind not in INSTANCE_KINDS:
        raise MultError(f"instance kind {instance_kind!r} unknown: use one of {', '.join(INSTANCE_KINDS)}")
    spec = model_spec(name, height=height, width=width, embedding_size=embedding_size, max_batch_size=max_batch_size,
                      max_queue_delay_us=max_queue_delay_us, instance_kind=instance_kind, instance_count=instance_count)
    spec["platform"] = "onnxruntime_onnx"
    zeros = {"data_type": "TYPE_UINT8", "dims": [int(height), int(width), 3], "zero_data": True}
    spec["model_warmup"] = [{"name": "zeros", "batch_size": 1, "inputs": {INPUT_NAME: zeros}}]
    if tensorrt:
        accelerator = {"name": "tensorrt",
                       "parameters": {"precision_mode": "FP16", "max_workspace_size_bytes": "1073741824"}}
        spec["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [accelerator]}}
    return config_text(spec)
