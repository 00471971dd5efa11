"""The embedding loop of a gallery: records through the encoder, in chunks, as checked unit rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from mult.data.records import Record
from mult.errors import MultError

#: Images handed to the encoder per call (the encoder batches further inside).
DEFAULT_CHUNK = 256


def unit_rows(embeddings: Any, paths: Sequence[str], dim: Optional[int]) -> np.ndarray:
    """The encoder's output as float32 [len(paths), D] unit rows; MultError naming an image it got wrong."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(paths):
        raise MultError(f"the encoder returned an array of shape {emb.shape} for {len(paths)} images; "
                        "expected [images, embedding size]")
    if dim is not None and emb.shape[1] != dim:
        raise MultError(f"the encoder gives {emb.shape[1]}-d embeddings but the gallery holds {dim}-d ones; "
                        "use the model the gallery was built with, or build a new gallery")
    norms = np.linalg.norm(emb, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms < 1e-6))
    if bad.size:
        raise MultError(f"{paths[int(bad[0])]}: the encoder returned a zero or non-finite embedding; "
                        "check the image and the model")
    return emb / norms[:, None]  # the contract says unit rows; re-normalising removes float drift


def embed_records(records: Sequence[Record], encoder: Any, *, chunk: int = DEFAULT_CHUNK, dim: Optional[int] = None,
                  progress: bool = True) -> np.ndarray:
    """Unit embeddings [N, D] of ``records``, each through the stem of its own modality, in chunks with a bar."""
    if chunk < 1:
        raise MultError(f"batch size {chunk!r} must be a positive integer")
    out: Optional[np.ndarray] = None
    with tqdm(total=len(records), desc="embed gallery", unit="img", disable=not progress) as bar:
        for start in range(0, len(records), chunk):
            block = records[start:start + chunk]
            # Consecutive runs of one modality go to the encoder together (galleries are usually one modality).
            cuts = [0] + [i for i in range(1, len(block)) if block[i].modality != block[i - 1].modality] + [len(block)]
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                paths = [r.path for r in block[lo:hi]]
                emb = unit_rows(encoder.encode(paths, block[lo].modality), paths, dim)
                if out is None:
                    dim = emb.shape[1]
                    out = np.empty((len(records), dim), dtype=np.float32)
                out[start + lo:start + hi] = emb
            bar.update(len(block))
    if out is None:
        raise MultError("no images to embed; the gallery needs at least one image")
    return out
