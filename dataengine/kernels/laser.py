"""The GT pass of laser depth: every valid, unmasked pixel of a raw ETH3D GT map taken through the
undistortion grid to the output as a laser point (`laser_points`, for `plane`), and the integer
tests on the float bits that count valid and bad GT values (`scan_depth`, for the footprint pooling).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from dataengine.kernels._jit import kernel
from dataengine.kernels.png import row_peak, unfilter_row
from dataengine.kernels.prism import grid_bilinear


@kernel
def _is_valid_bits(b):
    """1 when the float32 with bit pattern b (int32) is finite and > 0: 0 < b < bits(+inf)
    (excludes +-0, negatives, +-inf and NaN)."""
    return np.int32(np.uint32(b - 1) < np.uint32(0x7F7FFFFF))


# Largest plausible laser GT depth (metres) and its float32 bit pattern: ETH3D scenes span < ~100 m.
MAX_GT_DEPTH = 1000.0
_MAX_GT_BITS = 0x447A0000  # float32(1000.0)


@kernel
def _is_bad_bits(b):
    """1 when the float32 with bit pattern b is neither a plausible depth (0 < z <= MAX_GT_DEPTH)
    nor the +inf "no GT" marker: NaN, -inf, zero, negatives and implausibly large values."""
    return np.int32((np.uint32(b - 1) >= np.uint32(_MAX_GT_BITS)) & (b != 0x7F800000))


@kernel
def scan_depth(depth):
    """(bad count = `_is_bad_bits`, valid count = finite and > 0) of a raw GT depth map (integer
    tests on the float bits, branch-free: SIMD)."""
    n_nan = 0
    n_valid = 0
    bits = depth.reshape(-1).view(np.int32)
    for i in range(bits.size):
        n_nan += _is_bad_bits(bits[i])
        n_valid += _is_valid_bits(bits[i])
    return n_nan, n_valid


# Gathers bit 7 of each of 8 bytes (each 0 or 1) into the top byte of the product.
_PACK_OCTET = np.uint64(0x0102040810204080)


@kernel
def _flag_word(flag_octets, w):
    """Columns 64w .. 64w+63 of a row's 0/1 flag bytes as the bits of one word (bit k = column
    64w + k): each 8 bytes, read as one little-endian uint64, are packed by one multiply."""
    word = np.uint64(0)
    for q in range(8):
        octet = (flag_octets[8 * w + q] * _PACK_OCTET) >> np.uint64(56)
        word |= octet << np.uint64(8 * q)
    return word


@kernel
def _first_column_reaching(threshold, end, y, inv_x, inv_y, inv_spacing):
    """Binary search over distorted columns [0, end) for the first whose mapped output x >= threshold
    (the mapping is monotonic along a row); `end` if none."""
    a, b = 0, end
    while a < b:
        m = (a + b) // 2
        if grid_bilinear(m + 0.5, y, inv_x, inv_y, inv_spacing)[0] >= threshold:
            b = m
        else:
            a = m + 1
    return a


@kernel
def _row_span(iy, lo, hi, dist_w, inv_x, inv_y, inv_spacing):
    """Columns [c0, c1) of distorted row iy whose undistorted x may lie in [lo, hi): binary
    search on the row's (monotone) undistortion, widened by one grid cell; (0, 0) = none."""
    y = iy + 0.5
    first, _ = grid_bilinear(0.5, y, inv_x, inv_y, inv_spacing)
    last, _ = grid_bilinear(dist_w - 0.5, y, inv_x, inv_y, inv_spacing)
    if not (first == first and last == last and first < last):
        return 0, dist_w  # no usable inverse here: scan the whole row
    if last < lo or first >= hi:
        return 0, 0
    c0 = _first_column_reaching(lo, dist_w - 1, y, inv_x, inv_y, inv_spacing)
    c1 = _first_column_reaching(hi, dist_w, y, inv_x, inv_y, inv_spacing)
    margin = int(1.0 / inv_spacing) + 1
    return max(c0 - margin, 0), min(c1 + margin, dist_w)


class PointBuffers(NamedTuple):
    """Caller-owned outputs of `laser_points`, one entry per point (same capacity each)."""

    owner: np.ndarray  # int32: 4 * flat output pixel + quadrant (2 * (y >= 0) + (x >= 0))
    pos_x: np.ndarray  # float32: offset from that pixel's centre, output px
    pos_y: np.ndarray  # float32
    depth: np.ndarray  # float32: the GT value

    @property
    def capacity(self) -> int:
        return min(a.size for a in self)


class LaserPoints(NamedTuple):
    """What `laser_points` found besides the points themselves."""

    n_points: int  # points found; above buffers.capacity = grow the buffers and call again
    n_valid: int  # valid GT pixels (finite and > 0) of the whole map
    n_nan: int  # NaN GT pixels of the whole map
    n_masked: int  # mask pixels != 0 (0 without a mask)
    mask_peak: int  # the mask's largest value (filtered masks only, else 0)
    bad_filter_row: int  # first mask row with an invalid PNG filter type (the pass stopped), or -1


def laser_points(
    depth,
    mask,
    inv_x,
    inv_y,
    buffers: PointBuffers,
    *,
    spacing: float,
    affine,
    src_size,
    out_shape: tuple[int, int],
    mask_filtered: bool = False,
) -> LaserPoints:
    """Every valid, unmasked GT pixel as a laser point at output resolution (out_shape = (H, W)).

    The splat rule puts a laser point somewhere in its GT pixel [ix, ix+1) x [iy, iy+1); its
    position is taken as the pixel centre, mapped through the undistortion grid (bilinear) to the
    undistorted image and then to output pixels. Points outside the undistorted image or the
    output are dropped (only the columns that can reach the output are visited: a 518² crop of a
    3:2 image skips a third). Writes the points into `buffers` (at most their capacity; the depth
    is 4 bytes, inverted by `plane.bucket_points`). The same pass scans every GT row whole (the row then
    sits in cache for the point pass) for the map's valid / NaN / masked counts.

    mask: (0, 0) = none; else the decoded (h, w) mask, or with mask_filtered its still-filtered
    PNG scanlines (h, w + 1) (`dataengine.png.read_png_gray8_scanlines`), undone here a row at a time into
    a two-row buffer: the whole decoded mask is never written and read back (~48 MB less memory
    traffic per 24-megapixel frame); the result then carries the mask's largest value and the
    first row with an invalid filter type.
    """
    counts = np.zeros(5, dtype=np.int64)
    n = _laser_points(
        depth,
        mask,
        mask_filtered,
        inv_x,
        inv_y,
        spacing,
        affine,
        src_size,
        out_shape[0],
        out_shape[1],
        *buffers,
        counts,
    )
    return LaserPoints(int(n), *(int(c) for c in counts))


@kernel
def _laser_points(
    depth,
    mask,
    mask_filtered,
    inv_x,
    inv_y,
    spacing,
    affine,
    src_size,
    out_h,
    out_w,
    owner,
    pos_x,
    pos_y,
    point_depth,
    counts,
):
    """The kernel of `laser_points`: counts = (valid, NaN, masked, mask peak, bad filter row)."""
    ax, bx, ay, by = affine[0], affine[1], affine[2], affine[3]
    rax = 1.0 / ax
    ray = 1.0 / ay
    src_w, src_h = src_size[0], src_size[1]
    x_lo = max(bx, 0.0)
    x_hi = min(bx + ax * out_w, src_w)
    dist_h, dist_w = depth.shape
    has_mask = mask.shape[0] > 0
    inv_spacing = 1.0 / spacing
    n = 0
    # One flag byte per column, padded to whole 64-column words (the padding stays 0).
    flags = np.zeros(((dist_w + 63) >> 6) << 6, dtype=np.uint8)
    flag_octets = flags.view(np.uint64)
    gh, gw = inv_x.shape
    # The column spans need a complete (monotone) inverse; with any NaN node scan whole rows.
    complete = True
    for g in range(inv_x.size):
        if inv_x.flat[g] != inv_x.flat[g]:
            complete = False
            break
    row_x = np.empty(gw, dtype=np.float64)
    row_y = np.empty(gw, dtype=np.float64)
    capacity = min(owner.size, pos_x.size, pos_y.size, point_depth.size)
    n_valid = 0
    n_nan = 0
    n_masked = 0
    mask_rows = np.zeros((2, dist_w if mask_filtered else 0), dtype=np.uint8)
    peak = 0
    counts[4] = -1
    for iy in range(dist_h):
        drow = depth[iy]
        bits = drow.view(np.int32)
        if has_mask:
            if mask_filtered:
                mrow = mask_rows[iy & 1]  # the row above is mask_rows[(iy - 1) & 1] (zeros at 0)
                if not unfilter_row(mask[iy, 0], mask[iy, 1:], mask_rows[(iy + 1) & 1], mrow):
                    counts[4] = iy
                    break
                peak = max(peak, row_peak(mrow))
            else:
                mrow = mask[iy]
        # One vectorised pass over the whole row: the map's valid/NaN counts and the flags of
        # the valid, unmasked pixels (integer tests on the float bits; the mask read
        # contiguously, not at each valid pixel).
        if has_mask:
            for ix in range(dist_w):
                f = _is_valid_bits(bits[ix])
                n_nan += _is_bad_bits(bits[ix])
                n_valid += f
                n_masked += mrow[ix] != 0
                flags[ix] = f & (mrow[ix] == 0)
        else:
            for ix in range(dist_w):
                f = _is_valid_bits(bits[ix])
                n_nan += _is_bad_bits(bits[ix])
                n_valid += f
                flags[ix] = f
        c0, c1 = _row_span(iy, x_lo, x_hi, dist_w, inv_x, inv_y, inv_spacing) if complete else (0, dist_w)
        if c1 <= c0:
            continue
        # The grid interpolated to this row once: per point, only the lerp along x remains
        # (the same bilinear value as grid_bilinear).
        fy = (iy + 0.5) * inv_spacing
        gy0 = min(int(fy), gh - 2)
        wy = fy - gy0
        for g in range(min(int(c0 * inv_spacing), gw - 2), min(int(c1 * inv_spacing) + 2, gw)):
            row_x[g] = inv_x[gy0, g] * (1 - wy) + inv_x[gy0 + 1, g] * wy
            row_y[g] = inv_y[gy0, g] * (1 - wy) + inv_y[gy0 + 1, g] * wy
        # The flagged columns of [c0, c1) in order, 64 at a time as the set bits of a word (~9 %
        # of the pixels are valid, at random: a branch per pixel would mispredict on most of
        # them, and a branch-free compaction stores every column).
        for w in range(c0 >> 6, (c1 + 63) >> 6):
            base = w << 6
            word = _flag_word(flag_octets, w)
            if c0 > base:
                word &= ~((np.uint64(1) << np.uint64(c0 - base)) - np.uint64(1))
            if c1 - base < 64:
                word &= (np.uint64(1) << np.uint64(c1 - base)) - np.uint64(1)
            while word != 0:
                ix = base + int(trailing_zeros(word))
                word &= word - np.uint64(1)
                d = drow[ix]
                fx = (ix + 0.5) * inv_spacing
                g = min(int(fx), gw - 2)
                wx = fx - g
                ux = row_x[g] * (1 - wx) + row_x[g + 1] * wx
                uy = row_y[g] * (1 - wx) + row_y[g + 1] * wx
                if not (ux >= 0.0 and ux < src_w and uy >= 0.0 and uy < src_h):
                    continue  # also NaN (no inverse there)
                ox = (ux - bx) * rax
                oy = (uy - by) * ray
                if not (ox >= 0.0 and ox < out_w and oy >= 0.0 and oy < out_h):
                    continue
                j = int(ox)
                i = int(oy)
                if n < capacity:
                    qx = np.float32(ox - j - 0.5)
                    qy = np.float32(oy - i - 0.5)
                    owner[n] = 4 * (i * out_w + j) + 2 * (qy >= 0) + (qx >= 0)
                    pos_x[n] = qx
                    pos_y[n] = qy
                    point_depth[n] = d
                n += 1
    counts[0] = n_valid
    counts[1] = n_nan
    counts[2] = n_masked
    counts[3] = peak
    return n
