"""A gallery directory on disk: its three files, their checksums, and reading them back validated.

The layout (index.faiss, metadata.jsonl, manifest.json) is described in :mod:`mult.serving.gallery`.
Reading checks the checksums and that index, metadata and manifest agree on the count, so a truncated or
edited gallery is a one-line :class:`~mult.errors.MultError`, never a wrong answer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import faiss
import numpy as np

from mult.data.records import Modality, Record
from mult.errors import MultError
from mult.io import PathLike, file_sha256
from mult.serving.faiss_index import IndexSpec

FORMAT = "mult-gallery"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.jsonl"
MANIFEST_FILE = "manifest.json"
#: Manifest key holding the sha256 of the manifest's own content (every other key), checked at open.
MANIFEST_CHECKSUM_KEY = "manifest_sha256"


def utc_now() -> str:
    """The manifest's timestamps: UTC, whole seconds, ``...Z``."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def modality_counts(records: Iterable[Record]) -> dict[str, int]:
    """The manifest's ``modalities``: images per modality value, sorted by name."""
    values, counts = np.unique([Modality(r.modality).value for r in records], return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of a manifest's content without its own checksum key (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


# ================================================================================================ write
def _metadata_line(row: int, record: Record) -> str:
    return json.dumps({"id": row, "path": record.path, "pid": record.pid, "camid": int(record.camid),
                       "modality": Modality(record.modality).value, "time": record.time}, ensure_ascii=False)


def _write_index_file(index: faiss.Index, path: Path) -> None:
    """``faiss.write_index`` through a Python file. faiss's own file writer only prints a failed close, so a
    full disk could leave a truncated index that the manifest then checksums as good; Python raises OSError."""
    with open(path, "wb") as out:
        faiss.write_index(index, faiss.PyCallbackIOWriter(out.write))


def write_gallery_files(directory: Path, index: faiss.Index, records: Sequence[Record], manifest: dict[str, Any],
                        *, old_metadata: Optional[Path] = None, old_count: int = 0) -> dict[str, Any]:
    """Write index, metadata (copying ``old_metadata``'s rows, then appending) and manifest into ``directory``."""
    _write_index_file(index, directory / INDEX_FILE)
    with open(directory / METADATA_FILE, "w", encoding="utf-8") as out:
        if old_metadata is not None:
            with open(old_metadata, encoding="utf-8") as old:
                shutil.copyfileobj(old, out)
        out.writelines(_metadata_line(old_count + i, r) + "\n" for i, r in enumerate(records))
    manifest = dict(manifest)
    manifest["files"] = {name: {"sha256": file_sha256(directory / name), "bytes": (directory / name).stat().st_size}
                         for name in (INDEX_FILE, METADATA_FILE)}
    manifest[MANIFEST_CHECKSUM_KEY] = manifest_checksum(manifest)  # the file checksums above are covered too
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


# ================================================================================================ read
def read_metadata(path: Path) -> list[Record]:
    """The records of ``metadata.jsonl``; MultError naming the file and line of the first malformed row."""
    records: list[Record] = []
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise MultError(f"{path}: missing; the gallery is incomplete, rebuild it with `mult index build`") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            try:
                row = json.loads(line)
                if row["id"] != number - 1:
                    raise ValueError(f"id {row['id']} where {number - 1} was expected")
                pid, taken = row["pid"], row.get("time")  # galleries written before times were kept have none
                if not isinstance(row["path"], str) or not isinstance(row["camid"], int) or not (
                        pid is None or isinstance(pid, int)) or not (
                        taken is None or (isinstance(taken, (int, float)) and not isinstance(taken, bool))):
                    raise ValueError("a field has the wrong type")
                records.append(Record(row["path"], pid, row["camid"], Modality(row["modality"]),
                                      None if taken is None else float(taken)))
            except (ValueError, KeyError, TypeError) as err:
                raise MultError(f"{path} line {number}: malformed gallery metadata ({err}); "
                                "rebuild the gallery with `mult index build`") from None
    return records


def _read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the gallery folder ``directory``, checked to be a mult gallery of this format version."""
    if not directory.is_dir():
        leftovers = sorted(directory.parent.glob(f".{directory.name}.*.old")) if directory.parent.is_dir() else []
        hint = (f"; an interrupted update left the previous version at {leftovers[-1]}: rename it back"
                if leftovers else "; build one with `mult index build`")
        raise MultError(f"{directory}: no gallery folder{hint}")
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MultError(f"{manifest_path}: missing; {directory} is not a mult gallery (build one with "
                        "`mult index build`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MultError(f"{manifest_path}: unreadable ({type(err).__name__}); rebuild the gallery") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MultError(f"{manifest_path}: not a mult gallery manifest; rebuild the gallery with `mult index build`")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise MultError(f"{manifest_path}: gallery format version {manifest.get('format_version')!r} is not "
                        f"supported (this mult reads version {FORMAT_VERSION}); rebuild the gallery")
    return manifest


def _check_files(directory: Path, manifest: Mapping[str, Any], *, verify: bool) -> tuple[int, int]:
    """The manifest's ``(count, embedding_size)``, once its entries are complete and the files match them
    in size (and, with ``verify``, in sha256)."""
    try:
        files = {name: manifest["files"][name] for name in (INDEX_FILE, METADATA_FILE)}
        count, dim = int(manifest["count"]), int(manifest["embedding_size"])
        IndexSpec.from_manifest(manifest["index"])
    except (KeyError, TypeError, ValueError) as err:
        raise MultError(f"{directory / MANIFEST_FILE}: incomplete manifest ({type(err).__name__}: {err}); "
                        "rebuild the gallery") from None
    for name, entry in files.items():
        path = directory / name
        if not path.is_file():
            raise MultError(f"{path}: missing; the gallery is incomplete, rebuild it with `mult index build`")
        if path.stat().st_size != entry.get("bytes"):
            raise MultError(f"{path}: {path.stat().st_size} bytes where the manifest says {entry.get('bytes')}; "
                            "the file is truncated or was changed: rebuild the gallery")
        if verify and file_sha256(path) != entry.get("sha256"):
            raise MultError(f"{path}: checksum does not match the manifest; the file is corrupt or was edited: "
                            "rebuild the gallery")
    return count, dim


def read_gallery(directory: PathLike, *, verify: bool = True) -> tuple[Path, faiss.Index, list[Record], dict[str, Any]]:
    """``(directory, index, records, manifest)`` of a gallery folder, validated: checksums (``verify``), format,
    and index/metadata/manifest counts."""
    directory = Path(directory).expanduser()
    manifest = _read_manifest(directory)
    count, dim = _check_files(directory, manifest, verify=verify)
    try:
        index = faiss.read_index(str(directory / INDEX_FILE))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise MultError(f"{directory / INDEX_FILE}: faiss cannot read it ({first[:120]}); rebuild the gallery") from None
    records = read_metadata(directory / METADATA_FILE)
    if not (index.ntotal == len(records) == count) or index.d != dim:
        raise MultError(f"{directory}: index holds {index.ntotal} {index.d}-d vectors, metadata {len(records)} rows, "
                        f"manifest says {count} {dim}-d; the gallery is inconsistent: rebuild it")
    # Last, as the checks above name a problem more precisely; this one sees edits they cannot (e.g. the
    # model a gallery was embedded with). Galleries written before the key existed have none.
    stored = manifest.get(MANIFEST_CHECKSUM_KEY)
    if stored is not None and stored != manifest_checksum(manifest):
        raise MultError(f"{directory / MANIFEST_FILE}: its content does not match its own checksum "
                        f"({MANIFEST_CHECKSUM_KEY}); it was edited or is corrupt: rebuild the gallery with "
                        "`mult index build`")
    return directory, index, records, manifest
