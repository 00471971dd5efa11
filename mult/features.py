"""The in-process torch implementation of the encoder interface (:class:`mult.encoder.Encoder`).

``TorchEncoder`` runs the training model in-process; the ONNX Runtime and Triton encoders of ``mult.serving``
have the same method, so the same evaluation code can prove a deployment reproduces the training-time numbers.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mult.data.images import load_image
from mult.data.records import Modality
from mult.data.transforms import eval_transform
from mult.encoder import Encoder  # noqa: F401  (the interface TorchEncoder implements)


class ImageFiles(Dataset):
    """Image files decoded with Pillow (errors name the file) and passed through ``transform``."""

    def __init__(self, paths: Sequence[str], transform: Callable):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.load(self.paths[index])

    def load(self, path: str) -> torch.Tensor:
        return self.transform(load_image(path))


class TorchEncoder:
    """Embeds images with a :class:`mult.model.TwoStreamEncoder` in eval mode (no augmentation).

    ``flip=True`` averages each image with its mirror image, as the test protocol does (METHOD.md §8.1);
    clustering during training uses ``flip=False`` like the reference.
    """

    def __init__(self, model: torch.nn.Module, height: int, width: int, *, device: Union[str, torch.device] = "cpu",
                 batch_size: int = 64, flip: bool = True, workers: int = 0, progress: bool = True):
        self.model = model
        self.transform = eval_transform(height, width)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.flip = flip
        self.workers = workers
        self.progress = progress

    def model_info(self) -> dict[str, Any]:
        """What a gallery records about this model: architecture, flip and a sha256 over the weights
        (names and raw bytes of the state dict), which tells two sets of weights apart."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return {"arch": getattr(self.model, "arch", None), "flip": bool(self.flip), "weights_sha256": digest.hexdigest()}

    def encode(self, paths: Sequence[str], modality: Union[Modality, str]) -> np.ndarray:
        """float32 [N, D] numpy embeddings (the :class:`mult.encoder.Encoder` interface)."""
        return self.encode_tensor(paths, modality).cpu().numpy()

    @torch.no_grad()
    def encode_tensor(self, paths: Sequence[str], modality: Union[Modality, str]) -> torch.Tensor:
        """float32 [N, D] embeddings as a tensor on the encoder's device: training labels them there (CUDA)
        without a trip through the host."""
        modality = Modality(modality)
        loader = DataLoader(ImageFiles(paths, self.transform), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.workers)
        was_training = self.model.training
        self.model.eval()
        chunks = []
        try:
            for batch in tqdm(loader, desc=f"embed {modality.value}", unit="batch", leave=False,
                              disable=not self.progress):
                chunks.append(self.model.embed(batch.to(self.device), modality, flip=self.flip).float())
        finally:
            self.model.train(was_training)
        if not chunks:
            return torch.zeros((0, self.model.feature_dim), dtype=torch.float32, device=self.device)
        return torch.cat(chunks)
