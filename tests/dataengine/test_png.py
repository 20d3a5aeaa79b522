"""The fast mask PNG decoder (dataengine.png) against Pillow and against hand-filtered PNGs that use
every scanline filter; its fallback to Pillow for other PNG kinds; corrupt files. Both entry points:
the whole decoded image and the still-filtered scanlines the engine's GT pass unfilters row by row."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dataengine.depth import read_mask
from dataengine.errors import BadInputError
from dataengine.kernels.png import row_peak, unfilter_row
from dataengine.png import PNG_SIGNATURE, bad_filter_error, read_png_gray8, read_png_gray8_scanlines

ENTRY_POINTS = ["decoded", "scanlines"]


def _read(path, entry: str, out=None):
    """(pixels, maximum) through `read_png_gray8`, or through the scanlines unfiltered a row at a
    time by the kernel-layer helpers (as kernels.laser.laser_points does inside its GT pass)."""
    if entry == "decoded":
        return read_png_gray8(path, out)
    raw = read_png_gray8_scanlines(path)
    pixels = np.empty((raw.shape[0], raw.shape[1] - 1), np.uint8)
    up, peak = np.zeros(pixels.shape[1], np.uint8), 0
    for y in range(pixels.shape[0]):
        if not unfilter_row(raw[y, 0], raw[y, 1:], up, pixels[y]):
            raise bad_filter_error(path, y, raw[y, 0])
        peak, up = max(peak, row_peak(pixels[y])), pixels[y]
    return pixels, peak


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filter_row(kind: int, row: np.ndarray, up: np.ndarray) -> bytes:
    """PNG filter `kind` applied to one scanline of 1-byte pixels (spec §9.2), written out
    independently of the decoder: the encoder knows every original pixel, so it is vectorised."""
    x = row.astype(np.int32)
    a = np.r_[0, x[:-1]]  # left
    b = up.astype(np.int32)  # above
    c = np.r_[0, b[:-1]]  # upper left
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    pred = [np.zeros_like(x), a, b, (a + b) // 2, paeth][kind]
    return bytes([kind]) + ((x - pred) & 0xFF).astype(np.uint8).tobytes()


def _png(pixels: np.ndarray, filters, *, bit_depth=8, colour_type=0, interlace=0, extra=b"", chunk_size=None) -> bytes:
    """A greyscale PNG with the given filter type per scanline (cycled), IDAT split in pieces."""
    h, w = pixels.shape
    up = np.zeros(w, np.uint8)
    raw = bytearray()
    for y in range(h):
        raw += _filter_row(filters[y % len(filters)], pixels[y], up)
        up = pixels[y]
    stream = zlib.compress(bytes(raw), 9)
    step = chunk_size or len(stream)
    idat = b"".join(_chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, interlace)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + extra + idat + _chunk(b"IEND", b"")


def _mask_like(h=37, w=53, seed=0) -> np.ndarray:
    """Blobs of 1 and 2 on 0 plus some noise: every filter sees uniform runs and edges."""
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    m[5:20, 10:30] = 1
    m[15:35, 25:50] = 2
    m[rng.random((h, w)) < 0.05] = rng.integers(0, 256, size=1)[0]
    m[:, -3:] = np.arange(h, dtype=np.uint8)[:, None] * 7  # a gradient: Paeth picks above/upleft
    m[-8:, :20] = rng.integers(0, 4, (8, 20))  # small random values: Paeth ties (order matters)
    return m


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("filters", [[0], [1], [2], [3], [4], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0, 4]])
def test_every_filter_type_matches_the_pixels_and_pillow(tmp_path, filters, entry):
    pixels = _mask_like()
    path = tmp_path / "m.png"
    path.write_bytes(_png(pixels, filters, chunk_size=97))
    decoded, peak = _read(path, entry)
    np.testing.assert_array_equal(decoded, pixels)
    assert peak == pixels.max()
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), decoded)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_images_of_many_idat_chunks_and_a_reused_buffer(tmp_path, entry):
    # 300 rows of 2000 px in 1000-byte IDAT chunks; Up/Average/Paeth rows need the row above.
    rng = np.random.default_rng(7)
    pixels = np.zeros((300, 2000), np.uint8)
    pixels[40:260, 300:1700] = 1
    pixels[100:200, 900:1900] = 2
    pixels[rng.random(pixels.shape) < 0.01] = 1
    path = tmp_path / "big.png"
    path.write_bytes(_png(pixels, [2, 4, 3, 1, 0, 4, 2], chunk_size=1000))
    reused = np.full(300 * 2000 + 5, 9, np.uint8)  # a dirty reusable buffer, larger than needed
    decoded, peak = _read(path, entry, reused)
    np.testing.assert_array_equal(decoded, pixels)
    assert peak == 2 and np.shares_memory(decoded, reused) == (entry == "decoded")


def test_pillow_written_masks_decode_identically(tmp_path):
    for seed, (h, w) in enumerate([(1, 1), (1, 300), (300, 1), (120, 181)]):
        m = np.random.default_rng(seed).integers(0, 3, (h, w), dtype=np.uint8)
        m[h // 3 :, : w // 2] = 2  # long runs, like real masks
        for optimize in (False, True):
            path = tmp_path / f"m{seed}{optimize}.png"
            Image.fromarray(m).save(path, optimize=optimize)
            fast = read_png_gray8(path)
            assert fast is not None, "an 8-bit greyscale PNG must take the fast path"
            np.testing.assert_array_equal(fast[0], m)
            np.testing.assert_array_equal(read_mask(path, w, h), m)


def test_ancillary_chunks_are_skipped(tmp_path):
    pixels = _mask_like(seed=1) % 3
    extra = _chunk(b"tEXt", b"Comment\x00hello") + _chunk(b"gAMA", struct.pack(">I", 45455))
    path = tmp_path / "m.png"
    path.write_bytes(_png(pixels, [2, 4], extra=extra))
    np.testing.assert_array_equal(read_mask(path, pixels.shape[1], pixels.shape[0]), pixels)


@pytest.mark.parametrize("mode", ["P", "1", "I;16", "LA", "RGB"])
def test_other_png_kinds_are_declined_and_read_mask_falls_back_to_pillow(tmp_path, mode):
    m = (_mask_like(seed=2) % 2).astype(np.uint8)
    path = tmp_path / f"m_{mode.replace(';', '')}.png"
    im = Image.fromarray(m)
    if mode == "P":
        im = im.convert("P")
    elif mode == "1":
        m = (m * 255).astype(np.uint8)  # a 1-bit PNG reads as 0/255: not a valid ETH3D mask
        im = Image.fromarray(m).convert("1")
    else:
        im = im.convert(mode)
    im.save(path)
    assert read_png_gray8(path) is None
    if mode == "P":
        np.testing.assert_array_equal(read_mask(path, m.shape[1], m.shape[0]), m)
    elif mode == "1":
        with pytest.raises(BadInputError, match="values must be 0, 1 or 2, found 255"):
            read_mask(path, m.shape[1], m.shape[0])
    else:
        with pytest.raises(BadInputError, match=f"m_{mode.replace(';', '')}.png.*8-bit single"):
            read_mask(path, m.shape[1], m.shape[0])


def test_interlaced_png_is_declined(tmp_path):
    # Adam7 of a constant 8x8 image: 7 passes of sizes 1x1, 1x1, 2x1, 2x2, 4x2, 4x4, 8x4.
    raw = bytearray()
    for pw, ph in [(1, 1), (1, 1), (2, 1), (2, 2), (4, 2), (4, 4), (8, 4)]:
        raw += (b"\x00" + bytes([2]) * pw) * ph
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 1)
    path = tmp_path / "adam7.png"
    path.write_bytes(PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))
    assert read_png_gray8(path) is None
    np.testing.assert_array_equal(read_mask(path, 8, 8), np.full((8, 8), 2, np.uint8))


def test_values_above_two_and_wrong_size_name_the_file(tmp_path):
    pixels = _mask_like(seed=3)  # has values > 2
    path = tmp_path / "bad_values.png"
    path.write_bytes(_png(pixels, [1]))
    with pytest.raises(
        BadInputError,
        match=r"bad_values.png: mask values must be 0, 1 or 2, "
        rf"found {pixels.max()}",
    ):
        read_mask(path, pixels.shape[1], pixels.shape[0])
    with pytest.raises(BadInputError, match=r"bad_values.png: mask is 53x37, expected 54x37"):
        read_mask(path, 54, 37)


def _corrupt_cases(good: bytes) -> dict[str, tuple[bytes, str]]:
    idat_at = good.index(b"IDAT") - 4
    (idat_len,) = struct.unpack(">I", good[idat_at : idat_at + 4])
    flipped = bytearray(good)
    flipped[idat_at + 8 + idat_len // 2] ^= 0x40  # payload byte: the chunk CRC no longer matches
    bad_filter = _png(np.zeros((4, 5), np.uint8), [0])
    raw = bytes([0, 0, 0, 0, 0, 0] * 2 + [7, 0, 0, 0, 0, 0] + [0] * 6)  # row 2: filter type 7
    bad_filter = bad_filter.replace(
        bad_filter[bad_filter.index(b"IDAT") - 4 : bad_filter.index(b"IEND") - 4], _chunk(b"IDAT", zlib.compress(raw))
    )
    short = _png(np.zeros((4, 5), np.uint8), [0])
    short = short.replace(
        short[short.index(b"IDAT") - 4 : short.index(b"IEND") - 4], _chunk(b"IDAT", zlib.compress(bytes(6 * 3)))
    )  # 3 of 4 scanlines

    def with_stream(stream: bytes) -> bytes:  # a 5x4 image whose IDAT holds `stream`
        png = _png(np.zeros((4, 5), np.uint8), [0])
        return png.replace(png[png.index(b"IDAT") - 4 : png.index(b"IEND") - 4], _chunk(b"IDAT", stream))

    full = zlib.compress(bytes(24))
    bad_adler = full[:-1] + bytes([full[-1] ^ 1])
    return {
        "truncated_mid_idat": (good[: idat_at + 8 + idat_len // 2], "truncated PNG"),
        "no_iend": (good[: good.index(b"IEND") - 4], "truncated PNG"),
        "crc": (bytes(flipped), "CRC mismatch in the b'IDAT' chunk"),
        "signature": (b"GIF89a" + good[6:], "not a PNG file"),
        "filter_type": (bad_filter, "scanline 2 has the invalid filter type 7"),
        "too_few_rows": (short, "image data ends after 3 of 4 scanlines"),
        "no_adler32": (with_stream(full[:-4]), "corrupt or truncated PNG image data"),
        "bad_adler32": (with_stream(bad_adler), "corrupt or truncated PNG image data"),
        "too_many_rows": (with_stream(zlib.compress(bytes(30))), "holds more than the 4 scanlines"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "truncated_mid_idat",
        "no_iend",
        "crc",
        "signature",
        "filter_type",
        "too_few_rows",
        "no_adler32",
        "bad_adler32",
        "too_many_rows",
    ],
)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_corrupt_png_gives_a_clear_error_naming_the_file(tmp_path, case, entry):
    pixels = _mask_like(seed=4) % 3
    data, message = _corrupt_cases(_png(pixels, [0, 1, 2, 3, 4]))[case]
    path = tmp_path / f"{case}.png"
    path.write_bytes(data)
    with pytest.raises(BadInputError, match=rf"{case}.png: .*{_re(message)}"):
        _read(path, entry)
    with pytest.raises(BadInputError, match=rf"{case}.png: .*{_re(message)}"):
        read_mask(path, *pixels.shape[::-1])  # the engine's entry point


def _re(text: str) -> str:
    import re

    return re.escape(text)
