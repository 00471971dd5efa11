"""The encoder interface every floor may use, torch-free.

Everything that needs embeddings (clustering during training, evaluation, gallery indexing, the page) takes an
object with ``encode(paths, modality) -> float32 [N, D]`` unit-norm rows: the in-process torch model
(:class:`mult.features.TorchEncoder`), the ONNX Runtime and Triton encoders of ``mult.serving``. An encoder may
also describe the model it embeds with in ``model_info()`` (a dict); galleries store that description and
compare it before a search (:func:`mult.serving.gallery.check_same_model`).
"""

from __future__ import annotations

from typing import Protocol, Sequence, Union

import numpy as np

from mult.data.records import Modality


class Encoder(Protocol):
    def encode(self, paths: Sequence[str], modality: Union[Modality, str]) -> np.ndarray:
        """Unit-norm float32 embeddings [len(paths), D] of the image files, through ``modality``'s stem."""
        ...
