"""Metadata filters of a gallery search: which images a query may be matched against.

Person-search deployments narrow the gallery before ranking it: "only infrared cameras 3 and 6, between 20:00
and 06:00, only people we have not identified yet". A :class:`GalleryFilter` says that; the gallery turns it
into a boolean mask over its ids and hands faiss an ID selector (:func:`id_selector`), so the filtering happens
inside the index search — the top-k are the best k of the selected images, not what survives of a longer list.

Times are UNIX seconds (what a file's modification time is). Images without a known time never match a filter
with ``since`` or ``until``: they cannot be shown to lie in the range.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional, Union

import faiss
import numpy as np

from mult.data.records import Modality, as_modality
from mult.errors import MultError

#: What a filter may ask of an image's person id: known (the gallery has one) or unknown (None).
IDENTITIES: tuple[str, ...] = ("known", "unknown")


def parse_time(value: Union[str, float, int, dt.datetime, None], *, name: str = "time") -> Optional[float]:
    """UNIX seconds from a number, an ISO 8601 text (``2026-12-03T20:00``, ``2026-12-03 20:00:00Z``,
    ``...+01:00``) or a datetime; None stays None. A time without a zone is this machine's local time, as a
    file's modification time shown by ``ls`` is. Anything else is a one-line MultError naming ``name``."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                seconds = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")).timestamp()
            except ValueError:
                raise MultError(f"{name} {value!r} is not a time: give ISO 8601 (2026-12-03T20:00, add Z or "
                                "+01:00 for a zone) or UNIX seconds") from None
    if not math.isfinite(seconds):
        raise MultError(f"{name} {value!r} is not a finite time")
    return seconds


def format_time(seconds: Optional[float]) -> str:
    """``2026-12-03 20:00:00 UTC`` (or ``unknown``): how reports and the page show a time."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class GalleryFilter:
    """Which gallery images a search may return; every field left empty lets all through.

    * ``cameras``: camera ids (an image of any of them passes);
    * ``modality``: only images of this modality (the cross-modality search sets the query's other one);
    * ``identity``: ``"known"`` (images with a person id) or ``"unknown"`` (without);
    * ``since`` / ``until``: an inclusive range of capture times (UNIX seconds, :func:`parse_time` reads text).
    """

    cameras: tuple[int, ...] = ()
    modality: Optional[Modality] = None
    identity: Optional[str] = None
    since: Optional[float] = None
    until: Optional[float] = None

    def __post_init__(self) -> None:
        cameras = tuple(self.cameras or ())
        for camera in cameras:
            if isinstance(camera, bool) or not isinstance(camera, (int, np.integer)):
                raise MultError(f"camera {camera!r} must be an integer camera id")
        object.__setattr__(self, "cameras", tuple(sorted({int(c) for c in cameras})))
        object.__setattr__(self, "modality", as_modality(self.modality, optional=True))
        if self.identity is not None and self.identity not in IDENTITIES:
            raise MultError(f"identity {self.identity!r} is unknown; use one of {', '.join(IDENTITIES)} (or leave it out)")
        object.__setattr__(self, "since", parse_time(self.since, name="since"))
        object.__setattr__(self, "until", parse_time(self.until, name="until"))
        if self.since is not None and self.until is not None and self.since > self.until:
            raise MultError(f"since ({format_time(self.since)}) is after until ({format_time(self.until)}); "
                            "swap them")

    @property
    def active(self) -> bool:
        """Whether this filter leaves out anything at all."""
        return bool(self.cameras) or any(v is not None for v in (self.modality, self.identity, self.since, self.until))

    def with_modality(self, modality: Optional[Modality]) -> "GalleryFilter":
        return GalleryFilter(self.cameras, modality, self.identity, self.since, self.until)

    def mask(self, camids: np.ndarray, pids: np.ndarray, modalities: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Boolean [N]: which of N images pass, from the gallery's columns (pid -1 = unknown, time NaN = unknown,
        modality values as text)."""
        keep = np.ones(len(camids), dtype=bool)
        if self.cameras:
            keep &= np.isin(camids, self.cameras)
        if self.modality is not None:
            keep &= modalities == self.modality.value
        if self.identity is not None:
            keep &= (pids >= 0) if self.identity == "known" else (pids < 0)
        with np.errstate(invalid="ignore"):  # NaN (unknown time) compares False: it never passes a range
            if self.since is not None:
                keep &= times >= self.since
            if self.until is not None:
                keep &= times <= self.until
        return keep

    def describe(self) -> str:
        """``cameras 3, 6 · identity unknown · 2026-12-03 20:00:00 UTC → …`` (empty when inactive)."""
        parts = []
        if self.cameras:
            parts.append("camera" + ("s " if len(self.cameras) > 1 else " ") + ", ".join(map(str, self.cameras)))
        if self.modality is not None:
            parts.append(f"{self.modality.value} only")
        if self.identity is not None:
            parts.append(f"identity {self.identity}")
        if self.since is not None or self.until is not None:
            since = format_time(self.since) if self.since is not None else "…"
            until = format_time(self.until) if self.until is not None else "…"
            parts.append(f"{since} → {until}")
        return " · ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"cameras": list(self.cameras), "modality": self.modality.value if self.modality else None,
                "identity": self.identity, "since": self.since, "until": self.until}


def filter_from_options(cameras: Iterable[int] = (), modality: Union[Modality, str, None] = None,
                   identity: Optional[str] = None, since: Any = None, until: Any = None) -> GalleryFilter:
    """A :class:`GalleryFilter` from loose values (what a command line or a page hands over): empty texts and
    an ``identity`` of ``"any"`` mean no condition."""
    identity = None if identity in (None, "", "any") else str(identity).strip().lower()
    return GalleryFilter(tuple(cameras or ()), as_modality(modality or None, optional=True), identity, since, until)


class MaskSelector:
    """A faiss ``IDSelectorBitmap`` over a boolean mask of ids 0..N-1, holding the bitmap it points into (faiss
    keeps only a raw pointer, so the bits must live as long as the selector)."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = np.asarray(mask, dtype=bool)
        self.count = int(self.mask.sum())
        self._bits = np.packbits(self.mask, bitorder="little")  # faiss reads bit (i & 7) of byte i >> 3
        self.selector = faiss.IDSelectorBitmap(len(self.mask), faiss.swig_ptr(self._bits))

    @property
    def fraction(self) -> float:
        return self.count / max(len(self.mask), 1)


def id_selector(mask: np.ndarray) -> Optional[MaskSelector]:
    """The selector for ``mask``, or None when it keeps every id (no selector: faiss's unfiltered fast path)."""
    mask = np.asarray(mask, dtype=bool)
    return None if mask.all() else MaskSelector(mask)
