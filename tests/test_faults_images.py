"""Image listing and decoding faults from the adversarial probe (issue 16): high-bit-depth infrared frames, FIFOs
and undecodable names under ``--images``, EXIF orientation, decompression bombs. Everything runs through the real
``mult`` command line (and the search page's own search) over a tiny exported model."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_crops
from mult.cli import main
from mult.data.images import load_image, load_image_bytes
from mult.errors import MultError

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def person_picture(height: int = 64, width: int = 32) -> np.ndarray:
    """A smooth 8-bit grey "person" (a warm body on a cooler gradient) spanning exactly 0..255."""
    y, x = np.mgrid[0:height, 0:width]
    body = np.exp(-(((x - width / 2) / (width / 5)) ** 2 + ((y - height / 2) / (height / 3)) ** 2))
    picture = 0.3 * y / (height - 1) + body
    picture = (picture - picture.min()) / (picture.max() - picture.min())
    return np.rint(picture * 255).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 20000) -> bytes:
    """A valid ~50 kB 1-bit PNG declaring side x side pixels (400 M at 20000: beyond Pillow's own hard limit)."""
    squeeze = zlib.compressobj(9)
    row = bytes(1 + side // 8)
    data = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def gallery(tiny_export, tmp_path_factory) -> Path:
    """An infrared gallery of noise crops plus ``person.png`` (8-bit), built with `mult index build --local`."""
    base = tmp_path_factory.mktemp("faults_images")
    crops = base / "crops"
    write_crops(crops, (1, 2), per_pid=3, seed=0)
    Image.fromarray(person_picture(), "L").save(crops / "person.png")
    out = base / "gallery"
    with pytest.raises(SystemExit) as exc:
        main(["index", "build", "--images", str(crops), "--local", str(tiny_export.repo), "--out", str(out), "--json"])
    assert (exc.value.code or 0) == 0
    return out


def test_16bit_infrared_png_decodes_like_its_8bit_picture(tiny_export, gallery, tmp_path, capsys):
    """issue 16 item 2: a 16-bit grey PNG (radiometric IR) decoded all white; it must match its 8-bit picture."""
    picture = person_picture()
    # Radiometric counts use a narrow band of the 16-bit range: 20000 + 12 per grey level (20000..23060).
    raw = (20000 + picture.astype(np.uint16) * 12).astype(np.uint16)
    Image.fromarray(raw).save(tmp_path / "person16.png")
    assert Image.open(tmp_path / "person16.png").mode == "I;16"

    decoded = np.asarray(load_image(tmp_path / "person16.png"))
    assert decoded.std() > 30, "decoded to a (nearly) constant image"
    assert np.abs(decoded[..., 0].astype(int) - picture).max() <= 1
    assert np.array_equal(decoded, np.asarray(load_image_bytes((tmp_path / "person16.png").read_bytes())))

    # 32-bit integer and float frames (TIFF) are stretched the same way.
    Image.fromarray(raw.astype(np.int32), "I").save(tmp_path / "person32.tif")
    Image.fromarray(20.0 + picture.astype(np.float32) * 0.06, "F").save(tmp_path / "person_f.tif")
    for name in ("person32.tif", "person_f.tif"):
        grey = np.asarray(load_image(tmp_path / name))[..., 0].astype(int)
        assert np.abs(grey - picture).max() <= 1, name

    # The real search: the 16-bit frame finds its own 8-bit picture with cosine ~1, not a random crop.
    code, out, err = run_cli(["search", "--index", gallery, "--query", tmp_path / "person16.png", "--query-modality",
                              "infrared", "--top-k", "3", "--local", tiny_export.repo, "--json"], capsys)
    assert code == 0, err
    top = json.loads(out)["hits"][0]
    assert Path(top["path"]).name == "person.png" and top["score"] > 0.999


@pytest.mark.timeout(300)
def test_fifo_in_images_does_not_hang_index_build(tiny_export, tmp_path):
    """issue 16 item 5: a FIFO named *.jpg under --images hung `mult index build`; it is left out and reported."""
    images = tmp_path / "images"
    write_crops(images, (4,), per_pid=2, seed=1)
    os.mkfifo(images / "0004" / "pipe.jpg")
    # A subprocess with a timeout: a hang fails the test instead of freezing the run.
    result = subprocess.run([sys.executable, "-m", "mult", "index", "build", "--images", str(images),
                             "--local", str(tiny_export.repo), "--out", str(tmp_path / "gallery"), "--json"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["gallery"]["count"] == 2
    assert len(report["left_out"]) == 1 and "pipe.jpg" in report["left_out"][0] and "FIFO" in report["left_out"][0]

    # Opening it directly (a query, a stale gallery row) is a clear error at once, never a blocked read.
    with pytest.raises(MultError, match="FIFO"):
        load_image(images / "0004" / "pipe.jpg")


def _sideways_jpeg(path: Path, upright: Image.Image) -> None:
    """``upright`` stored rotated 90 degrees with EXIF orientation 6, as phone cameras write portrait photos."""
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=95, subsampling=0, exif=exif)


def test_exif_rotated_jpeg_same_pixels_and_ranking_cli_and_page(tiny_export, gallery, tmp_path, capsys):
    """issue 16 item 6: the page applied EXIF orientation, `mult search` and indexing did not; now one decoder."""
    from mult.app.search_page import SearchService, read_upload
    from mult.data.images import RESAMPLE
    from mult.serving.encoders import load_resized, open_encoder
    from mult.serving.gallery import Gallery

    rng = np.random.default_rng(3)
    # 8x8 blocks of one colour (JPEG's own block size), so compression barely changes them.
    upright = Image.fromarray(np.repeat(np.repeat(rng.integers(0, 256, (12, 6, 3), dtype=np.uint8), 8, 0), 8, 1))
    photo = tmp_path / "photo.jpg"
    _sideways_jpeg(photo, upright)
    assert Image.open(photo).size == (96, 48)  # stored landscape

    height, width = tiny_export.height, tiny_export.width
    cli_pixels = load_resized([photo], height, width)[0]  # what `mult search` / indexing feed the model
    page_image = read_upload(str(photo), "photo.jpg")  # what the page decodes from the upload
    assert page_image.size == upright.size  # upright, as displayed
    error = np.abs(np.asarray(page_image).astype(int) - np.asarray(upright)).mean()
    flipped = np.abs(np.asarray(page_image).astype(int) - np.asarray(upright)[::-1, ::-1]).mean()
    assert error < 4 < flipped  # the right way up, not turned the wrong way
    assert np.array_equal(cli_pixels, np.asarray(page_image.resize((width, height), RESAMPLE)))

    code, out, err = run_cli(["search", "--index", gallery, "--query", photo, "--top-k", "5",
                              "--local", tiny_export.repo, "--json"], capsys)
    assert code == 0, err
    cli_hits = [(h["id"], h["score"]) for h in json.loads(out)["hits"]]
    with open_encoder(local=tiny_export.repo) as encoder:
        answer = SearchService(Gallery.open(gallery), encoder, top_k=5).search(str(photo), "visible → infrared")
    assert answer.ok, answer.status
    assert [h["id"] for h in answer.hits] == [i for i, _ in cli_hits]
    assert np.allclose([h["score"] for h in answer.hits], [s for _, s in cli_hits], atol=1e-5)


def test_invalid_utf8_file_name_does_not_abort_build(tiny_export, tmp_path, capsys):
    """issue 16 item 7: a non-UTF-8 file name raised UnicodeEncodeError and aborted the build; it is left out
    with a warning that shows its bytes, and the other images are indexed."""
    images = tmp_path / "images"
    write_crops(images, (5,), per_pid=2, seed=2)
    bad = os.path.join(os.fsencode(images / "0005"), b"caf\xe9-\xff.png")  # Latin-1 bytes, not UTF-8
    with open(bad, "wb") as handle:
        handle.write((images / "0005" / "0.png").read_bytes())

    code, out, err = run_cli(["index", "build", "--images", images, "--local", tiny_export.repo,
                              "--out", tmp_path / "gallery"], capsys)
    assert code == 0, err
    out.encode("utf-8")  # printable as is: no lone surrogates
    assert "left out 1 file" in out and "caf\\xe9-\\xff.png" in out and "UTF-8" in out
    rows = [json.loads(line) for line in (tmp_path / "gallery" / "metadata.jsonl").read_text("utf-8").splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["0.png", "1.png"]

    code, out, err = run_cli(["index", "info", tmp_path / "gallery", "--json"], capsys)
    assert code == 0 and json.loads(out)["gallery"]["count"] == 2, err


def test_decompression_bomb_has_its_own_message(tiny_export, gallery, tmp_path, capsys):
    """issue 16 item 9: a decompression-bomb PNG was reported as "corrupt or truncated"."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png())
    for call in (lambda: load_image(bomb), lambda: load_image_bytes(bomb.read_bytes(), "bomb.png")):
        with pytest.raises(MultError) as err:
            call()
        message = str(err.value)
        assert "400,000,000 pixels" in message and "above the limit" in message and "decompression bomb" in message
        assert "corrupt" not in message and "\n" not in message

    # Through `mult search`: one line on stderr, exit 2, no traceback.
    code, _, err = run_cli(["search", "--index", gallery, "--query", bomb, "--local", tiny_export.repo], capsys)
    assert code == 2 and "decompression bomb" in err and "Traceback" not in err and err.strip().count("\n") == 0

    # A compressed PNG text chunk that inflates without bound is named as a bomb too.
    header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    text = b"Comment\x00\x00" + zlib.compress(bytes(8 << 20))
    pixels = zlib.compress(bytes(9 * 8))
    (tmp_path / "text_bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(
        b"zTXt", text) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b""))
    with pytest.raises(MultError, match="decompression bomb"):
        load_image(tmp_path / "text_bomb.png")
