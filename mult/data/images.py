"""Safe image loading with Pillow: every image the project reads goes through here.

A corrupt, truncated or unreadable file becomes a :class:`~mult.errors.MultError` that names the file,
never a Pillow traceback in the middle of training. A pixel-count guard stops decompression bombs (and
accidentally passing a full-resolution photo where a person crop is expected) before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Union

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

# What Pillow raises for files it cannot parse or decode (it is not consistent across formats).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, Image.DecompressionBombError)


def is_image_file(path: PathLike) -> bool:
    """True when the name ends in one of :data:`IMAGE_EXTENSIONS` (case-insensitive); the content is not read."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _describe(err: BaseException) -> str:
    """``"OSError: image file is truncated"``: the exception type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _guard_size(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise MultError(f"{name}: image has an empty size {width}x{height}; replace or delete the file")
    if width * height > max_pixels:
        raise MultError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}; "
            "crop or downscale it, or raise max_pixels if it is genuine"
        )


def _open_verified(source: Union[PathLike, BinaryIO], name: str, max_pixels: int, *, draft: bool) -> Image.Image:
    """Open, ``verify()`` the container, re-open and fully decode. Returns a loaded image (file closed)."""
    try:
        with warnings.catch_warnings():
            # Our own guard below replaces Pillow's bomb warning; its hard error is still caught.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as probe:
                _guard_size(probe, name, max_pixels)
                probe.verify()  # structural checks (PNG CRCs, ...); the object is unusable afterwards
            if hasattr(source, "seek"):
                source.seek(0)  # type: ignore[union-attr]
            with Image.open(source) as image:
                if draft and image.format == "JPEG":
                    # DCT-domain downscaling: still reads every entropy-coded byte (truncation is caught)
                    # but skips most of the decoding work; only used when the pixels are thrown away.
                    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
                return image
    except MultError:
        raise
    except FileNotFoundError:
        raise MultError(f"{name}: image file not found; check the path") from None
    except IsADirectoryError:
        raise MultError(f"{name}: is a folder, not an image file") from None
    except PermissionError:
        raise MultError(f"{name}: permission denied reading the image; fix the file permissions") from None
    except Image.UnidentifiedImageError:
        raise MultError(f"{name}: not a readable image (unknown or corrupt format); replace or delete the file") from None
    except _DECODE_ERRORS as err:
        raise MultError(f"{name}: corrupt or truncated image ({_describe(err)}); replace or delete the file") from None


def load_image(
    path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = False
) -> Image.Image:
    """Load an image file as a fully decoded RGB ``PIL.Image`` (grey infrared frames are replicated to 3 channels).

    Raises MultError naming the file when it is missing, not an image, corrupt/truncated, or larger than
    ``max_pixels``. ``exif_transpose`` applies the EXIF orientation (useful for phone photos; dataset crops
    have none, and training follows the community code, which ignores it).
    """
    name = os.fspath(path)
    image = _open_verified(name, name, max_pixels, draft=False)
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def load_image_bytes(
    data: bytes,
    name: str = "upload",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = True,
) -> Image.Image:
    """Load untrusted image bytes (an upload, a gRPC payload) as RGB, checking size and type first.

    Only :data:`ALLOWED_FORMATS` are accepted. ``name`` is used in error messages.
    """
    if len(data) > max_bytes:
        raise MultError(f"{name}: {len(data):,} bytes is above the upload limit of {max_bytes:,} bytes; send a smaller image")
    if not data:
        raise MultError(f"{name}: empty upload; send a JPEG, PNG, BMP or WebP image")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
    except Image.UnidentifiedImageError:
        raise MultError(f"{name}: not a readable image; send a JPEG, PNG, BMP or WebP image") from None
    except _DECODE_ERRORS as err:
        raise MultError(f"{name}: corrupt image ({_describe(err)}); send a valid image") from None
    if fmt not in ALLOWED_FORMATS:
        raise MultError(f"{name}: image format {fmt} is not accepted; send one of {', '.join(sorted(ALLOWED_FORMATS))}")
    image = _open_verified(io.BytesIO(data), name, max_pixels, draft=False)
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def image_problem(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Optional[str]:
    """Return ``None`` if the file opens, verifies and decodes, else the one-line reason (for the checker).

    Decodes JPEGs at reduced scale: that still reads every byte, so truncation and garbage are found,
    at a fraction of the cost of :func:`load_image`.
    """
    name = os.fspath(path)
    try:
        _open_verified(name, name, max_pixels, draft=True).close()
    except MultError as err:
        return str(err)
    return None


def list_image_files(folder: Path) -> list[str]:
    """Sorted names of the image files directly inside ``folder`` (sub-folders and other files are ignored)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if is_image_file(e.name) and e.is_file())
