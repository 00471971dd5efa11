"""The FAISS gallery: embed a folder (or a dataset's test gallery) once, then search it by image.

A gallery is a directory::

    GALLERY_DIR/index.faiss      faiss.write_index of an IndexIDMap2 over Flat / IVF-Flat / HNSW-Flat (inner product)
    GALLERY_DIR/metadata.jsonl   one JSON object per vector id, in id order: id, path, pid (or null), camid, modality
    GALLERY_DIR/manifest.json    format version, model, embedding size, count, index kind + params (+ recall@10
                                 against exact search for approximate kinds), sha256 of both files, history,
                                 and the sha256 of its own content (manifest_sha256)

Embeddings are unit vectors, so inner product is cosine similarity and a score of 1 is the same image.
Vector ids are the metadata row numbers: ``add`` appends ids ``count..count+M-1`` and never renumbers, so
an id printed today still names the same image after any number of additions.

Nothing is half-written: ``build_gallery`` fills a temporary directory beside the target and renames it into
place; ``Gallery.add`` writes the new version into a temporary directory and swaps it in. ``Gallery.open``
checks the checksums and that index, metadata and manifest agree on the count, so a truncated or edited
gallery is a one-line :class:`~mult.errors.MultError`, never a wrong answer. Writers take turns through a lock
on the gallery directory (``update_lock``), so two ``mult index add`` runs on one gallery keep both additions.

Five-line use::

    from mult.serving.gallery import Gallery, build_gallery, records_for_gallery
    records = records_for_gallery(images_dir="crops/ir", modality="infrared")
    gallery = build_gallery(records, encoder, "galleries/ir")          # any object with encode(paths, modality)
    hits = gallery.search(encoder.encode(["me.jpg"], "visible"), k=10)[0]
    print(hits[0].path, hits[0].score)

The index itself (kinds, building, recall) is :mod:`mult.serving.faiss_index`; the work of the
``mult index`` and ``mult search`` commands is :mod:`mult.serving.gallery_commands`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

import faiss
import numpy as np
from tqdm import tqdm

from mult.io import PathLike, file_sha256
from mult.processes import owner_tag, remove_stale
from mult.data.folder import read_folder
from mult.data.records import Modality, Record, as_modality
from mult.errors import MultError
from mult.serving.faiss_index import IndexSpec, add_vectors, build_index, measure_recall, search_params


FORMAT = "mult-gallery"
FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
METADATA_FILE = "metadata.jsonl"
MANIFEST_FILE = "manifest.json"
#: Manifest ``model`` keys that identify the weights: when both sides have one, they must agree.
MODEL_IDENTITY_KEYS: tuple[str, ...] = (
    "name", "model_name", "version", "model_version", "weights_sha256", "arch", "flip", "height", "width",
    "source_sha256", "onnx_sha256_visible", "onnx_sha256_infrared",
)
#: The exported graphs themselves: when both sides know them, a version number is only a folder name.
GRAPH_KEYS: tuple[str, ...] = ("onnx_sha256_visible", "onnx_sha256_infrared")
#: Manifest key holding the sha256 of the manifest's own content (every other key), checked at open.
MANIFEST_CHECKSUM_KEY = "manifest_sha256"
#: Images handed to the encoder per call (the encoder batches further inside).
DEFAULT_CHUNK = 256
#: A gallery folder absent this long while a writer waits for its lock was moved or deleted (a swap takes
#: two renames, microseconds); how often the waiting writer checks.
VANISHED_AFTER_S = 2.0
LOCK_POLL_S = 0.1


# ================================================================================================ records
def records_for_gallery(
    images_dir: Optional[PathLike] = None,
    dataset: Optional[str] = None,
    data_root: Optional[PathLike] = None,
    modality: Union[Modality, str] = Modality.infrared,
    *,
    regdb_split: int = 1,
    skipped: Optional[list[str]] = None,
) -> list[Record]:
    """The images a gallery indexes: a plain folder, or a dataset's test images of one modality.

    * ``images_dir``: every image under the folder (recursively), ``pid`` from ``<pid>/`` sub-folders when
      they are integers (:func:`mult.data.folder.read_folder`); entries it cannot index (FIFOs, names that
      are not UTF-8, ...) are left out, one line each appended to ``skipped`` when given, else a warning.
    * ``dataset="sysu"`` + ``data_root``: all test-id images of ``modality`` in all its cameras (visible:
      cams 1, 2, 4, 5; infrared: cams 3, 6).
    * ``dataset="regdb"`` + ``data_root``: split ``regdb_split``'s test images of ``modality``.
    """
    wanted = as_modality(modality, optional=True)
    if wanted is None:
        raise MultError("the gallery needs a modality: 'visible' or 'infrared'")
    if (images_dir is None) == (dataset is None):
        raise MultError("give either a folder of images or a dataset (sysu/regdb) with its data root, not both")
    if images_dir is not None:
        return read_folder(images_dir, wanted, skipped=skipped)
    name = str(dataset).strip().lower()
    if data_root is None:
        raise MultError(f"dataset {name!r} needs its data root (the folder holding the dataset)")
    if name == "sysu":
        from mult.data.sysu import SYSUMM01

        data = SYSUMM01(data_root)
        # query() is every IR test image (cams 3, 6); gallery_pool("all") every visible one (cams 1, 2, 4, 5).
        return data.query("all") if wanted is Modality.infrared else data.gallery_pool("all")
    if name == "regdb":
        from mult.data.regdb import RegDB

        return RegDB(data_root, split=regdb_split).test(wanted)
    raise MultError(f"dataset {dataset!r} is unknown; use 'sysu' or 'regdb' (or a folder of images)")


# ================================================================================================ encoder
def encoder_info(encoder: Any) -> dict[str, Any]:
    """What the manifest records about the model that made the embeddings (provenance + identity).

    Uses ``encoder.model_info`` (a dict, or a method returning one) when present, then simple attributes
    (``model_name``, ``model_version``, ``name``, ``version``, ``embedding_size``, ``height``, ``width``,
    ``flip``, ``server``); an in-process :class:`mult.features.TorchEncoder` gives its architecture, flip and a
    sha256 of the weights through ``model_info``.
    """
    info: dict[str, Any] = {"encoder": type(encoder).__name__}
    provided = getattr(encoder, "model_info", None)
    if callable(provided):
        provided = provided()
    if isinstance(provided, Mapping):
        info.update({str(k): v for k, v in provided.items() if isinstance(v, (str, int, float, bool, type(None)))})
    for attr in ("model_name", "model_version", "name", "version", "embedding_size", "height", "width", "flip",
                 "server"):
        value = getattr(encoder, attr, None)
        if attr not in info and isinstance(value, (str, int, float, bool)) and not callable(value):
            info[attr] = value
    return info


def check_same_model(gallery_model: Mapping[str, Any], model: Mapping[str, Any], directory: PathLike) -> None:
    """MultError when an identity key (:data:`MODEL_IDENTITY_KEYS`) set in both descriptions differs.

    This is the one check between a gallery and the encoder about to search or extend it (``mult search``,
    ``mult index add``, ``mult app``); both encoders describe the model they embed with in ``model_info``
    (the local repository's version, or the version a Triton server serves, read from it, with the export's
    checkpoint and ONNX sha256). Values compare as text (a local export's version 3 is a Triton client's
    "3"); empty values (galleries built before a Triton client read the served version stored "") say nothing
    and are skipped. When both sides know both ONNX files' sha256, those decide and the version numbers are not
    compared (the same files copied to another version folder embed identically).
    """
    def known(info: Mapping[str, Any], key: str) -> bool:
        return info.get(key) not in (None, "")

    def differs(key: str) -> bool:
        return known(gallery_model, key) and known(model, key) and str(gallery_model[key]) != str(model[key])

    keys = MODEL_IDENTITY_KEYS
    if all(known(gallery_model, k) and known(model, k) for k in GRAPH_KEYS):
        keys = tuple(k for k in keys if k not in ("version", "model_version"))
    differing = [key for key in keys if differs(key)]
    if differing:
        if "version" not in differing and differs("version"):
            differing.insert(0, "version")  # not what decided, but what a user recognises first
        shown = ", ".join(f"{k}: gallery {str(gallery_model[k])[:16]!r} vs encoder {str(model[k])[:16]!r}"
                          for k in differing)
        raise MultError(f"{directory}: the gallery was embedded with a different model ({shown}); "
                        "use the same model, or build a new gallery with this one")


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


# ================================================================================================ files
def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")



def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of a manifest's content without its own checksum key (canonical JSON: sorted keys, no spaces)."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_CHECKSUM_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _metadata_line(row: int, record: Record) -> str:
    return json.dumps({"id": row, "path": record.path, "pid": record.pid, "camid": int(record.camid),
                       "modality": Modality(record.modality).value}, ensure_ascii=False)


def _absolute(records: Sequence[Record]) -> list[Record]:
    """Records with absolute paths, so the gallery works from any working directory."""
    return [r if os.path.isabs(r.path) else replace(r, path=os.path.abspath(r.path)) for r in records]


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
                pid = row["pid"]
                if not isinstance(row["path"], str) or not isinstance(row["camid"], int) or not (
                        pid is None or isinstance(pid, int)):
                    raise ValueError("a field has the wrong type")
                records.append(Record(row["path"], pid, row["camid"], Modality(row["modality"])))
            except (ValueError, KeyError, TypeError) as err:
                raise MultError(f"{path} line {number}: malformed gallery metadata ({err}); "
                                "rebuild the gallery with `mult index build`") from None
    return records


def _write_index_file(index: faiss.Index, path: Path) -> None:
    """``faiss.write_index`` through a Python file. faiss's own file writer only prints a failed close, so a
    full disk could leave a truncated index that the manifest then checksums as good; Python raises OSError."""
    with open(path, "wb") as out:
        faiss.write_index(index, faiss.PyCallbackIOWriter(out.write))


def _write_gallery_files(directory: Path, index: faiss.Index, records: Sequence[Record], manifest: dict[str, Any],
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


def _staging_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Staging folders of writers killed mid-write (kill -9 runs no cleanup) are removed by the next writer;
    # the owner tag in the name tells them from a live writer's.
    remove_stale(target.parent, f".{glob.escape(target.name)}.*.tmp")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{owner_tag()}", suffix=".tmp", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; galleries are meant to be shared (e.g. with the app)
    return staging


def _swap_in(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` directory to ``target``, replacing an existing gallery there.

    The old directory is renamed aside first and deleted last, so a crash leaves either the old or the new
    gallery in place (or, between the two renames, the old one under ``.<name>.*.old``, which ``open`` names).
    """
    if not target.exists():
        os.rename(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(aside)
    os.rename(target, aside)
    os.rename(staging, target)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def update_lock(target: Path) -> Iterator[None]:
    """Hold the exclusive update lock of the existing gallery directory ``target`` (``flock`` on the directory).

    Without it, two ``mult index add`` runs would each write a new version from the same old one, and the
    second swap would drop the first run's images. A writer that waited may find its directory replaced by
    the other's new version; it then locks the new one. The lock goes with the process, however it ends.

    A gallery folder moved or deleted meanwhile is a one-line MultError, for the writer that waits (once the
    folder has been gone for :data:`VANISHED_AFTER_S`) and for the one holding the lock (its writes then fail).
    """
    told = False
    gone_since: Optional[float] = None
    moved = (f"{target}: the gallery folder was moved or deleted while this command waited to update it; nothing "
             "was written: run it again on the gallery's new location")

    def vanished() -> bool:  # absent longer than another writer's swap (two renames) can explain
        nonlocal gone_since
        if _stat_or_none(target) is not None:
            gone_since = None
            return False
        gone_since = gone_since or time.monotonic()
        return time.monotonic() - gone_since > VANISHED_AFTER_S

    while True:
        try:
            fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            if vanished():
                raise MultError(moved) from None
            time.sleep(0.05)
            continue
        try:
            while True:  # polled rather than blocking, so a folder that vanishes meanwhile is noticed
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        print(f"{target}: another process is updating this gallery; waiting for it to finish",
                              file=sys.stderr, flush=True)
                        told = True
                    if vanished():
                        raise MultError(moved) from None
                    time.sleep(LOCK_POLL_S)
            held, now = os.fstat(fd), _stat_or_none(target)
            if now is not None and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                try:
                    yield
                except OSError as err:
                    now = _stat_or_none(target)
                    if now is None or (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                        raise MultError(f"{target}: the gallery folder was moved or deleted during this update "
                                        f"({type(err).__name__}); nothing was added: run the command again on the "
                                        "gallery's new location") from None
                    raise
                return
        finally:
            os.close(fd)


def _stat_or_none(path: Path) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _modality_counts(records: Iterable[Record]) -> dict[str, int]:
    values, counts = np.unique([Modality(r.modality).value for r in records], return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


# ================================================================================================ gallery
@dataclass(frozen=True)
class Hit:
    """One search result. ``rank`` starts at 1; ``score`` is the cosine similarity (1 = identical)."""

    rank: int
    id: int
    score: float
    path: str
    pid: Optional[int]
    camid: int
    modality: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def caption(self) -> str:
        """``#1 0.873 · id 12 · cam 3`` (``id ?`` when the identity is unknown) for rank lists and the app."""
        pid = "?" if self.pid is None else str(self.pid)
        return f"#{self.rank} {self.score:.3f} · id {pid} · cam {self.camid}"


class Gallery:
    """An opened gallery directory: the faiss index, one :class:`Record` per id, and the manifest."""

    def __init__(self, directory: Path, index: faiss.Index, records: list[Record], manifest: dict[str, Any]):
        self.directory = Path(directory)
        self.index = index
        self.records = records
        self.manifest = manifest
        self.spec = IndexSpec.from_manifest(manifest["index"])
        self._pids = np.array([-1 if r.pid is None else r.pid for r in records], dtype=np.int64)
        self._camids = np.array([r.camid for r in records], dtype=np.int64)
        self._gpu: Any = None

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Gallery({str(self.directory)!r}, count={len(self)}, kind={self.spec.kind!r})"

    @property
    def embedding_size(self) -> int:
        return int(self.manifest["embedding_size"])

    @property
    def modalities(self) -> dict[str, int]:
        return dict(self.manifest.get("modalities", {}))

    # ------------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, directory: PathLike, *, verify: bool = True) -> "Gallery":
        """Open and validate a gallery: checksums (``verify``), format, and index/metadata/manifest counts."""
        directory = Path(directory).expanduser()
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
        try:
            files = {name: manifest["files"][name] for name in (INDEX_FILE, METADATA_FILE)}
            count, dim = int(manifest["count"]), int(manifest["embedding_size"])
            IndexSpec.from_manifest(manifest["index"])
        except (KeyError, TypeError, ValueError) as err:
            raise MultError(f"{manifest_path}: incomplete manifest ({type(err).__name__}: {err}); "
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
            raise MultError(f"{manifest_path}: its content does not match its own checksum ({MANIFEST_CHECKSUM_KEY}); "
                            "it was edited or is corrupt: rebuild the gallery with `mult index build`")
        return cls(directory, index, records, manifest)

    # ------------------------------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        """The manifest plus what is derived from the metadata (directory, identities, images without id)."""
        out = {k: v for k, v in self.manifest.items()}
        out["directory"] = str(self.directory)
        known = self._pids[self._pids >= 0]
        out["identities"] = int(np.unique(known).size)
        out["images_without_id"] = int(np.count_nonzero(self._pids < 0))
        out["cameras"] = {str(int(c)): int(n) for c, n in zip(*np.unique(self._camids, return_counts=True))}
        return out

    # ------------------------------------------------------------------------------------------ search
    def _gpu_searcher(self) -> Any:
        """The inner flat/IVF index copied to the GPU(s) when faiss sees one; None on CPU builds or on failure."""
        if self._gpu is None:
            self._gpu = False
            if self.spec.kind in ("flat", "ivf") and hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:
                try:
                    inner = faiss.index_cpu_to_all_gpus(faiss.downcast_index(self.index.index))
                    self._gpu = (inner, faiss.vector_to_array(self.index.id_map).astype(np.int64))
                except Exception as err:  # optional speed-up only: fall back to the CPU index
                    warnings.warn(f"faiss GPU search unavailable ({err}); searching on the CPU")
        return self._gpu or None

    def search_ids(self, embeddings: np.ndarray, k: int = 10, *, nprobe: Optional[int] = None,
                   ef_search: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(scores [Q, k], ids [Q, k])`` for unit query embeddings [Q, D] (or one [D] vector); -1 = none."""
        queries = np.asarray(embeddings, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.embedding_size:
            raise MultError(f"query embeddings of shape {queries.shape} do not match the gallery's "
                            f"{self.embedding_size}-d embeddings; embed the query with the gallery's model")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise MultError(f"top-k {k!r} must be a positive integer")
        k = int(min(k, len(self)))
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), k), np.float32), np.full((len(queries), k), -1, np.int64)
        queries = np.ascontiguousarray(queries)
        params = search_params(self.spec, nprobe, ef_search)
        gpu = self._gpu_searcher()
        if gpu is not None:
            inner, id_map = gpu
            try:
                scores, rows = inner.search(queries, k, params=params)
                return scores, np.where(rows >= 0, id_map[np.maximum(rows, 0)], -1)
            except Exception:  # e.g. a faiss build whose GPU IVF ignores SearchParameters: use the CPU index
                self._gpu = False
        return self.index.search(queries, k, params=params)

    def search(self, embeddings: np.ndarray, k: int = 10, *, nprobe: Optional[int] = None,
               ef_search: Optional[int] = None) -> list[list[Hit]]:
        """Top-``k`` hits per query embedding (one list per row of ``embeddings``)."""
        scores, ids = self.search_ids(embeddings, k, nprobe=nprobe, ef_search=ef_search)
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores.tolist(), ids.tolist()):
            hits = []
            for rank, (score, idx) in enumerate(zip(row_scores, row_ids), start=1):
                if idx < 0:
                    break
                r = self.records[idx]
                hits.append(Hit(rank, int(idx), float(score), r.path, r.pid, int(r.camid), Modality(r.modality).value))
            results.append(hits)
        return results

    # ------------------------------------------------------------------------------------------ add
    def latest(self) -> "Gallery":
        """This gallery, or the newer version another process wrote to its directory after this one was opened.

        Compares manifests (they carry the count and the update time), which costs one small file read.
        """
        try:
            on_disk = json.loads((self.directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            on_disk = None  # open() below names the problem
        return self if on_disk == self.manifest else Gallery.open(self.directory, verify=False)

    def add(self, records: Sequence[Record], encoder: Any, *, batch_size: int = DEFAULT_CHUNK,
            model_info: Optional[Mapping[str, Any]] = None, progress: bool = True) -> dict[str, int]:
        """Embed and append ``records`` not already in the gallery (same path); old ids never change.

        Refuses (MultError) an encoder of another embedding size or model. Rewrites the gallery atomically
        (a new version in a temporary directory, swapped in) and re-measures recall for IVF/HNSW.
        Returns ``{"added": M, "skipped": S, "count": N + M}``.
        """
        model = dict(model_info) if model_info is not None else encoder_info(encoder)
        check_same_model(self.manifest.get("model", {}), model, self.directory)
        if model.get("embedding_size") not in (None, self.embedding_size):
            raise MultError(f"{self.directory}: the encoder gives {model['embedding_size']}-d embeddings but the "
                            f"gallery holds {self.embedding_size}-d ones; build a new gallery for this model")
        with update_lock(self.directory):
            latest = self.latest()  # another process may have added images since this one opened the gallery
            if latest is not self:
                self.__dict__.update(latest.__dict__)
            return self._append(records, encoder, batch_size=batch_size, progress=progress)

    def _append(self, records: Sequence[Record], encoder: Any, *, batch_size: int, progress: bool) -> dict[str, int]:
        """The work of ``add``, under the update lock."""
        seen = {r.path for r in self.records}
        fresh: list[Record] = []
        for record in _absolute(records):  # new paths only, each once (the first record wins)
            if record.path not in seen:
                seen.add(record.path)
                fresh.append(record)
        skipped = len(records) - len(fresh)
        if not fresh:
            return {"added": 0, "skipped": skipped, "count": len(self)}
        vectors = embed_records(fresh, encoder, chunk=batch_size, dim=self.embedding_size, progress=progress)
        old_count = len(self)
        staging = _staging_dir(self.directory)
        index = self.index  # appended in place (no second copy of a large index); restored from disk on failure
        try:
            add_vectors(index, vectors, old_count, progress=progress)
            manifest = dict(self.manifest)
            manifest["count"] = old_count + len(fresh)
            manifest["updated"] = _now()
            manifest["modalities"] = _merge_counts(self.modalities, _modality_counts(fresh))
            manifest["index"] = dict(manifest["index"])
            if self.spec.kind != "flat":
                manifest["index"].update(measure_recall(index, self.spec))
            manifest["history"] = list(manifest.get("history", [])) + [
                {"action": "add", "time": manifest["updated"], "added": len(fresh), "count": manifest["count"]}]
            manifest = _write_gallery_files(staging, index, fresh, manifest,
                                            old_metadata=self.directory / METADATA_FILE, old_count=old_count)
            _swap_in(staging, self.directory)
        except BaseException:
            if index.ntotal != old_count:  # forget the appended vectors: reload what is on disk
                try:
                    self.index = faiss.read_index(str(self.directory / INDEX_FILE))
                except RuntimeError:
                    pass  # the original error below says more than a failed reload would
            raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        self.records = self.records + fresh
        self.manifest = manifest
        self._pids = np.concatenate([self._pids, [-1 if r.pid is None else r.pid for r in fresh]]).astype(np.int64)
        self._camids = np.concatenate([self._camids, [r.camid for r in fresh]]).astype(np.int64)
        self._gpu = None
        return {"added": len(fresh), "skipped": skipped, "count": len(self)}


def _merge_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {key: int(a.get(key, 0)) + int(b.get(key, 0)) for key in sorted(set(a) | set(b))}


def build_gallery(
    records: Sequence[Record],
    encoder: Any,
    out: PathLike,
    *,
    kind: Union[str, IndexSpec] = "flat",
    batch_size: int = DEFAULT_CHUNK,
    model_info: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
    progress: bool = True,
    source: Optional[Mapping[str, Any]] = None,
) -> Gallery:
    """Embed ``records`` with ``encoder`` and write a gallery directory at ``out`` (atomically).

    ``kind`` is ``"flat"`` (exact), ``"ivf"`` or ``"hnsw"``, or an :class:`IndexSpec` with parameters;
    approximate kinds get their recall@10 against exact search measured and stored in the manifest.
    ``model_info`` overrides :func:`encoder_info`; ``source`` (e.g. the folder or dataset) is recorded as is.
    An existing ``out`` is an error unless ``overwrite``; a failure at any point leaves no ``out`` behind
    (and an overwritten gallery untouched).
    """
    spec = kind if isinstance(kind, IndexSpec) else IndexSpec(str(kind))
    target = Path(out).expanduser()
    if target.exists() and not overwrite:
        raise MultError(f"{target}: already exists; add images with `mult index add`, or pass --overwrite to replace it")
    if target.exists() and not target.is_dir():
        raise MultError(f"{target}: exists and is not a folder; choose another gallery path")
    records = _absolute(records)
    if not records:
        raise MultError("no images to index; the gallery needs at least one image")
    model = dict(model_info) if model_info is not None else encoder_info(encoder)
    started = time.perf_counter()
    vectors = embed_records(records, encoder, chunk=batch_size, progress=progress)
    embed_s = time.perf_counter() - started
    spec = spec.resolved(len(vectors))
    started = time.perf_counter()
    index = build_index(vectors, spec, progress=progress)
    index_s = time.perf_counter() - started
    model.setdefault("embedding_size", int(vectors.shape[1]))
    created = _now()
    index_entry: dict[str, Any] = {"kind": spec.kind, "metric": "inner_product", "params": spec.params(),
                                   "wrapper": "IndexIDMap2", "faiss_version": faiss.__version__,
                                   "build_seconds": round(index_s, 3), "embed_seconds": round(embed_s, 3)}
    if spec.kind != "flat":
        index_entry.update(measure_recall(index, spec))
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created": created, "updated": created,
        "model": model, "embedding_size": int(vectors.shape[1]), "count": len(records),
        "modalities": _modality_counts(records), "index": index_entry, "source": dict(source or {}),
        "history": [{"action": "build", "time": created, "added": len(records), "count": len(records)}],
    }
    with update_lock(target) if target.is_dir() else contextlib.nullcontext():
        staging = _staging_dir(target)
        try:
            manifest = _write_gallery_files(staging, index, records, manifest)
            _swap_in(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return Gallery(target, index, list(records), manifest)
