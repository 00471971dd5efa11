"""The one record type every reader produces: an image path with what is known about it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional


class Modality(str, Enum):
    """Which stem of the two-stream encoder sees the image."""

    visible = "visible"
    infrared = "infrared"


@dataclass(frozen=True)
class Record:
    """One image. ``pid`` is the dataset's person id (None when unknown, e.g. a plain folder);
    ``camid`` is the dataset's camera number (SYSU-MM01: 1..6; RegDB: 1 visible, 2 thermal)."""

    path: str
    pid: Optional[int]
    camid: int
    modality: Modality
