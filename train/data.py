"""The paired batch loader of training (the training images themselves: :func:`mult.datasets.load_training_set`)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from mult.data.images import load_image
from mult.data.transforms import StageTransforms


class PairedImages(Dataset):
    """Item ``(vi, ri)`` -> (visible view 0, visible view 1, infrared, vi, ri), as the reference's paired loader.

    Both visible views come from the same decoded image through different augmentation pipelines.
    """

    def __init__(self, visible_paths: Sequence[str], infrared_paths: Sequence[str], transforms: StageTransforms):
        self.visible_paths = list(visible_paths)
        self.infrared_paths = list(infrared_paths)
        self.transforms = transforms

    def __len__(self) -> int:  # pairs are chosen by the batch sampler; this is only informative
        return max(len(self.visible_paths), len(self.infrared_paths))

    def __getitem__(self, pair: tuple[int, int]):
        vi, ri = pair
        image_v = load_image(self.visible_paths[vi])
        image_r = load_image(self.infrared_paths[ri])
        t = self.transforms
        return t.visible(image_v), t.visible_ca(image_v), t.infrared(image_r), vi, ri


def paired_loader(dataset: PairedImages, batches: list[list[tuple[int, int]]], *, workers: int,
                  seed: Optional[int] = None) -> DataLoader:
    """A loader over precomputed batches of pairs; augmentation randomness is seeded per worker from ``seed``."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, generator=generator,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())
