"""The Triton gRPC encoder: embeddings from a running ``mult serve`` (or the official Triton container).

Input size and embedding size are read from the server (model metadata), never hard-coded; the client only
resizes (:func:`mult.serving.encoders.load_resized`), the graph does the rest.

Five-line use::

    from mult.serving.triton_client import TritonEncoder
    with TritonEncoder("127.0.0.1:8001") as enc:
        feats = enc.encode(["ir/0001.jpg", "ir/0002.jpg"], "infrared")   # float32 [2, D], unit rows
        print(enc.height, enc.width, enc.embedding_size)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from mult.data.records import Modality
from mult.errors import MultError, ServerUnavailable
from mult.export.layout import INPUT_NAME, OUTPUT_NAME
from mult.serving.encoders import IDENTITY_FIELDS, ArrayEncoder, export_identity, identity_parameter

#: gRPC statuses worth another try: the server is (re)starting or overloaded. Anything else is final.
RETRY_STATUSES = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
#: First pause between tries; doubled after each (0.1, 0.2, 0.4 s).
BACKOFF_S = 0.1


def _message(err: Exception) -> str:
    text = (err.message() if hasattr(err, "message") else None) or str(err)
    text = text.strip()
    return text.splitlines()[0] if text else type(err).__name__


class TritonEncoder(ArrayEncoder):
    """Encoder interface (``encode`` / ``encode_array``) over Triton gRPC for ``{prefix}_visible`` / ``_infrared``.

    ``version=""`` takes the newest version the server serves, read from it at connection and pinned from then on
    (both stems must serve the same one); ``model_info`` is that version and, from a `mult serve` server, the
    checkpoint and ONNX sha256 behind it. ``timeout_s`` bounds each call; calls that fail
    with UNAVAILABLE or DEADLINE_EXCEEDED are retried ``retries`` times with a short backoff. One instance can be
    shared by threads (tritonclient's unary calls are thread-safe); each thread's request is batched by Triton.
    """

    def __init__(self, url: str, *, model_prefix: str = "mult", version: str = "", timeout_s: float = 30.0,
                 retries: int = 3, batch_size: int = 32) -> None:
        import tritonclient.grpc as grpcclient

        if int(batch_size) < 1:
            raise MultError(f"batch_size must be >= 1, got {batch_size}")
        if int(retries) < 0 or float(timeout_s) <= 0:
            raise MultError(f"retries must be >= 0 and timeout_s > 0, got {retries} and {timeout_s}")
        self.url = url.removeprefix("grpc://")
        self.version = str(version)
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.model_names = {m: f"{model_prefix}_{m.value}" for m in Modality}
        try:
            self._client = grpcclient.InferenceServerClient(self.url)
        except Exception as err:  # a malformed URL fails here
            raise MultError(f"{url!r} is not a usable gRPC address ({_message(err)}); use HOST:PORT, e.g. "
                            "127.0.0.1:8001") from None
        try:
            self._connect()
            sizes = {m: self._model_sizes(name) for m, name in self.model_names.items()}
            vis, ir = sizes[Modality.visible], sizes[Modality.infrared]
            if vis[:3] != ir[:3]:
                raise MultError(f"{self.url}: {self.model_names[Modality.visible]} takes {vis[0]}x{vis[1]} -> "
                                f"{vis[2]} but {self.model_names[Modality.infrared]} takes {ir[0]}x{ir[1]} -> {ir[2]}; "
                                "serve one export")
            # Pin the version the server serves now: every call below then uses it, and a gallery compares it.
            self.version = str(self._served_version({m: s[4] for m, s in sizes.items()}))
            #: What a gallery records about the served model, read from the server (see :meth:`_identity`).
            self.model_info = self._identity(int(self.version), {m: s[5] for m, s in sizes.items()})
        except BaseException:
            self._client.close()
            raise
        self.height, self.width, self.embedding_size = vis[:3]
        max_batch = min(s[3] for s in sizes.values())
        self.batch_size = min(int(batch_size), max_batch) if max_batch > 0 else int(batch_size)

    # -- calls with retries --
    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        from tritonclient.utils import InferenceServerException

        for attempt in range(self.retries + 1):
            try:
                return fn()
            except InferenceServerException as err:
                # A stopping Triton unloads its models first, so calls fail with "unknown model ... no available
                # versions" / "not at ready state": say the server is going away, not that the model is wrong.
                failed = MultError(f"{self.url}: {what} failed: {_message(err)}")
                if err.status() not in RETRY_STATUSES:
                    raise (self._server_leaving(what) or failed) from None
                if attempt == self.retries:
                    if err.status() == "StatusCode.DEADLINE_EXCEEDED":
                        raise MultError(f"{self.url}: {what} timed out after {self.timeout_s:g} s ({attempt + 1} "
                                        "tries); raise the timeout or check the server load") from None
                    if self._served_before():
                        raise (self._server_leaving(what) or failed) from None
                    raise ServerUnavailable(f"no Triton server at {self.url} ({_message(err)}); start one "
                                            "with `mult serve --repo model_repository`") from None
                time.sleep(BACKOFF_S * 2 ** attempt)
        raise AssertionError("unreachable")

    def _served_before(self) -> bool:
        return getattr(self, "embedding_size", None) is not None  # set once __init__ found both models ready

    def _server_leaving(self, what: str) -> Optional[ServerUnavailable]:
        """After the server served this client: the error to give when it is shutting down or gone (asked once,
        briefly), else None."""
        from tritonclient.utils import InferenceServerException

        if not self._served_before():
            return None
        try:
            ready = self._client.is_server_live(client_timeout=2.0) and self._client.is_server_ready(client_timeout=2.0)
            state = None if ready else "is shutting down"
        except InferenceServerException:
            state = "went away"
        if state is None:
            return None
        return ServerUnavailable(f"{self.url}: the Triton server {state} during {what}; start it again "
                                 "(`mult serve`) and rerun the command")

    def _connect(self) -> None:
        if not self._call("liveness check", lambda: self._client.is_server_live(client_timeout=self.timeout_s)):
            raise ServerUnavailable(f"the Triton server at {self.url} is not live yet; wait for `mult serve` to "
                                    "finish starting")

    def _served_version(self, ready: dict[Modality, list[int]]) -> int:
        """The version both stems answer with: the pinned one, else the newest each serves (Triton's choice for
        version ""). Stems at different newest versions are a half-published export: refused, since their
        embeddings would come from two models."""
        if self.version:
            return int(self.version)
        newest = {m: max(versions) for m, versions in ready.items() if versions}
        if len(newest) != len(ready):
            missing = [self.model_names[m] for m in ready if m not in newest]
            raise MultError(f"{self.url}: {', '.join(missing)} lists no ready version; serve a repository written "
                            "by `mult export`")
        vis, ir = newest[Modality.visible], newest[Modality.infrared]
        if vis != ir:
            raise MultError(f"{self.url}: {self.model_names[Modality.visible]} serves version {vis} but "
                            f"{self.model_names[Modality.infrared]} serves version {ir} (a half-published export); "
                            "serve a repository where both stems have the newest version, e.g. `mult serve`")
        return vis

    def _identity(self, version: int, parameters: dict[Modality, dict[str, Any]]) -> dict[str, Any]:
        """Version plus the checkpoint / ONNX sha256 that `mult serve` publishes per version in each model's
        config; another server (e.g. the official container) publishes none, and then the version alone says."""
        manifests = {}
        for modality, params in parameters.items():
            manifests[modality] = {}
            for field in IDENTITY_FIELDS:
                value = params.get(identity_parameter(version, field), {})
                if isinstance(value, dict) and value.get("string_value"):
                    manifests[modality][field] = value["string_value"]
        return export_identity(version, manifests, self.url)

    def _model_sizes(self, name: str) -> tuple[int, int, int, int, list[int], dict[str, Any]]:
        """(H, W, D, max_batch_size, ready versions, config parameters) of a ready model, from its metadata and
        config."""
        ready = self._call(f"readiness of {name}", lambda: self._client.is_model_ready(
            name, self.version, client_timeout=self.timeout_s))
        if not ready:
            index = self._call("model list", lambda: self._client.get_model_repository_index(
                as_json=True, client_timeout=self.timeout_s))
            served = sorted({m.get("name", "?") + (f"/{m['version']}" if m.get("version") else "") + f" "
                             f"({m.get('state', 'UNKNOWN')})" for m in index.get("models", [])})
            version = f" version {self.version}" if self.version else ""
            raise MultError(f"{self.url}: model {name}{version} is not ready (server has: "
                            f"{', '.join(served) or 'no models'}); serve a repository written by `mult export`")
        meta = self._call(f"metadata of {name}", lambda: self._client.get_model_metadata(
            name, self.version, as_json=True, client_timeout=self.timeout_s))
        config = self._call(f"config of {name}", lambda: self._client.get_model_config(
            name, self.version, as_json=True, client_timeout=self.timeout_s))["config"]
        inputs = {t["name"]: t for t in meta.get("inputs", [])}
        outputs = {t["name"]: t for t in meta.get("outputs", [])}
        if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
            raise MultError(f"{self.url}: {name} has inputs {list(inputs)} and outputs {list(outputs)}, expected "
                            f"'{INPUT_NAME}' -> '{OUTPUT_NAME}'; serve a repository written by `mult export`")
        shape = [int(d) for d in inputs[INPUT_NAME]["shape"]]
        out_shape = [int(d) for d in outputs[OUTPUT_NAME]["shape"]]
        if inputs[INPUT_NAME]["datatype"] != "UINT8" or len(shape) != 4 or shape[-1] != 3 or min(shape[1:]) < 1 \
                or len(out_shape) != 2 or out_shape[-1] < 1:
            raise MultError(f"{self.url}: {name} takes {inputs[INPUT_NAME]['datatype']} {shape} -> {out_shape}, "
                            "expected UINT8 [-1, H, W, 3] -> [-1, D]; serve a repository written by `mult export`")
        versions = sorted(int(v) for v in meta.get("versions", []) if str(v).isdigit())
        return (shape[1], shape[2], out_shape[1], int(config.get("max_batch_size", 0)), versions,
                dict(config.get("parameters", {})))

    # -- encoding --
    def _embed_batch(self, modality: Modality, images: np.ndarray) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        if self._client is None:
            raise MultError("this TritonEncoder is closed; open a new one")
        name = self.model_names[modality]
        inp = grpcclient.InferInput(INPUT_NAME, list(images.shape), "UINT8")
        inp.set_data_from_numpy(images)
        out = grpcclient.InferRequestedOutput(OUTPUT_NAME)
        result = self._call(f"inference on {name}", lambda: self._client.infer(
            name, [inp], model_version=self.version, outputs=[out], client_timeout=self.timeout_s))
        embeddings = result.as_numpy(OUTPUT_NAME)
        if embeddings is None or embeddings.shape != (len(images), self.embedding_size):
            got = None if embeddings is None else list(embeddings.shape)
            raise MultError(f"{self.url}: {name} answered {got} for {len(images)} images, expected "
                            f"[{len(images)}, {self.embedding_size}]; check the server (numpy<2 in its environment)")
        return embeddings.astype(np.float32, copy=False)

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            client.close()

    def __repr__(self) -> str:
        return f"TritonEncoder({self.url!r}, {self.height}x{self.width} -> {self.embedding_size})"
