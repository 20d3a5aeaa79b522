"""Fast decoder for 8-bit greyscale, non-interlaced PNGs (the kind of every ETH3D mask).

Pillow spends ~100 ms on a 6048x4032 mask; most of it is not the inflate. Here: the chunks are
parsed and CRC-checked in Python, the IDAT stream is inflated by zlib a band of rows at a time
(zlib checks its adler32 at the end), and each band's per-scanline filters
(None/Sub/Up/Average/Paeth) are undone by a numba kernel while it is in cache, which also returns
the largest value.
Every other PNG kind (palette, 16-bit, sub-byte, colour, alpha, interlaced) is declined
(`None`), so that the caller falls back to Pillow.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from numba import njit

from dataengine.colmap import BadInputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_KNOWN_CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")


def read_png_gray8(path: Path, out: np.ndarray | None = None) -> tuple[np.ndarray, int] | None:
    """((height, width) uint8 pixels, their maximum) of an 8-bit greyscale non-interlaced PNG;
    None for any other PNG kind (decode it with Pillow). A truncated or corrupt file raises
    BadInputError naming it. `out`: a reusable buffer of at least height*width bytes (saves the
    page faults of a fresh 24 MB array per mask); the pixels are a view of it."""
    path = Path(path)
    data = path.read_bytes()
    header = _parse_chunks(data, path)
    if header is None:
        return None
    width, height, idat = header
    stride = width + 1  # one filter-type byte per scanline
    if out is not None and out.dtype == np.uint8 and out.size >= height * width:
        pixels = out.reshape(-1)[:height * width].reshape(height, width)
    else:
        pixels = np.empty((height, width), dtype=np.uint8)
    # Inflated a band of rows at a time (~256 KB, cache-resident) and unfiltered at once: the
    # filtered image never exists in memory as a whole.
    band = max(1, (1 << 18) // stride)
    inflater = zlib.decompressobj()
    pending = idat
    peak = 0
    try:
        for y0 in range(0, height, band):
            want = min(band, height - y0) * stride
            raw = inflater.decompress(pending, want)
            pending = inflater.unconsumed_tail
            if len(raw) != want:
                raise BadInputError(f"{path}: PNG image data ends after {y0 + len(raw) // stride} "
                                    f"of {height} scanlines", path)
            bad_row, band_peak = unfilter_gray8(np.frombuffer(raw, dtype=np.uint8), pixels, y0)
            if bad_row >= 0:
                raise BadInputError(f"{path}: PNG scanline {bad_row} has the invalid filter "
                                    f"type {raw[(bad_row - y0) * stride]}", path)
            peak = max(peak, band_peak)
        extra = inflater.decompress(pending)  # the stream end: zlib checks its adler32 here
    except zlib.error as exc:
        raise BadInputError(f"{path}: corrupt or truncated PNG image data ({exc})", path) from None
    if extra or not inflater.eof:
        raise BadInputError(f"{path}: PNG image data " + ("holds more than the " if extra else
                            "is cut short after the ") + f"{height} scanlines of 1 + {width} "
                            f"bytes", path)
    return pixels, int(peak)


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
            raise BadInputError(f"{path}: truncated PNG (no IEND chunk, file ends at byte "
                                f"{len(data)})", path)
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise BadInputError(f"{path}: truncated PNG ({kind!r} chunk at byte {pos} needs "
                                f"{length} bytes, the file ends at byte {len(data)})", path)
        body = data[pos + 8:end]
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            raise BadInputError(f"{path}: corrupt PNG (CRC mismatch in the {kind!r} chunk at "
                                f"byte {pos})", path)
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
        raise BadInputError(f"{path}: corrupt PNG header (size {width}x{height}, compression "
                            f"{compression}, filter method {filter_method})", path)
    if bit_depth != 8 or colour_type != 0 or interlace != 0:
        return None
    if not idat:
        raise BadInputError(f"{path}: PNG without image data (no IDAT chunk)", path)
    return width, height, b"".join(idat)


@njit(cache=True, nogil=True)
def unfilter_gray8(raw, out, y0):
    """Undo the PNG scanline filters of 1-byte pixels: raw = a band of scanlines (filter byte +
    width bytes each) → out rows y0, y0 + 1, ... (row y0 - 1 of out is the one above). Returns
    (first row with an invalid filter type or -1, maximum value of the band)."""
    width = out.shape[1]
    stride = width + 1
    zero = np.zeros(width, dtype=np.uint8)
    peak = 0
    for k in range(raw.size // stride):
        y = y0 + k
        src = raw[k * stride + 1:(k + 1) * stride]
        row = out[y]
        up = out[y - 1] if y > 0 else zero
        kind = raw[k * stride]
        if kind == 0:
            for x in range(width):
                row[x] = src[x]
        elif kind == 1:  # Sub: + left
            left = 0
            for x in range(width):
                left = (src[x] + left) & 0xFF
                row[x] = left
        elif kind == 2:  # Up: + above
            for x in range(width):
                row[x] = (src[x] + up[x]) & 0xFF
        elif kind == 3:  # Average: + floor((left + above) / 2)
            left = 0
            for x in range(width):
                left = (src[x] + ((left + up[x]) >> 1)) & 0xFF
                row[x] = left
        elif kind == 4:  # Paeth: + whichever of left, above, upper-left is nearest left+above-upleft
            left = 0
            upleft = 0
            for x in range(width):
                above = np.int64(up[x])
                if above == upleft:  # then p == left: the predictor is left (uniform regions)
                    left = (src[x] + left) & 0xFF
                else:
                    pa = abs(above - upleft)  # |p - left|
                    pb = abs(left - upleft)  # |p - above|
                    pc = abs(left + above - 2 * upleft)  # |p - upleft|
                    if pa <= pb and pa <= pc:
                        pred = left
                    elif pb <= pc:
                        pred = above
                    else:
                        pred = upleft
                    left = (src[x] + pred) & 0xFF
                upleft = above
                row[x] = left
        else:
            return y, peak
        m = np.uint8(0)
        for x in range(width):
            m = max(m, row[x])
        peak = max(peak, np.int64(m))
    return -1, peak
