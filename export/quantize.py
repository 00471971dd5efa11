"""Reduced-precision copies of an exported stem: FP16 weights/compute and INT8 static quantisation.

Both conversions keep the served interface of DESIGN.md "Served model" unchanged: input ``images`` UINT8
``[N, H, W, 3]`` with a dynamic batch axis, output ``embeddings`` FP32 ``[N, D]`` and L2-normalised, and the
``mult.*`` metadata (``mult.precision`` is added). Only the convolutional trunk changes precision
(:func:`trunk_nodes`): the uint8 -> float scaling and ImageNet normalisation before it, and GeM pooling
(``x^3`` overflows FP16 beyond ~40), the BN neck and the final L2 norm after it, stay in FP32.

* FP16 (:func:`to_fp16`) is a small graph rewrite of our own: ONNX Runtime's
  ``onnxruntime.transformers.float16.convert_float_to_float16`` with an op block list was tried first (ORT
  1.32) and casts *every* blocked node's output to FP16 and back (so the FP32 head is rounded anyway) and
  emits a graph that is not topologically sorted (``onnx.checker`` rejects it). Here each boundary tensor
  gets exactly one Cast, in order.
* INT8 (:func:`to_int8`) is ONNX Runtime static quantisation: ``quant_pre_process`` (shape inference and
  basic graph optimisation; symbolic shape inference is skipped, it cannot follow the L2-norm reshape),
  then ``quantize_static`` in QDQ format with per-channel symmetric INT8 weights and asymmetric UINT8
  activations calibrated (min/max) on real uint8 images, restricted to the trunk's Conv/Relu/MaxPool/Add
  nodes. UINT8 activations (U8S8) because that is what ONNX Runtime's x86 kernels are fast with: ResNet-18 at
  128x64, batch 8, on the 2-core EPYC: FP32 316 ms, U8S8 111 ms, S8S8 304 ms. (TensorRT would want
  symmetric INT8 activations instead; that is a GPU-host option not built here.)

Both write to a temporary name and rename, after ``onnx.checker`` (with type inference) passed and the
graph's inputs and outputs were compared with the source.

Five-line use::

    from mult.export.quantize import to_fp16, to_int8
    to_fp16("v/1/model.onnx", "v16.onnx")
    to_int8("v/1/model.onnx", "v8.onnx", calibration_uint8)   # uint8 [N, H, W, 3] images of that modality
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from mult.errors import MultError
from mult.export.onnx_export import (
    INPUT_NAME,
    MAX_ABS_TOL,
    META_PREFIX,
    MIN_COSINE_TOL,
)
from mult.io import PathLike, atomic_path


PRECISIONS = ("fp32", "fp16", "int8")
#: (max abs diff, min row cosine) that the torch-vs-ONNX parity check accepts per precision. Measured on a
#: ResNet-18 with random weights and re-estimated BN statistics (tests/test_quantize.py; embeddings of
#: different images have cosine ~0 there): FP16 max abs 8e-4 / cosine 0.99999; INT8 max abs 0.035 / cosine
#: 0.981 (per-channel or not, first/last layers kept in FP32 or not, min-max or percentile ranges: all
#: 0.974-0.984); INT8 calibrated on black frames: cosine ~0. The bounds leave room for other weights while a
#: broken conversion (wrong ranges, overflow, a swapped stem) lands far below them. A random-init ResNet-50 at
#: 288x144 (50 FP16 layers, untrained statistics) measured FP16 max abs 8.0e-3 / cosine 0.99897, hence the FP16
#: cosine bound of 0.995: the retrieval-metric change (benchmarks/bench_serving.py) is the finer check.
PARITY_TOLERANCES: dict[str, tuple[float, float]] = {
    "fp32": (MAX_ABS_TOL, MIN_COSINE_TOL),
    "fp16": (2e-2, 0.995),
    "int8": (0.1, 0.95),
}
#: MobileNetV2 loses more to INT8: its depthwise convolutions get per-tensor uint8 activations. Measured at 128x64
#: against FP32 (row cosine min / median): ImageNet weights 0.943 / 0.971 on 40 held-out SynthVI images; the `make
#: demo` model after training 0.855 (parity images) and 0.80 / 0.91 on 60 held-out ones, while its retrieval barely
#: moves (10-trial all-search mAP 25.26 -> 24.69, R1 21.01 -> 21.05; BENCHMARKS.md). MinMax or Entropy ranges, FP32
#: first/last convolutions, no INT8 Add: all within 0.01. Its INT8 bound is therefore 0.75: a broken conversion
#: (wrong ranges, a swapped stem) still lands near 0.
INT8_MIN_COSINE_BY_ARCH: dict[str, float] = {"mobilenetv2": 0.75}


def parity_tolerances(precision: str, arch: str) -> tuple[float, float]:
    """(max abs diff, min row cosine) the parity check accepts for ``precision`` on an ``arch`` encoder."""
    max_abs, min_cosine = PARITY_TOLERANCES[precision]
    if precision == "int8":
        min_cosine = INT8_MIN_COSINE_BY_ARCH.get(arch, min_cosine)
    return max_abs, min_cosine
#: Op types of the convolutional trunk (BN is folded into Conv by the exporter; a left-over one is allowed;
#: Clip is MobileNetV2's ReLU6).
TRUNK_OPS = frozenset({"Conv", "Relu", "Clip", "MaxPool", "Add", "BatchNormalization"})
#: Op types ONNX Runtime quantises in the trunk (QDQ around them; ORT fuses them into QLinear kernels).
INT8_OPS = ("Conv", "Relu", "Clip", "MaxPool", "Add")
#: What the INT8 graph holds (recorded in its metadata as ``mult.quantization``).
INT8_SCHEME = "QDQ; trunk only; int8 per-channel symmetric weights; uint8 asymmetric per-tensor activations"
#: Images per calibration batch. MinMax calibration keeps only per-tensor ReduceMin/ReduceMax results per
#: batch, so memory does not grow with the number of calibration images.
CALIBRATION_BATCH = 8


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a MultError naming the choices."""
    if precision not in PRECISIONS:
        raise MultError(f"precision {precision!r} unknown: use one of {', '.join(PRECISIONS)}")
    return precision


# ---- graph helpers -------------------------------------------------------------------------------------


def _load(path: PathLike):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise MultError(f"{path}: no ONNX model here; export it first with `mult export`")
    try:
        return onnx.load(str(path))
    except Exception as err:  # DecodeError and friends
        raise MultError(f"{path}: not a readable ONNX model ({type(err).__name__}); re-export it") from None


def _name_nodes(model) -> None:
    """Give unnamed nodes a unique name (the quantiser selects nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"mult_node_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def trunk_nodes(model) -> list[str]:
    """Names of the nodes of the convolutional trunk: :data:`TRUNK_OPS` nodes whose activation inputs are all
    FP32 4-D feature maps (per ONNX shape inference). The [N, C] head (GeM's ``+ eps``, the BN neck) is 2-D, the
    input scaling is not a trunk op type, so neither is selected."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type for v in (*graph.value_info, *graph.input, *graph.output)}
    initializers = {t.name for t in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type not in TRUNK_OPS:
            continue
        activations = [name for name in node.input if name and name not in initializers]
        if activations and all(
            name in types and types[name].elem_type == TensorProto.FLOAT and len(types[name].shape.dim) == 4
            for name in activations
        ):
            chosen.append(node.name)
    return chosen


def interface(model) -> list[tuple[str, int, tuple]]:
    """(name, element type, dims) of every graph input and output: what the conversions must not change."""
    rows = []
    for value in (*model.graph.input, *model.graph.output):
        tensor = value.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in tensor.shape.dim)
        rows.append((value.name, tensor.elem_type, dims))
    return rows


def convert_trunk_to_fp16(model):
    """A copy of ``model`` whose trunk (:func:`trunk_nodes`) computes in FP16 with FP16 weights.

    Every FP32 tensor entering the trunk gets one ``Cast`` to FP16 (inserted right before its first trunk
    consumer); every trunk tensor read outside the trunk is renamed ``*_fp16`` and gets one ``Cast`` back to
    FP32 under its old name (right after its producer), so the rest of the graph is untouched and the node
    list stays topologically sorted. Weights used only by the trunk are stored once, in FP16.
    """
    from onnx import TensorProto, helper, numpy_helper

    model = copy.deepcopy(model)
    _name_nodes(model)
    graph = model.graph
    trunk = set(trunk_nodes(model))
    initializers = {t.name: t for t in graph.initializer}
    outside_readers: set[str] = {name for n in graph.node if n.name not in trunk for name in n.input}
    outside_readers |= {v.name for v in graph.output}

    half: dict[str, str] = {}  # FP32 tensor (outside or initializer) -> its FP16 copy
    produced_half: dict[str, str] = {}  # trunk output -> name of the FP16 tensor
    new_nodes, new_initializers = [], []
    for node in graph.node:
        if node.name not in trunk:
            new_nodes.append(node)
            continue
        for k, name in enumerate(node.input):
            if not name:
                continue
            if name in produced_half:
                node.input[k] = produced_half[name]
                continue
            if name not in half:
                half[name] = f"{name}_fp16"
                if name in initializers:
                    array = numpy_helper.to_array(initializers[name]).astype(np.float16)
                    new_initializers.append(numpy_helper.from_array(array, half[name]))
                else:
                    new_nodes.append(helper.make_node("Cast", [name], [half[name]], name=f"{half[name]}/Cast",
                                                      to=TensorProto.FLOAT16))
            node.input[k] = half[name]
        new_nodes.append(node)
        for k, name in enumerate(node.output):
            if name in outside_readers:
                produced_half[name] = node.output[k] = f"{name}_fp16"
                new_nodes.append(helper.make_node("Cast", [produced_half[name]], [name], name=f"{name}/Cast",
                                                  to=TensorProto.FLOAT))
            else:
                produced_half[name] = name  # read only inside the trunk: the name now holds FP16
    used = {name for node in new_nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + new_initializers)
    del graph.value_info[:]  # stale element types; ONNX Runtime re-infers them
    return model


def _set_metadata(model, source, extra: dict[str, str]) -> None:
    """The source's ``mult.*`` metadata plus ``extra`` (prefixed); other keys (e.g. the quantiser's) are dropped."""
    kept = {e.key: e.value for e in source.metadata_props if e.key.startswith(META_PREFIX)}
    kept.update({META_PREFIX + k: v for k, v in extra.items()})
    del model.metadata_props[:]
    for key, value in kept.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _finish(model, source, dst: Path, extra: dict[str, str]) -> Path:
    """Check ``model`` keeps ``source``'s interface, stamp the metadata, validate and save it atomically."""
    import onnx

    if interface(model) != interface(source):
        raise MultError(f"{dst}: the conversion changed the model's inputs/outputs ({interface(model)} vs "
                        f"{interface(source)}); this is a bug, please report it")
    _set_metadata(model, source, extra)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as err:
        raise MultError(f"{dst}: the converted graph is not valid ONNX ({str(err).splitlines()[0]}); this is a "
                        "bug, please report it") from None
    try:
        with atomic_path(dst) as tmp:
            onnx.save_model(model, str(tmp), save_as_external_data=False)
    except OSError as err:
        raise MultError(f"{dst}: cannot write the ONNX file ({err.strerror}); check the folder is writable") from None
    return dst


def model_precision(path: PathLike) -> str:
    """``mult.precision`` of an exported model; models without the key are FP32 (plain ``export_onnx``)."""
    for entry in _load(path).metadata_props:
        if entry.key == META_PREFIX + "precision":
            return entry.value
    return "fp32"


# ---- FP16 ----------------------------------------------------------------------------------------------


def to_fp16(src_onnx: PathLike, dst_onnx: PathLike) -> Path:
    """Write an FP16-trunk copy of the FP32 model ``src_onnx`` to ``dst_onnx`` (same interface, about half the
    size). On a CPU without FP16 kernels ONNX Runtime runs the FP16 nodes through inserted casts; the gain is
    on GPUs (CUDA / TensorRT execution providers)."""
    source = _load(src_onnx)
    return _finish(convert_trunk_to_fp16(source), source, Path(dst_onnx), {"precision": "fp16"})


# ---- INT8 ----------------------------------------------------------------------------------------------


def _calibration_reader(images: np.ndarray, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class UInt8Batches(CalibrationDataReader):
        """Feeds uint8 NHWC batches to the calibrator under the graph's input name (restartable)."""

        def __init__(self) -> None:
            self._batches: Optional[Iterator[dict[str, np.ndarray]]] = None
            self.rewind()

        def get_next(self) -> Optional[dict[str, np.ndarray]]:
            return next(self._batches, None)

        def rewind(self) -> None:
            self._batches = ({INPUT_NAME: np.ascontiguousarray(images[i:i + batch_size])}
                             for i in range(0, len(images), batch_size))

    return UInt8Batches()


def _check_calibration(images: np.ndarray, source) -> np.ndarray:
    meta = {e.key[len(META_PREFIX):]: e.value for e in source.metadata_props if e.key.startswith(META_PREFIX)}
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise MultError(f"calibration images must be a non-empty uint8 array [N, H, W, 3], got {images.dtype} "
                        f"{list(images.shape)}; pass some images of the modality (e.g. --calibration-dir DIR)")
    if "height" in meta and "width" in meta and images.shape[1:3] != (int(meta["height"]), int(meta["width"])):
        raise MultError(f"calibration images are {images.shape[1]}x{images.shape[2]} but the model expects "
                        f"{meta['height']}x{meta['width']}; resize them first")
    return images


def to_int8(src_onnx: PathLike, dst_onnx: PathLike, calibration_uint8: np.ndarray, *,
            batch_size: int = CALIBRATION_BATCH) -> Path:
    """Write an INT8 (QDQ, per-channel weights) copy of the FP32 model ``src_onnx`` to ``dst_onnx``.

    ``calibration_uint8``: uint8 ``[N, H, W, 3]`` RGB images like the ones the model will serve (resized,
    not normalised), from which activation ranges are measured (min/max over all of them); tens to hundreds
    of real images of the stem's modality are typical.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if int(batch_size) < 1:
        raise MultError(f"calibration batch size must be >= 1, got {batch_size}")
    dst = Path(dst_onnx)
    source = _load(src_onnx)
    images = _check_calibration(calibration_uint8, source)
    import onnx

    with tempfile.TemporaryDirectory(prefix="mult-int8-") as work:
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        named = copy.deepcopy(source)
        _name_nodes(named)
        onnx.save_model(named, str(Path(work) / "named.onnx"))
        root_logger = logging.getLogger()
        level = root_logger.level
        root_logger.setLevel(max(level, logging.ERROR))  # the quantiser logs advice on the root logger
        try:
            quant_pre_process(str(Path(work) / "named.onnx"), str(prepared), skip_symbolic_shape=True)
            nodes = trunk_nodes(onnx.load(str(prepared)))
            quantize_static(
                str(prepared), str(quantized), _calibration_reader(images, int(batch_size)),
                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OPS), nodes_to_quantize=nodes,
                # Not CalibMaxIntermediateOutputs: in ORT 1.32 it drops the batches it should merge.
                calibrate_method=CalibrationMethod.MinMax,
            )
        except MultError:
            raise
        except Exception as err:  # the quantiser raises assorted types; name the model and stop
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MultError(f"{src_onnx}: INT8 quantisation failed ({type(err).__name__}: {first}); export FP32 "
                            "or FP16 instead") from None
        finally:
            root_logger.setLevel(level)
        model = onnx.load(str(quantized))
    return _finish(model, source, dst, {"precision": "int8", "calibration_images": str(len(images)),
                                        "calibration_method": "minmax", "quantization": INT8_SCHEME})
