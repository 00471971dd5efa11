"""The one record type every reader produces: an image path with what is known about it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional, Union

from mult.errors import MultError


class Modality(str, Enum):
    """Which stem of the two-stream encoder sees the image."""

    visible = "visible"
    infrared = "infrared"


#: Every name a user may give a modality: the enum values and the field's usual synonyms.
_MODALITY_NAMES: dict[str, Modality] = {
    "visible": Modality.visible,
    "rgb": Modality.visible,
    "infrared": Modality.infrared,
    "ir": Modality.infrared,
    "thermal": Modality.infrared,
}


def as_modality(modality: Union[Modality, str, None], *, optional: bool = False) -> Optional[Modality]:
    """The one parser of modality names: a :class:`Modality` or visible/rgb, infrared/ir/thermal (any case).

    ``None`` is allowed only with ``optional=True`` (a reader's "both modalities") and passes through; anything
    else unknown is a one-line MultError.
    """
    if isinstance(modality, Modality) or (modality is None and optional):
        return modality
    try:
        return _MODALITY_NAMES[str(modality).strip().lower()]
    except KeyError:
        raise MultError(f"unknown modality {modality!r}: use 'visible' or 'infrared' (or 'rgb', 'ir', 'thermal')") from None


@dataclass(frozen=True)
class Record:
    """One image. ``pid`` is the dataset's person id (None when unknown, e.g. a plain folder);
    ``camid`` is the dataset's camera number (SYSU-MM01: 1..6; RegDB: 1 visible, 2 thermal); ``time`` is when
    it was taken, in UNIX seconds, when known (a gallery fills it from the file's modification time or from
    ``mult index add --time``, and filters searches by it)."""

    path: str
    pid: Optional[int]
    camid: int
    modality: Modality
    time: Optional[float] = None
