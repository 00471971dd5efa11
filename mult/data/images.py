"""Safe image listing and decoding with Pillow: every image the project reads goes through here.

One decoder (:func:`decode_image`) serves training, evaluation, gallery indexing, ``mult search`` and the search
page, so a file gives the same pixels everywhere. It:

* opens without ever blocking: only regular files are read (a FIFO, socket or device named ``*.jpg`` is a
  :class:`~mult.errors.MultError`, not a hang);
* checks the pixel count from the header before decoding (decompression bombs, or a full-resolution photo where
  a person crop is expected), with its own message, and ``verify()``-s the container;
* turns a corrupt, truncated or unreadable file into a MultError that names the file, never a Pillow traceback;
* applies the EXIF orientation, as image viewers and browsers do: phone photos are often stored sideways with an
  orientation tag, and dataset crops carry none, so for them it changes nothing;
* scales high-bit-depth frames (16-bit ``I;16``, 32-bit ``I``, float ``F``, as radiometric infrared cameras write
  them) to 8 bits with a per-image min-max stretch (:func:`_stretch_to_8bit`); Pillow's own conversion clips
  them, which turns a typical 16-bit infrared frame all white.

Listing (:func:`scan_image_files`) keeps only regular files with valid UTF-8 paths and says what it left out.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from mult.io import PathLike
from mult.errors import MultError


#: File-name endings the readers treat as images (lower case, with the dot).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

#: Pillow format names accepted from untrusted bytes (uploads): the same set as the extensions.
ALLOWED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "BMP", "WEBP"})

#: Person crops are ~0.04 MP (SYSU 144x288 after resizing, originals well under 1 MP); 64 MP is
#: generous for any photo yet far below what would exhaust memory when decoded (64 MP RGB = 192 MB).
DEFAULT_MAX_PIXELS = 64_000_000

#: Upload size limit for :func:`load_image_bytes`.
DEFAULT_MAX_BYTES = 20 * 1024 * 1024

#: Pillow modes holding more than 8 bits per pixel (grey): stretched to 8 bits by :func:`_stretch_to_8bit`.
_HIGH_BIT_DEPTH = ("I", "F")

_FILE_HINT = "replace or delete the file"
_UPLOAD_HINT = "send a JPEG, PNG, BMP or WebP image"

# What Pillow raises for files it cannot parse or decode (it is not consistent across formats).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


def is_image_file(path: PathLike) -> bool:
    """True when the name ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive); the content is not read."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def printable_path(path: PathLike) -> str:
    """``path`` safe to print or store as UTF-8: bytes that are not valid UTF-8 (which Python keeps as lone
    surrogates) are shown as ``\\xff``."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _describe(err: BaseException) -> str:
    """``"OSError: image file is truncated"``: the exception type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _too_many_pixels(name: str, pixels: str, limit: int) -> MultError:
    return MultError(
        f"{name}: image is {pixels} pixels, above the limit of {limit:,} (too large to decode safely: a huge "
        "photo or a decompression bomb); crop or downscale it (no command-line option raises the limit; "
        "Python callers can pass max_pixels)"
    )


def _guard_size(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise MultError(f"{name}: image has an empty size {width}x{height}; replace or delete the file")
    if width * height > max_pixels:
        raise _too_many_pixels(name, f"{width}x{height} = {width * height:,}", max_pixels)


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _open_regular(path: str, name: str) -> BinaryIO:
    """Open ``path`` for reading, refusing anything but a regular file *without blocking*.

    ``O_NONBLOCK`` makes opening a FIFO return at once (a plain ``open`` waits for a writer forever); it has no
    effect on regular files, and anything that is not one is closed again before a byte is read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MultError(f"{name}: image file not found; check the path") from None
    except IsADirectoryError:
        raise MultError(f"{name}: is a folder, not an image file") from None
    except PermissionError:
        raise MultError(f"{name}: permission denied reading the image; fix the file permissions") from None
    except OSError as err:  # e.g. ENXIO: a socket
        raise MultError(f"{name}: cannot be opened as an image file ({_describe(err)}); {_FILE_HINT}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise MultError(f"{name}: is {_kind_of(mode)}, not a regular image file; {_FILE_HINT}")
    return os.fdopen(fd, "rb")


def _open_verified(source: BinaryIO, name: str, max_pixels: int, *, draft: bool,
                   formats: Optional[frozenset[str]] = None, hint: str = _FILE_HINT) -> Image.Image:
    """Open, ``verify()`` the container, re-open and fully decode. Returns a loaded image.

    ``formats``: the Pillow formats accepted (None: any Pillow reads). ``hint``: what the message tells to do.
    """
    try:
        with warnings.catch_warnings():
            # Our own guard below replaces Pillow's bomb warning; its hard error has its own message below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as probe:
                if formats is not None and probe.format not in formats:
                    raise MultError(f"{name}: image format {probe.format} is not accepted; "
                                    f"send one of {', '.join(sorted(formats))}")
                _guard_size(probe, name, max_pixels)
                probe.verify()  # structural checks (PNG CRCs, ...); the object is unusable afterwards
            source.seek(0)
            with Image.open(source) as image:
                if draft and image.format == "JPEG":
                    # DCT-domain downscaling: still reads every entropy-coded byte (truncation is caught)
                    # but skips most of the decoding work; only used when the pixels are thrown away.
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
                return image
    except MultError:
        raise
    except Image.DecompressionBombError as err:  # header above Pillow's own hard limit (2 x MAX_IMAGE_PIXELS)
        declared = re.search(r"\((\d+) pixels\)", str(err))
        pixels = f"{int(declared.group(1)):,}" if declared else "more than"
        raise _too_many_pixels(name, pixels, min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)) from None
    except Image.UnidentifiedImageError:
        raise MultError(f"{name}: not a readable image (unknown or corrupt format); {hint}") from None
    except _DECODE_ERRORS as err:
        if "decompressed data too large" in str(err).lower():  # a PNG text/ICC chunk that inflates without bound
            raise MultError(f"{name}: a compressed metadata chunk inflates past Pillow's safety limit (a "
                            f"decompression bomb); {hint}") from None
        raise MultError(f"{name}: corrupt or truncated image ({_describe(err)}); {hint}") from None


def _stretch_to_8bit(image: Image.Image) -> Image.Image:
    """A high-bit-depth grey image (``I;16*``, ``I``, ``F``) as 8-bit ``L``, min-max stretched per image.

    Radiometric infrared frames use a narrow band of their 16-bit range (e.g. 14-bit counts around a scene's
    temperatures), so dividing by the true bit depth would give a near-uniform dark frame; infrared viewers
    instead stretch each frame's own range to the display (automatic gain control), and so does this.
    Absolute levels are lost (two frames at different temperatures look alike), which is what a person-crop
    model sees in 8-bit datasets anyway. A flat frame becomes black; non-finite float values become black.
    """
    values = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.uint8)
    if finite.any():
        lo, hi = values[finite].min(), values[finite].max()
        if hi > lo:
            scaled = np.rint((values - lo) * (255.0 / (hi - lo)))
            out = np.where(finite, np.clip(scaled, 0, 255), 0).astype(np.uint8)
    return Image.fromarray(out, "L")


def _finish(image: Image.Image) -> Image.Image:
    """The one decoding policy: EXIF orientation applied, high bit depth stretched, then RGB."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except _DECODE_ERRORS:
        pass  # an unreadable EXIF block: the pixels are fine, keep them as stored
    if image.mode in _HIGH_BIT_DEPTH or image.mode.startswith("I;"):
        image = _stretch_to_8bit(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(source: Union[PathLike, bytes], name: Optional[str] = None, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, formats: Optional[frozenset[str]] = None) -> Image.Image:
    """A file path or raw bytes as a fully decoded RGB ``PIL.Image``: the decoder behind :func:`load_image`
    (training, indexing, ``mult search``) and :func:`load_image_bytes` (the search page's uploads).

    Grey infrared frames are replicated to 3 channels; see the module docstring for what else it does.
    ``name`` is used in error messages (default: the path, or ``"upload"``).
    """
    if isinstance(source, (bytes, bytearray)):
        image = _open_verified(io.BytesIO(source), name or "upload", max_pixels, draft=False, formats=formats,
                               hint=_UPLOAD_HINT)
    else:
        path = os.fspath(source)
        name = name or printable_path(path)
        with _open_regular(path, name) as handle:
            image = _open_verified(handle, name, max_pixels, draft=False, formats=formats)
    return _finish(image)


def load_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load an image file as a fully decoded RGB ``PIL.Image`` (:func:`decode_image`).

    Raises MultError naming the file when it is missing, not a regular file, not an image, corrupt/truncated,
    or larger than ``max_pixels``.
    """
    return decode_image(path, max_pixels=max_pixels)


#: The one resize between a decoded image and the model: what ``mult.data.transforms.eval_transform``'s
#: ``torchvision.transforms.Resize((h, w))`` does to a PIL image (default BILINEAR), so the torch, ONNX, Triton and
#: page paths all see identical pixels.
RESAMPLE = Image.Resampling.BILINEAR


def resize_uint8(image: Image.Image, height: int, width: int) -> np.ndarray:
    """An RGB ``PIL.Image`` as the model's input pixels: uint8 ``[height, width, 3]``, resized with :data:`RESAMPLE`."""
    return np.asarray(image.resize((int(width), int(height)), RESAMPLE))


def load_resized(paths: Sequence[PathLike], height: int, width: int) -> np.ndarray:
    """Decode image files and resize them as the evaluation transform does: uint8 ``[N, height, width, 3]`` RGB."""
    out = np.empty((len(paths), int(height), int(width), 3), dtype=np.uint8)
    for i, path in enumerate(paths):  # one decode per file is inherent; the array is filled in place
        out[i] = resize_uint8(load_image(path), height, width)
    return out


def load_image_bytes(
    data: bytes,
    name: str = "upload",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Load untrusted image bytes (an upload, a gRPC payload) as RGB, checking size and type first.

    Only :data:`ALLOWED_FORMATS` are accepted. ``name`` is used in error messages. Decoded exactly as
    :func:`load_image` decodes a file with the same bytes.
    """
    if len(data) > max_bytes:
        raise MultError(f"{name}: {len(data):,} bytes is above the upload limit of {max_bytes:,} bytes; send a smaller image")
    if not data:
        raise MultError(f"{name}: empty upload; {_UPLOAD_HINT}")
    return decode_image(bytes(data), name, max_pixels=max_pixels, formats=ALLOWED_FORMATS)


def image_problem(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Optional[str]:
    """Return ``None`` if the file opens, verifies and decodes, else the one-line reason (for the checker).

    Decodes JPEGs at reduced scale: that still reads every byte, so truncation and garbage are found,
    at a fraction of the cost of :func:`load_image`.
    """
    name = printable_path(path)
    try:
        with _open_regular(os.fspath(path), name) as handle:
            _open_verified(handle, name, max_pixels, draft=True).close()
    except MultError as err:
        return str(err)
    return None


def list_image_files(folder: Path) -> list[str]:
    """Sorted names of the image files directly inside ``folder`` (sub-folders and other files are ignored)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if is_image_file(e.name) and e.is_file())


@dataclass
class ImageScan:
    """What :func:`scan_image_files` found: image paths relative to the folder, sorted, and one line for each
    entry with an image name that was left out (which, and why)."""

    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def scan_image_files(folder: PathLike, *, recursive: bool = True) -> ImageScan:
    """The image files (by extension) under ``folder`` that can be read and indexed, without opening any.

    Kept: regular files, or links to one. Left out, each with a line in ``skipped``: FIFOs, sockets, devices,
    dangling links, sub-folders that cannot be read, and paths that are not valid UTF-8 (galleries store paths
    as UTF-8 text: metadata, reports, the page). Hidden files and folders (``.name``) and other file types are
    not looked at. Raises MultError when ``folder`` is not a readable folder or its own path is not UTF-8.
    """
    base = os.fspath(Path(folder).expanduser())
    shown = printable_path(base)
    if shown != base:
        raise MultError(f"{shown}: the folder's path is not valid UTF-8 (paths are stored as UTF-8 text); "
                        "rename it")
    scan = ImageScan()
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            with os.scandir(os.path.join(base, rel_dir) if rel_dir else base) as entries:
                listed = list(entries)
        except OSError as err:
            if not rel_dir:
                raise MultError(f"{shown}: cannot list the folder ({_describe(err)}); pass a readable folder "
                                "of image files") from None
            scan.skipped.append(f"{printable_path(rel_dir)}/: folder cannot be read ({_describe(err)})")
            continue
        for entry in listed:
            if entry.name.startswith("."):
                continue
            rel = os.path.join(rel_dir, entry.name) if rel_dir else entry.name
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    pending.append(rel)
                continue
            if not is_image_file(entry.name):
                continue
            why = None
            if printable_path(rel) != rel:
                why = "its name is not valid UTF-8; rename the file"
            else:
                try:
                    mode = entry.stat().st_mode  # follows links; never opens, so a FIFO cannot block
                    if not stat.S_ISREG(mode):
                        why = f"is {_kind_of(mode)}, not a regular file"
                except OSError as err:
                    why = f"cannot be read ({'dangling link' if entry.is_symlink() else _describe(err)})"
            if why is None:
                scan.files.append(rel)
            else:
                scan.skipped.append(f"{printable_path(rel)}: {why}")
    scan.files.sort()
    scan.skipped.sort()
    return scan
