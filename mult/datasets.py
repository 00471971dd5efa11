"""The one table of datasets: CLI choices, config validation, training-set loading and evaluation come from it.

Adding a dataset is one reader in ``mult.data``, one protocol in ``mult.evaluation`` and one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mult.data.records import Modality, Record
from mult.data.regdb import RegDB
from mult.data.sysu import SYSUMM01
from mult.encoder import Encoder
from mult.errors import MultError
from mult.evaluation import evaluate_regdb_dataset, evaluate_sysu_dataset
from mult.metrics.protocol import ProtocolSummary


@dataclass(frozen=True)
class Dataset:
    """One supported dataset: how to open its reader and run its published test protocol."""

    name: str
    title: str
    #: (root, regdb_split) -> a reader with ``train(modality)`` and ``test(...)`` records
    open: Callable[[Path, int], Any]
    #: (encoder, root, trials, split, rerank) -> {protocol name: summary}
    evaluate: Callable[[Encoder, Path, int, int, bool], dict[str, ProtocolSummary]]


DATASETS: dict[str, Dataset] = {
    "sysu": Dataset("sysu", "SYSU-MM01", lambda root, split: SYSUMM01(root),
                    lambda encoder, root, trials, split, rerank: evaluate_sysu_dataset(encoder, root, trials=trials,
                                                                                       rerank=rerank)),
    "regdb": Dataset("regdb", "RegDB", lambda root, split: RegDB(root, split=split),
                     lambda encoder, root, trials, split, rerank: evaluate_regdb_dataset(encoder, root, split=split,
                                                                                         rerank=rerank)),
}


def dataset(name: str) -> Dataset:
    """The table row of ``name``, or a one-line MultError listing the known ones."""
    try:
        return DATASETS[str(name)]
    except KeyError:
        raise MultError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}") from None


def evaluate_dataset(encoder: Encoder, name: str, root: Path, *, trials: int = 10, split: int = 1,
                     rerank: bool = False) -> dict[str, ProtocolSummary]:
    """The published test protocol of dataset ``name`` (METHOD.md §8) through ``encoder``; with ``rerank``
    each protocol also under ``<protocol>-rerank``, on the official MULT re-ranking (``mult.rerank``)."""
    return dataset(name).evaluate(encoder, Path(root), trials, split, rerank)


@dataclass(frozen=True)
class TrainingSet:
    """The training images of both modalities. ``*_pids`` are ground truth used ONLY for diagnostics
    (pseudo-label quality); training never reads them. -1 where unknown."""

    visible: tuple[Record, ...]
    infrared: tuple[Record, ...]

    @property
    def visible_paths(self) -> list[str]:
        return [r.path for r in self.visible]

    @property
    def infrared_paths(self) -> list[str]:
        return [r.path for r in self.infrared]

    @property
    def visible_pids(self) -> np.ndarray:
        return np.array([-1 if r.pid is None else r.pid for r in self.visible])

    @property
    def infrared_pids(self) -> np.ndarray:
        return np.array([-1 if r.pid is None else r.pid for r in self.infrared])


def load_training_set(name: str, root: Path, *, regdb_split: int = 1) -> TrainingSet:
    """Training records of dataset ``name`` (SYSU-MM01: train ∪ val ids; RegDB: one split), sorted by path."""
    reader = dataset(name).open(Path(root), regdb_split)
    return TrainingSet(tuple(reader.train(Modality.visible)), tuple(reader.train(Modality.infrared)))
