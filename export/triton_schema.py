"""Triton's ``ModelConfig`` protobuf message class, the schema every ``config.pbtxt`` of mult is built with.

:func:`model_config_type` returns ``tritonclient.grpc.model_config_pb2.ModelConfig`` (Triton's own schema,
``serve`` extra) when tritonclient is installed. It is imported lazily, only when a config is built or read, so
importing the export floor needs neither tritonclient nor protobuf.

``mult export`` must keep working without the ``serve`` extra (an export for the official Triton container
needs only the ``cpu`` or ``gpu`` extra). Without tritonclient the class is built here from :data:`_SUBSET`:
the part of Triton's ``model_config.proto`` (proto3, package ``inference``) that mult writes, with Triton's own
field names, numbers and enum values, in a private descriptor pool. protobuf itself always comes with ``onnx``.
The text such a message prints is the same as Triton's class prints for the same values (fields are printed in
number order, proto3 defaults are left out in both). It is a writer's schema: a config using fields outside
the subset does not parse with it (the serving floor, which reads configs, always has tritonclient).
"""

from __future__ import annotations

import functools
from typing import Any

#: Message -> fields as (name, number, type, label); a type is a scalar name, an enum or message of the subset,
#: or ``map<string, X>``. Label ``"repeated"`` or ``""``. Numbers as in Triton's model_config.proto.
_SUBSET: dict[str, tuple[tuple[str, int, str, str], ...]] = {
    "ModelConfig": (
        ("name", 1, "string", ""), ("platform", 2, "string", ""), ("version_policy", 3, "ModelVersionPolicy", ""),
        ("max_batch_size", 4, "int32", ""), ("input", 5, "ModelInput", "repeated"),
        ("output", 6, "ModelOutput", "repeated"), ("instance_group", 7, "ModelInstanceGroup", "repeated"),
        ("dynamic_batching", 11, "ModelDynamicBatching", ""), ("optimization", 12, "ModelOptimizationPolicy", ""),
        ("parameters", 14, "map<string, ModelParameter>", ""), ("model_warmup", 16, "ModelWarmup", "repeated"),
        ("backend", 17, "string", ""),
    ),
    "ModelVersionPolicy": (("latest", 1, "Latest", ""), ("all", 2, "All", "")),
    "Latest": (("num_versions", 1, "uint32", ""),),
    "All": (),
    "ModelInput": (("name", 1, "string", ""), ("data_type", 2, "DataType", ""), ("dims", 4, "int64", "repeated")),
    "ModelOutput": (("name", 1, "string", ""), ("data_type", 2, "DataType", ""), ("dims", 3, "int64", "repeated")),
    "ModelInstanceGroup": (("kind", 4, "Kind", ""), ("count", 2, "int32", "")),
    "ModelDynamicBatching": (("max_queue_delay_microseconds", 2, "uint64", ""),),
    "ModelOptimizationPolicy": (("execution_accelerators", 4, "ExecutionAccelerators", ""),),
    "ExecutionAccelerators": (("gpu_execution_accelerator", 1, "Accelerator", "repeated"),
                              ("cpu_execution_accelerator", 2, "Accelerator", "repeated")),
    "Accelerator": (("name", 1, "string", ""), ("parameters", 2, "map<string, string>", "")),
    "ModelParameter": (("string_value", 1, "string", ""),),
    "ModelWarmup": (("name", 1, "string", ""), ("batch_size", 2, "uint32", ""),
                    ("inputs", 3, "map<string, WarmupInput>", ""), ("count", 4, "uint32", "")),
    "WarmupInput": (("data_type", 1, "DataType", ""), ("dims", 2, "int64", "repeated"),
                    ("zero_data", 3, "bool", ""), ("random_data", 4, "bool", "")),
}
_ENUMS: dict[str, tuple[tuple[str, int], ...]] = {
    "DataType": (("TYPE_INVALID", 0), ("TYPE_BOOL", 1), ("TYPE_UINT8", 2), ("TYPE_UINT16", 3), ("TYPE_UINT32", 4),
                 ("TYPE_UINT64", 5), ("TYPE_INT8", 6), ("TYPE_INT16", 7), ("TYPE_INT32", 8), ("TYPE_INT64", 9),
                 ("TYPE_FP16", 10), ("TYPE_FP32", 11), ("TYPE_FP64", 12), ("TYPE_STRING", 13), ("TYPE_BF16", 14)),
    "Kind": (("KIND_AUTO", 0), ("KIND_GPU", 1), ("KIND_CPU", 2), ("KIND_MODEL", 3)),
}
_PACKAGE = "mult_triton_subset"


def model_config_type() -> Any:
    """The ``ModelConfig`` message class: tritonclient's when installed, else the built-in subset."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return _subset_type()
    return model_config_pb2.ModelConfig


@functools.lru_cache(maxsize=1)
def _subset_type() -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="mult_model_config_subset.proto", package=_PACKAGE,
                                               syntax="proto3")
    for enum, values in _ENUMS.items():
        proto.enum_type.add(name=enum).value.extend(
            descriptor_pb2.EnumValueDescriptorProto(name=n, number=v) for n, v in values)
    for message, fields in _SUBSET.items():
        _add_message(proto.message_type.add(name=message), fields)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.ModelConfig"))


def _add_message(message: Any, fields: tuple[tuple[str, int, str, str], ...]) -> None:
    from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F

    for name, number, kind, label in fields:
        field = message.field.add(name=name, number=number, json_name=_json_name(name))
        field.label = F.LABEL_REPEATED if label or kind.startswith("map<") else F.LABEL_OPTIONAL
        if kind.startswith("map<"):  # a map is a repeated nested entry message (key = 1, value = 2)
            entry = message.nested_type.add(name="".join(p.title() for p in name.split("_")) + "Entry")
            entry.options.map_entry = True
            value = kind[len("map<string, "):-1]
            _add_message(entry, (("key", 1, "string", ""), ("value", 2, value, "")))
            field.type, field.type_name = F.TYPE_MESSAGE, f".{_PACKAGE}.{message.name}.{entry.name}"
        elif kind in _ENUMS:
            field.type, field.type_name = F.TYPE_ENUM, f".{_PACKAGE}.{kind}"
        elif kind in _SUBSET:
            field.type, field.type_name = F.TYPE_MESSAGE, f".{_PACKAGE}.{kind}"
        else:
            field.type = getattr(F, f"TYPE_{kind.upper()}")


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)
