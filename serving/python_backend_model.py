"""Triton python-backend model: serves one exported ``model.onnx`` through ONNX Runtime.

This file is a template: :func:`mult.serving.triton_server.build_runtime_repository` copies it as
``<model>/<version>/model.py`` because the Triton build bundled with nvidia-pytriton has only the python
backend (no onnxruntime backend; ENVIRONMENT.md). It runs inside Triton's python stub process, so it imports
nothing from ``mult``: only numpy, onnxruntime and ``triton_python_backend_utils``.

* One ``execute()`` call gets every request the dynamic batcher merged; their images are concatenated into
  ONE ONNX Runtime run and the embeddings are split back per request.
* Each request is checked (dtype, shape) on its own; a bad one gets an error reply (``pb_utils.TritonError``)
  and the others in the same batch are still answered. Nothing here raises out of ``execute()``, so the
  stub never dies because of a client.
* Config ``parameters``: ``onnx_file`` (default ``model.onnx``), ``intra_op_threads`` (0 = ORT default).
"""

import json
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (tests read request_problem); the model class needs the stub
    pb_utils = None


def request_problem(array, sample_shape):
    """Why a request's input cannot be served, or None when it is a uint8 batch ``[n >= 1, *sample_shape]``."""
    if array is None:
        return "missing input tensor 'images'"
    if array.dtype != np.uint8:
        return f"input 'images' must be UINT8 RGB 0-255, got {array.dtype}"
    if array.ndim != 1 + len(sample_shape) or tuple(array.shape[1:]) != tuple(sample_shape):
        expected = ", ".join(str(d) for d in ("N", *sample_shape))
        return f"input 'images' must have shape [{expected}], got {list(array.shape)}"
    if array.shape[0] == 0:
        return "input 'images' holds no image (batch of 0)"
    return None


def split_rows(values, counts):
    """Split ``values`` [sum(counts), ...] into consecutive blocks of ``counts`` rows."""
    return np.split(values, np.cumsum(counts)[:-1])


class TritonPythonModel:
    """One model instance: an ONNX Runtime session on this version's ONNX file."""

    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        (inp,), (out,) = config["input"], config["output"]
        self.input_name, self.output_name = inp["name"], out["name"]
        self.sample_shape = tuple(int(d) for d in inp["dims"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        onnx_file = params.get("onnx_file") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = int(params.get("intra_op_threads") or 0)
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        # Warm up before Triton reports READY, so the first real request does not pay for lazy initialisation.
        self.session.run([self.output_name], {self.input_name: np.zeros((1, *self.sample_shape), np.uint8)})

    def _error(self, message):
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        error = pb_utils.TritonError(f"{self.model_name}: {message}", code) if code is not None \
            else pb_utils.TritonError(f"{self.model_name}: {message}")
        return pb_utils.InferenceResponse(output_tensors=[], error=error)

    def execute(self, requests):
        responses = [None] * len(requests)
        good, arrays = [], []
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            array = tensor.as_numpy() if tensor is not None else None
            problem = request_problem(array, self.sample_shape)
            if problem is None:
                good.append(i)
                arrays.append(array)
            else:
                responses[i] = self._error(problem)
        if good:
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
            try:
                (embeddings,) = self.session.run([self.output_name], {self.input_name: batch})
            except Exception as err:  # answer every request of the batch with the reason, keep serving
                message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                for i in good:
                    responses[i] = self._error(f"ONNX Runtime failed: {message}")
            else:
                embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
                for i, part in zip(good, split_rows(embeddings, [len(a) for a in arrays])):
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(self.output_name, np.ascontiguousarray(part))])
        return responses

    def finalize(self):
        self.session = None
