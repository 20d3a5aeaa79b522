"""Fast decoder for 8-bit greyscale, non-interlaced PNGs (the kind of every ETH3D mask).

Pillow spends ~100 ms on a 6048x4032 mask; most of it is not the inflate. Here: the chunks are
parsed and CRC-checked in Python; the IDAT stream is inflated in one call by libdeflate (the
`deflate` wheel bundles it: ~3x faster than zlib, adler32 checked); the per-scanline filters
(None/Sub/Up/Average/Paeth) are undone by numba kernels (`kernels.png.unfilter_gray8`, or row by
row inside the consumer's own pass with `kernels.png.unfilter_row`). benchmarks/engine.py compares
this with zlib, imagecodecs' libspng/libpng and Pillow inside the engine's frame time
(benchmarks/RESULTS.md).
Every other PNG kind (palette, 16-bit, sub-byte, colour, alpha, interlaced) is declined
(`None`), so that the caller falls back to Pillow.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import deflate
import numpy as np

from dataengine.errors import BadInputError
from dataengine.kernels.png import unfilter_gray8

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png_gray8(path: Path, out: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
    """((height, width) uint8 pixels, their maximum) of an 8-bit greyscale non-interlaced PNG;
    None for any other PNG kind (decode it with Pillow). A truncated or corrupt file raises
    BadInputError naming it. `out`: a reusable buffer of at least height*width bytes (saves the
    page faults of a fresh 24 MB array per mask); the pixels are a view of it."""
    raw = read_png_gray8_scanlines(path)
    if raw is None:
        return None
    height, width = raw.shape[0], raw.shape[1] - 1
    if out is not None and out.dtype == np.uint8 and out.size >= height * width:
        pixels = out.reshape(-1)[: height * width].reshape(height, width)
    else:
        pixels = np.empty((height, width), dtype=np.uint8)
    bad_row, peak = unfilter_gray8(raw.reshape(-1), pixels, 0)
    if bad_row >= 0:
        raise bad_filter_error(Path(path), bad_row, raw[bad_row, 0])
    return pixels, int(peak)


def read_png_gray8_scanlines(path: Path) -> np.ndarray | None:
    """The (height, width + 1) still-filtered scanlines of an 8-bit greyscale non-interlaced PNG
    (filter-type byte first, read-only; undo with `kernels.png.unfilter_row`, e.g. row by row inside a
    consumer's own pass: no whole decoded image written and read again). None for other PNG kinds
    (use Pillow). Corrupt data raises BadInputError naming the file; invalid filter types are the
    consumer's to report (`bad_filter_error`)."""
    path = Path(path)
    header = _parse_chunks(path.read_bytes(), path)
    if header is None:
        return None
    width, height, idat = header
    return _inflate(idat, height, width, path)


def _inflate(idat: bytes, height: int, width: int, path: Path) -> np.ndarray:
    """The whole zlib stream in one libdeflate call (adler32 checked), one byte of room to spare so
    that a stream holding more than the image shows."""
    size = height * (width + 1)  # one filter-type byte per scanline
    try:
        raw = deflate.zlib_decompress(idat, size + 1)
    except deflate.DeflateError:
        raise _inflate_error(idat, height, width, path) from None
    if len(raw) > size:
        raise _excess_data(path, height, width)
    if len(raw) < size:
        raise _short_data(path, len(raw) // (width + 1), height)
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width + 1)


def _inflate_error(idat: bytes, height: int, width: int, path: Path) -> BadInputError:
    """libdeflate reports every failure alike; zlib (only on this error path) tells a stream that
    holds more than the image from a corrupt or cut one, and names the corruption."""
    size = height * (width + 1)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(idat, size + 1)
        if len(raw) <= size:
            raw += inflater.flush()
    except zlib.error as exc:
        return _corrupt_data(path, str(exc))
    if len(raw) > size:
        return _excess_data(path, height, width)
    return _corrupt_data(path, "the stream ends before its end marker and checksum")


def _short_data(path: Path, rows: int, height: int) -> BadInputError:
    return BadInputError(f"{path}: PNG image data ends after {rows} of {height} scanlines", path)


def _excess_data(path: Path, height: int, width: int) -> BadInputError:
    return BadInputError(f"{path}: PNG image data holds more than the {height} scanlines of 1 + {width} bytes", path)


def _corrupt_data(path: Path, why: str) -> BadInputError:
    return BadInputError(f"{path}: corrupt or truncated PNG image data ({why})", path)


def bad_filter_error(path: Path, row: int, kind: int) -> BadInputError:
    return BadInputError(f"{path}: PNG scanline {row} has the invalid filter type {kind}", path)


def _parse_chunks(data: bytes, path: Path) -> tuple[int, int, bytes] | None:
    """(width, height, concatenated IDAT payload) of an 8-bit greyscale non-interlaced PNG, None
    for other kinds; every chunk's CRC is checked."""
    if not data.startswith(PNG_SIGNATURE):
        raise BadInputError(f"{path}: not a PNG file (bad signature)", path)
    pos = len(PNG_SIGNATURE)
    idat: list[bytes] = []
    ihdr = None
    while True:
        if pos + 12 > len(data):
            raise BadInputError(f"{path}: truncated PNG (no IEND chunk, file ends at byte {len(data)})", path)
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise BadInputError(
                f"{path}: truncated PNG ({kind!r} chunk at byte {pos} needs "
                f"{length} bytes, the file ends at byte {len(data)})",
                path,
            )
        body = data[pos + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            raise BadInputError(f"{path}: corrupt PNG (CRC mismatch in the {kind!r} chunk at byte {pos})", path)
        if ihdr is None and kind != b"IHDR":
            raise BadInputError(f"{path}: corrupt PNG (first chunk is {kind!r}, not IHDR)", path)
        if kind == b"IHDR":
            if length != 13:
                raise BadInputError(f"{path}: corrupt PNG (IHDR of {length} bytes)", path)
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        elif kind == b"PLTE" or not (kind[0] & 0x20):  # palette, or a critical chunk we do not know
            return None
        pos = end + 4
    width, height, bit_depth, colour_type, compression, filter_method, interlace = ihdr
    if width == 0 or height == 0 or compression != 0 or filter_method != 0:
        raise BadInputError(
            f"{path}: corrupt PNG header (size {width}x{height}, compression "
            f"{compression}, filter method {filter_method})",
            path,
        )
    if bit_depth != 8 or colour_type != 0 or interlace != 0:
        return None
    if not idat:
        raise BadInputError(f"{path}: PNG without image data (no IDAT chunk)", path)
    return width, height, b"".join(idat)
