"""Every numba kernel of the engine (cache=True, nogil=True so frame workers run in parallel threads).

Big buffers are allocated by the callers in numpy and passed in: numba's own np.full is ~4x slower
at 24-megapixel size (engine-performance-notes §3.2).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

_JIT = dict(cache=True, nogil=True, fastmath=False)


# --- PNG scanline filters (1-byte pixels): png.py decodes with them, laser_points unfilters the mask
# row by row inside its GT pass with them.
@njit(**_JIT)
def unfilter_row(kind, src, up, row):
    """Undo one scanline's PNG filter (1-byte pixels): src = its filtered bytes (no filter-type
    byte), up = the row above (zeros for the first), row = the result. False for an invalid
    filter type."""
    width = row.size
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
        return False
    return True


@njit(**_JIT)
def row_peak(row):
    m = np.uint8(0)
    for x in range(row.size):
        m = max(m, row[x])
    return np.int64(m)


@njit(**_JIT)
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
        up = out[y - 1] if y > 0 else zero
        if not unfilter_row(raw[k * stride], raw[k * stride + 1 : (k + 1) * stride], up, out[y]):
            return y, peak
        peak = max(peak, row_peak(out[y]))
    return -1, peak


@njit(**_JIT)
def _thin_prism_distort(u, v, p):
    """Normalised pinhole (u, v) = (x/z, y/z) → COLMAP corner-origin pixel of THIN_PRISM_FISHEYE.

    p = fx fy cx cy k1 k2 p1 p2 k3 k4 sx1 sy1 (COLMAP order: p1/p2 sit between k2 and k3).
    """
    r = math.sqrt(u * u + v * v)
    if r > 1e-12:
        theta = math.atan(r)
        uf = theta * u / r
        vf = theta * v / r
    else:
        uf = u
        vf = v
    t2 = uf * uf + vf * vf
    t4 = t2 * t2
    radial = p[4] * t2 + p[5] * t4 + p[8] * t4 * t2 + p[9] * t4 * t4
    du = uf * radial + 2.0 * p[6] * uf * vf + p[7] * (t2 + 2.0 * uf * uf) + p[10] * t2
    dv = vf * radial + 2.0 * p[7] * uf * vf + p[6] * (t2 + 2.0 * vf * vf) + p[11] * t2
    return p[0] * (uf + du) + p[2], p[1] * (vf + dv) + p[3]


@njit(**_JIT)
def thin_prism_project(xyz, params):
    """(N,3) camera-frame points → (N,2) COLMAP corner-origin pixels (NaN where z <= 0)."""
    n = xyz.shape[0]
    out = np.empty((n, 2), dtype=np.float64)
    for i in range(n):
        z = xyz[i, 2]
        if z <= 0.0:
            out[i, 0] = np.nan
            out[i, 1] = np.nan
            continue
        out[i, 0], out[i, 1] = _thin_prism_distort(xyz[i, 0] / z, xyz[i, 1] / z, params)
    return out


@njit(**_JIT)
def distortion_grid(pinhole, prism, spacing, grid_x, grid_y):
    """Distorted pixel of undistorted COLMAP points (gx*spacing, gy*spacing) for every grid node.

    pinhole = fx fy cx cy of the undistorted camera; prism = the same camera's THIN_PRISM params.
    The map is smooth (second derivative ~1e-4 px/px^2), so bilinear interpolation between nodes
    8 px apart is exact to ~1e-3 px, while saving a thin-prism evaluation per depth sample.
    """
    for gy in range(grid_x.shape[0]):
        v = (gy * spacing - pinhole[3]) / pinhole[1]
        for gx in range(grid_x.shape[1]):
            u = (gx * spacing - pinhole[2]) / pinhole[0]
            grid_x[gy, gx], grid_y[gy, gx] = _thin_prism_distort(u, v, prism)


@njit(**_JIT)
def _lower_median_inplace(buf, n):
    """Lower median of buf[:n] (insertion sort; n is small): a real sample, never a blend."""
    for i in range(1, n):
        key = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > key:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = key
    return buf[(n - 1) // 2]


@njit(**_JIT)
def _nearest_first_offsets(k):
    """(k*k, 2) sub-sample offsets (row, col) inside a unit footprint, nearest to its centre first
    (ties: row-major order), so that the first valid sample met is the nearest one."""
    offsets = np.empty((k * k, 2), dtype=np.float64)
    dist = np.empty(k * k, dtype=np.float64)
    for q in range(k * k):
        offsets[q, 0] = (q // k + 0.5) / k
        offsets[q, 1] = (q % k + 0.5) / k
        dist[q] = (offsets[q, 0] - 0.5) ** 2 + (offsets[q, 1] - 0.5) ** 2
    order = np.argsort(dist, kind="mergesort")
    out = np.empty((k * k, 2), dtype=np.float64)
    for q in range(k * k):
        out[q, 0] = offsets[order[q], 0]
        out[q, 1] = offsets[order[q], 1]
    return out


@njit(**_JIT)
def _distort_bilinear(x, y, grid_x, grid_y, inv_spacing):
    """Undistorted COLMAP (x, y) → distorted COLMAP pixel, bilinear in the thin-prism grid."""
    gh, gw = grid_x.shape
    fy = y * inv_spacing
    gy0 = min(int(fy), gh - 2)
    wy = fy - gy0
    fx = x * inv_spacing
    gx0 = min(int(fx), gw - 2)
    wx = fx - gx0
    dx = (grid_x[gy0, gx0] * (1 - wx) + grid_x[gy0, gx0 + 1] * wx) * (1 - wy) + (
        grid_x[gy0 + 1, gx0] * (1 - wx) + grid_x[gy0 + 1, gx0 + 1] * wx
    ) * wy
    dy = (grid_y[gy0, gx0] * (1 - wx) + grid_y[gy0, gx0 + 1] * wx) * (1 - wy) + (
        grid_y[gy0 + 1, gx0] * (1 - wx) + grid_y[gy0 + 1, gx0 + 1] * wx
    ) * wy
    return dx, dy


@njit(**_JIT)
def laser_depth_pool(
    depth, mask, grid_x, grid_y, spacing, affine, src_size, k, pooling, min_count, out_depth, out_count
):
    """Pool the distorted-frame laser GT into every output pixel.

    For output pixel (i, j), k x k stratified samples at undistorted COLMAP coordinates
    x = ax*(j + (s+0.5)/k) + bx, y = ay*(i + (r+0.5)/k) + by are mapped through the thin-prism
    grid into the distorted GT and looked up with floor (the GT writer's pixel rule). Samples
    outside either image, non-finite or <= 0 depth, and mask != 0 (values 1 and 2) are dropped.
    With >= min_count valid samples the pixel gets, by `pooling`: 0 = the valid sample nearest
    the footprint centre, 1 = their lower median, 2 = their minimum (the plane fit is
    `laser_depth_pool_plane`). `mask` may be (0, 0) for "no mask file". Returns the number of NaN
    samples met.
    """
    ax, bx, ay, by = affine[0], affine[1], affine[2], affine[3]
    src_w, src_h = src_size[0], src_size[1]
    dist_h, dist_w = depth.shape
    has_mask = mask.shape[0] > 0
    buf = np.empty(k * k, dtype=np.float32)
    offsets = _nearest_first_offsets(k)
    n_nan = 0
    inv_spacing = 1.0 / spacing
    for i in range(out_depth.shape[0]):
        for j in range(out_depth.shape[1]):
            n = 0
            for q in range(k * k):
                y = ay * (i + offsets[q, 0]) + by
                if y < 0.0 or y >= src_h:
                    continue
                x = ax * (j + offsets[q, 1]) + bx
                if x < 0.0 or x >= src_w:
                    continue
                dx, dy = _distort_bilinear(x, y, grid_x, grid_y, inv_spacing)
                if dx < 0.0 or dy < 0.0:
                    continue
                ix = int(dx)
                iy = int(dy)
                if ix >= dist_w or iy >= dist_h:
                    continue
                d = depth[iy, ix]
                if d != d:
                    n_nan += 1
                    continue
                if not (d > 0.0 and d < np.inf):
                    continue
                if has_mask and mask[iy, ix] != 0:
                    continue
                buf[n] = d
                n += 1
                if pooling == 0 and n >= min_count:
                    break  # samples come nearest-first: buf[0] is the answer
            out_count[i, j] = n
            if n >= min_count and n > 0:
                if pooling == 0:
                    out_depth[i, j] = buf[0]
                elif pooling == 1:
                    out_depth[i, j] = _lower_median_inplace(buf, n)
                else:
                    m = buf[0]
                    for q in range(1, n):
                        if buf[q] < m:
                            m = buf[q]
                    out_depth[i, j] = m
            else:
                out_depth[i, j] = 0.0
    return n_nan


@njit(**_JIT)
def undistortion_grid(pinhole, prism, spacing, grid_x, grid_y):
    """Undistorted COLMAP pixel of the distorted points (gx*spacing, gy*spacing), every node.

    The inverse of `distortion_grid`: Newton on the thin-prism model (forward-difference
    Jacobian, residual evaluated exactly) from the distortion-free guess, to 1e-9 px. Nodes where
    it does not converge (outside the model's monotone range) are NaN; points interpolated from
    them are dropped by the callers.
    """
    for gy in range(grid_x.shape[0]):
        for gx in range(grid_x.shape[1]):
            tx = gx * spacing
            ty = gy * spacing
            u = (tx - prism[2]) / prism[0]
            v = (ty - prism[3]) / prism[1]
            ok = False
            for _ in range(50):
                x, y = _thin_prism_distort(u, v, prism)
                rx = x - tx
                ry = y - ty
                if abs(rx) < 1e-9 and abs(ry) < 1e-9:
                    ok = True
                    break
                h = 1e-7
                x1, y1 = _thin_prism_distort(u + h, v, prism)
                x2, y2 = _thin_prism_distort(u, v + h, prism)
                j11 = (x1 - x) / h
                j21 = (y1 - y) / h
                j12 = (x2 - x) / h
                j22 = (y2 - y) / h
                det = j11 * j22 - j12 * j21
                if det <= 0.0:
                    break  # folded-over region of the polynomial
                du = (j22 * rx - j12 * ry) / det
                dv = (j11 * ry - j21 * rx) / det
                step = math.sqrt(du * du + dv * dv)
                if step > 0.1:  # damp: at most 0.1 in normalised units per iteration
                    du *= 0.1 / step
                    dv *= 0.1 / step
                u -= du
                v -= dv
            if ok:
                grid_x[gy, gx] = pinhole[0] * u + pinhole[2]
                grid_y[gy, gx] = pinhole[1] * v + pinhole[3]
            else:
                grid_x[gy, gx] = np.nan
                grid_y[gy, gx] = np.nan


# Plane pooling status per output pixel.
PLANE_HOLE = 0  # no valid laser point overlaps the footprint: no supervision
PLANE_FITTED = 1  # the plane estimate
PLANE_FEW_POINTS = 2  # nearest point kept: fewer than min_points laser points
PLANE_COLLINEAR = 3  # nearest kept: points (nearly) on a line
PLANE_EXTRAPOLATED = 4  # nearest kept: the plane leaves the points' depth range at the centre
PLANE_INCONSISTENT = 5  # nearest kept: a residual above tolerance (e.g. two surfaces)


@njit(**_JIT)
def _first_column_reaching(threshold, end, y, inv_x, inv_y, inv_spacing):
    """Binary search over distorted columns [0, end) for the first whose mapped output x >= threshold
    (the mapping is monotonic along a row); `end` if none."""
    a, b = 0, end
    while a < b:
        m = (a + b) // 2
        if _distort_bilinear(m + 0.5, y, inv_x, inv_y, inv_spacing)[0] >= threshold:
            b = m
        else:
            a = m + 1
    return a


@njit(**_JIT)
def _row_span(iy, lo, hi, dist_w, inv_x, inv_y, inv_spacing):
    """Columns [c0, c1) of distorted row iy whose undistorted x may lie in [lo, hi): binary
    search on the row's (monotone) undistortion, widened by one grid cell; (0, 0) = none."""
    y = iy + 0.5
    first, _ = _distort_bilinear(0.5, y, inv_x, inv_y, inv_spacing)
    last, _ = _distort_bilinear(dist_w - 0.5, y, inv_x, inv_y, inv_spacing)
    if not (first == first and last == last and first < last):
        return 0, dist_w  # no usable inverse here: scan the whole row
    if last < lo or first >= hi:
        return 0, 0
    c0 = _first_column_reaching(lo, dist_w - 1, y, inv_x, inv_y, inv_spacing)
    c1 = _first_column_reaching(hi, dist_w, y, inv_x, inv_y, inv_spacing)
    margin = int(1.0 / inv_spacing) + 1
    return max(c0 - margin, 0), min(c1 + margin, dist_w)


@njit(**_JIT)
def _is_valid_bits(b):
    """1 when the float32 with bit pattern b (int32) is finite and > 0: 0 < b < bits(+inf)
    (excludes +-0, negatives, +-inf and NaN)."""
    return np.int32(np.uint32(b - 1) < np.uint32(0x7F7FFFFF))


@njit(**_JIT)
def _is_nan_bits(b):
    return np.int32((b & 0x7FFFFFFF) > 0x7F800000)


# Largest plausible laser GT depth (metres) and its float32 bit pattern: ETH3D scenes span < ~100 m.
MAX_GT_DEPTH = 1000.0
_MAX_GT_BITS = 0x447A0000  # float32(1000.0)


@njit(**_JIT)
def _is_bad_bits(b):
    """1 when the float32 with bit pattern b is neither a plausible depth (0 < z <= MAX_GT_DEPTH)
    nor the +inf "no GT" marker: NaN, -inf, zero, negatives and implausibly large values."""
    return np.int32((np.uint32(b - 1) >= np.uint32(_MAX_GT_BITS)) & (b != 0x7F800000))


# Gathers bit 7 of each of 8 bytes (each 0 or 1) into the top byte of the product.
_PACK_OCTET = np.uint64(0x0102040810204080)


@njit(**_JIT)
def _flag_word(flag_octets, w):
    """Columns 64w .. 64w+63 of a row's 0/1 flag bytes as the bits of one word (bit k = column
    64w + k): each 8 bytes, read as one little-endian uint64, are packed by one multiply."""
    word = np.uint64(0)
    for q in range(8):
        octet = (flag_octets[8 * w + q] * _PACK_OCTET) >> np.uint64(56)
        word |= octet << np.uint64(8 * q)
    return word


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
    is 4 bytes, inverted by `bucket_points`). The same pass scans every GT row whole (the row then
    sits in cache for the point pass) for the map's valid / NaN / masked counts.

    mask: (0, 0) = none; else the decoded (h, w) mask, or with mask_filtered its still-filtered
    PNG scanlines (h, w + 1) (`png.read_png_gray8_scanlines`), undone here a row at a time into
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


@njit(**_JIT)
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
        # (the same bilinear value as _distort_bilinear).
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


@njit(**_JIT)
def bucket_points(owner, pos_x, pos_y, point_depth, n, start, px, py, pw):
    """Counting sort of the first n points by owner (= 4 * flat pixel + quadrant, see
    `laser_points`): sub-bucket b holds px/py/pw[start[b]:start[b+1]], so pixel p's points are
    [start[4p], start[4p+4]) and a window can take only the quadrants it overlaps; pw = 1 /
    point_depth (float64)."""
    start[:] = 0
    for q in range(n):
        start[owner[q] + 1] += 1
    # start[b + 1] becomes bucket b's start and serves as its write cursor (no copy); it ends at
    # bucket b's end = bucket b + 1's start: exactly the start array wanted, no shift back.
    run = 0
    for b in range(1, start.size):
        count = start[b]
        start[b] = run
        run += count
    for q in range(n):
        t = start[owner[q] + 1]
        start[owner[q] + 1] = t + 1
        px[t] = pos_x[q]
        py[t] = pos_y[q]
        pw[t] = 1.0 / point_depth[q]  # inverse depth, float64


@njit(**_JIT)
def _gather_window(i, j, start, px, py, pw, height, width, radius, wx, wy, ww):
    """Points of the window [-radius, radius)^2 around the centre of pixel (i, j) (radius <= 1.5:
    the 3x3 neighbourhood) copied to wx/wy/ww (positions relative to that centre); returns their
    count. Only the quadrant sub-buckets overlapping the window are visited: half-cell k of an
    axis covers [k/2, (k+1)/2), i.e. quadrant q = k + 1 - 2d of the neighbour at offset
    d = floor((k + 1) / 2). A neighbour's two x-quadrants of one y-half are adjacent sub-buckets:
    when the window takes both, they are read as one range (same point order)."""
    reach = int(math.ceil(2.0 * radius))
    exact = 2.0 * radius == reach  # the half-cells tile the window: no per-point test
    n = 0
    for ky in range(-reach, reach):
        dy = (ky + 1) >> 1
        r = i + dy
        if r < 0 or r >= height:
            continue
        qy = ky + 1 - 2 * dy
        for dx in range((1 - reach) >> 1, (reach >> 1) + 1):
            c = j + dx
            if c < 0 or c >= width:
                continue
            # Half-cells kx = 2dx - 1 (quadrant 0) and 2dx (quadrant 1), clipped to the window.
            q0 = max(2 * dx - 1, -reach) + 1 - 2 * dx
            q1 = min(2 * dx, reach - 1) + 1 - 2 * dx
            b = 4 * (r * width + c) + 2 * qy
            for q in range(start[b + q0], start[b + q1 + 1]):
                x = px[q] + dx
                y = py[q] + dy
                if not exact and (x < -radius or x >= radius or y < -radius or y >= radius):
                    continue
                wx[n] = x
                wy[n] = y
                ww[n] = pw[q]
                n += 1
    return n


@njit(**_JIT)
def _plane_fit(n, p0, wx, wy, ww, min_points, tolerance, min_spread, slack_x, slack_y):
    """(PLANE_* status, inverse depth at the window centre) of the plane fitted to the n points
    wx/wy/ww[p0:p0 + n] (gathered by `_gather_window`, or a pixel's own bucket in place; an offset,
    not a slice: no array view per call)."""
    if n < min_points:
        return PLANE_FEW_POINTS, 0.0
    sx = sy = sw = sxx = sxy = syy = swx = swy = 0.0
    wmin = np.inf
    wmax = 0.0
    for q in range(n):
        x = np.float64(wx[p0 + q])
        y = np.float64(wy[p0 + q])
        w = ww[p0 + q]
        sx += x
        sy += y
        sw += w
        sxx += x * x
        sxy += x * y
        syy += y * y
        swx += w * x
        swy += w * y
        if w < wmin:  # w = 1/depth is finite and > 0: the same as min/max
            wmin = w
        if w > wmax:
            wmax = w
    # Centred normal equations: the intercept decouples, the 2x2 position covariance remains.
    mx = sx / n
    my = sy / n
    mw = sw / n
    cxx = sxx / n - mx * mx
    cxy = sxy / n - mx * my
    cyy = syy / n - my * my
    det = cxx * cyy - cxy * cxy
    half_tr = 0.5 * (cxx + cyy)
    lam_min = half_tr - math.sqrt(max(half_tr * half_tr - det, 0.0))
    if lam_min < min_spread * min_spread or det <= 0.0:
        return PLANE_COLLINEAR, 0.0
    cwx = swx / n - mw * mx
    cwy = swy / n - mw * my
    gx = (cyy * cwx - cxy * cwy) / det
    gy = (cxx * cwy - cxy * cwx) / det
    a = mw - gx * mx - gy * my
    if not (wmin <= a <= wmax):
        return PLANE_EXTRAPOLATED, 0.0
    # A point lies anywhere in its GT pixel, not at the centre used: allow the plane's change over
    # half a GT pixel, up to the tolerance again (a plane forced through a depth step has a large
    # false gradient: an uncapped allowance would let it pass).
    slack = abs(gx) * slack_x + abs(gy) * slack_y
    for q in range(n):
        w = ww[p0 + q]
        if abs(w - (a + gx * np.float64(wx[p0 + q]) + gy * np.float64(wy[p0 + q]))) > (
            tolerance * w + min(slack, tolerance * w)
        ):
            return PLANE_INCONSISTENT, 0.0
    return PLANE_FITTED, a


@njit(**_JIT)
def _touching(i, j, start, px, py, height, width, half_x, half_y, want_nearest):
    """(count, index of the nearest) of the points whose GT pixel overlaps footprint (i, j):
    position within half a source pixel of it, owned by the pixel or one of its 8 neighbours."""
    n = 0
    best = np.inf
    nearest = -1
    for r in range(max(i - 1, 0), min(i + 1, height - 1) + 1):
        for c in range(max(j - 1, 0), min(j + 1, width - 1) + 1):
            for q in range(start[4 * (r * width + c)], start[4 * (r * width + c) + 4]):
                x = px[q] + (c - j)
                y = py[q] + (r - i)
                if abs(x) >= 0.5 + half_x or abs(y) >= 0.5 + half_y:
                    continue
                n += 1
                if want_nearest:
                    r2 = x * x + y * y
                    if r2 < best:
                        best = r2
                        nearest = q
    return n, nearest


@njit(**_JIT)
def _neighbourhood_empty(i, j, start, height, width):
    """No point in pixel (i, j)'s 3x3 neighbourhood: three adjacent pixels of a row are one
    contiguous range of sub-buckets."""
    c0 = max(j - 1, 0)
    c1 = min(j + 1, width - 1)
    for r in range(max(i - 1, 0), min(i + 1, height - 1) + 1):
        if start[4 * (r * width + c1) + 4] != start[4 * (r * width + c0)]:
            return False
    return True


@njit(**_JIT)
def plane_pool(start, px, py, pw, affine, min_count, radius, min_points, tolerance, min_spread, out_depth, out_status):
    """Depth of every output pixel from the bucketed laser points (`bucket_points`).

    The samples of a pixel are the points whose GT pixel overlaps its footprint (position within
    half a source pixel of it). With >= min_count of them the pixel gets the local plane where
    valid, else the depth of the sample nearest its centre. Plane: inverse depth is affine in
    pinhole pixel coordinates on a plane, so 1/z = a + b*x + c*y is fitted (least squares,
    float64, positions relative to the pixel centre) and a is taken. Accepted only when well posed
    (>= min_points points, smallest position std >= min_spread output px), consistent (every
    residual within tolerance, plus the plane's change over half a GT pixel: one surface, not two
    across an edge) and not extrapolated (a within the points' range). The window
    [-rad, rad)^2 starts at the pixel's own footprint (rad 0.5) and widens by half a pixel up to
    +-radius (<= 1.5) while the points are too few, on a line or do not bracket the centre; an
    inconsistent window ends the search (a wider one holds the same points). Never fills a pixel
    without samples. out_status: PLANE_* codes.
    """
    height, width = out_depth.shape
    half_x = 0.5 / affine[0]  # half a source pixel in output px
    half_y = 0.5 / affine[2]
    # Window buffers: at most the 3x3 neighbourhood of the fullest pixel.
    most = 0
    for p in range(height * width):
        most = max(most, start[4 * p + 4] - start[4 * p])
    wx = np.empty(9 * most + 1, dtype=np.float64)
    wy = np.empty(9 * most + 1, dtype=np.float64)
    ww = np.empty(9 * most + 1, dtype=np.float64)
    for i in range(height):
        for j in range(width):
            own = start[4 * (i * width + j) + 4] - start[4 * (i * width + j)]
            if own < max(min_count, 1):  # own points are samples; count the neighbours' too
                if own == 0 and _neighbourhood_empty(i, j, start, height, width):
                    out_depth[i, j] = 0.0
                    out_status[i, j] = PLANE_HOLE
                    continue
                n, _ = _touching(i, j, start, px, py, height, width, half_x, half_y, False)
                if n == 0 or n < min_count:
                    out_depth[i, j] = 0.0
                    out_status[i, j] = PLANE_HOLE
                    continue
            # The 0.5 window holds exactly the pixel's own points: skip it when they are too few.
            rad = min(0.5, radius) if own >= min_points else min(1.0, radius)
            while True:
                if rad == 0.5:  # exactly the pixel's own points, contiguous: fit them in place
                    p0 = start[4 * (i * width + j)]
                    p1 = start[4 * (i * width + j) + 4]
                    status, a = _plane_fit(p1 - p0, p0, px, py, pw, min_points, tolerance, min_spread, half_x, half_y)
                else:
                    n = _gather_window(i, j, start, px, py, pw, height, width, rad, wx, wy, ww)
                    status, a = _plane_fit(n, 0, wx, wy, ww, min_points, tolerance, min_spread, half_x, half_y)
                if status == PLANE_FITTED or status == PLANE_INCONSISTENT or rad >= radius:
                    break
                rad = min(rad + 0.5, radius)
            out_status[i, j] = status
            if status == PLANE_FITTED:
                out_depth[i, j] = np.float32(1.0 / a)
            else:
                _, q = _touching(i, j, start, px, py, height, width, half_x, half_y, True)
                out_depth[i, j] = np.float32(1.0 / pw[q])  # == the GT value (float64 round trip)


@njit(**_JIT)
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


@njit(**_JIT)
def _box_weights(n_out, scale, offset, extent, max_taps, first, weights):
    """Area weights of output cells [o, o+1) → source interval [scale*o+offset, +scale) ∩ [0, extent)."""
    for o in range(n_out):
        s0 = scale * o + offset
        s1 = s0 + scale
        if s0 < 0.0:
            s0 = 0.0
        if s1 > extent:
            s1 = extent
        # Round-off coverage (e.g. 1e-15 px where a pad border meets the image) counts as none.
        covered = s1 - s0 > 1e-9 * scale
        first[o] = int(math.floor(s0)) if covered else 0
        total = 0.0
        for t in range(max_taps):
            lo = first[o] + t
            w = min(s1, lo + 1.0) - max(s0, float(lo))
            if not covered or w <= 1e-12:
                w = 0.0
            weights[o, t] = w
            total += w
        if total > 0.0:
            for t in range(max_taps):
                weights[o, t] /= total


@njit(**_JIT)
def _filter_row(src_row, first_x, w_x, row):
    """row[j] = sum over taps of w_x[j, t] * src_row[first_x[j] + t] (taps past the row's end
    skipped; zero weights add an exact 0). RGB gets scalar accumulators (the common case)."""
    src_w, nc = src_row.shape
    out_w, taps_x = w_x.shape
    for j in range(out_w):
        if nc == 3:
            r = g = b = 0.0
            for tx in range(taps_x):
                sx = first_x[j] + tx
                if sx < src_w:
                    wx = w_x[j, tx]
                    r += wx * src_row[sx, 0]
                    g += wx * src_row[sx, 1]
                    b += wx * src_row[sx, 2]
            row[j, 0] = r
            row[j, 1] = g
            row[j, 2] = b
        else:
            for c in range(nc):
                row[j, c] = 0.0
            for tx in range(taps_x):
                sx = first_x[j] + tx
                if sx < src_w:
                    for c in range(nc):
                        row[j, c] += w_x[j, tx] * src_row[sx, c]


@njit(**_JIT)
def area_resample(src, affine, extent, out):
    """Exact box-filter resample of an (h, w, c) uint8 image into `out` (H, W, c).

    Output pixel (i, j) averages the source area [ax*j+bx, ax*(j+1)+bx) x [ay*i+by, ...) in the
    source's corner-origin pixel units, with fractional coverage weights; `extent` = (w, h) of the
    source content (may be fractional: the last DCT-scaled pixel can be partial). Pixels with no
    coverage (pad mode) become 0.
    """
    ax, bx, ay, by = affine[0], affine[1], affine[2], affine[3]
    out_h, out_w, nc = out.shape
    taps_x = int(math.ceil(ax)) + 2
    taps_y = int(math.ceil(ay)) + 2
    first_x = np.empty(out_w, dtype=np.int64)
    w_x = np.empty((out_w, taps_x), dtype=np.float64)
    first_y = np.empty(out_h, dtype=np.int64)
    w_y = np.empty((out_h, taps_y), dtype=np.float64)
    _box_weights(out_w, ax, bx, extent[0], taps_x, first_x, w_x)
    _box_weights(out_h, ay, by, extent[1], taps_y, first_y, w_y)
    src_h = src.shape[0]
    # Horizontally filtered source rows, cached: neighbouring output rows share source rows
    # (slot = row % taps_y; the taps_y rows of one output row never collide).
    rows = np.empty((taps_y, out_w, nc), dtype=np.float64)
    row_of_slot = np.full(taps_y, -1, dtype=np.int64)
    acc = np.empty((out_w, nc), dtype=np.float64)
    for i in range(out_h):
        acc[:, :] = 0.0
        for ty in range(taps_y):
            wy = w_y[i, ty]
            sy = first_y[i] + ty
            if wy == 0.0 or sy >= src_h:
                continue
            slot = sy % taps_y
            row = rows[slot]
            if row_of_slot[slot] != sy:
                row_of_slot[slot] = sy
                _filter_row(src[sy], first_x, w_x, row)
            for j in range(out_w):
                for c in range(nc):
                    acc[j, c] += wy * row[j, c]
        for j in range(out_w):
            for c in range(nc):
                v = acc[j, c] + 0.5
                out[i, j, c] = 255 if v >= 255.0 else (0 if v < 0.0 else np.uint8(v))


@njit(**_JIT)
def _project_point(xyz_world, p, rot, trans, kmat, valid_rect, h, w):
    """Pixel (iu, iv) = floor(K [R|t] X + 0.5) and camera z of point p; iu = -1 when z <= 0 or the
    point falls outside valid_rect (output pixel-corner units) or the image."""
    X, Y, Z = xyz_world[p, 0], xyz_world[p, 1], xyz_world[p, 2]
    zc = rot[2, 0] * X + rot[2, 1] * Y + rot[2, 2] * Z + trans[2]
    if zc <= 0.0:
        return -1, -1, zc
    xc = rot[0, 0] * X + rot[0, 1] * Y + rot[0, 2] * Z + trans[0]
    yc = rot[1, 0] * X + rot[1, 1] * Y + rot[1, 2] * Z + trans[1]
    u = kmat[0, 0] * xc / zc + kmat[0, 1] * yc / zc + kmat[0, 2] + 0.5
    v = kmat[1, 1] * yc / zc + kmat[1, 2] + 0.5
    if u < valid_rect[0] or v < valid_rect[1] or u >= valid_rect[2] or v >= valid_rect[3]:
        return -1, -1, zc
    iu = int(math.floor(u))
    iv = int(math.floor(v))
    if iu < 0 or iv < 0 or iu >= w or iv >= h:
        return -1, -1, zc
    return iu, iv, zc


@njit(**_JIT)
def splat_min_depth(xyz_world, rot, trans, kmat, valid_rect, zbuf):
    """Project world points with X_cam = R X + t and OpenCV pixel-centre K; keep the min z per pixel.

    Pixel index = floor(x + 0.5). Points with z <= 0 or outside valid_rect (x0, y0, x1, y1, in
    output pixel-corner units: the content region of the output) are skipped.
    """
    h, w = zbuf.shape
    for p in range(xyz_world.shape[0]):
        iu, iv, zc = _project_point(xyz_world, p, rot, trans, kmat, valid_rect, h, w)
        if iu < 0:
            continue
        if zc < zbuf[iv, iu]:
            zbuf[iv, iu] = zc


@njit(**_JIT)
def sparse_visible_depth(xyz_world, rot, trans, kmat, valid_rect, zbuf, radius, tol, out):
    """Write the observed points that are not occluded into `out` (min z per pixel, 0 = none).

    A point is occluded when any z-buffer pixel in its (2r+1)^2 neighbourhood is nearer than
    z / (1 + tol). Returns (kept, occluded) counts.
    """
    h, w = zbuf.shape
    kept = 0
    occluded = 0
    for p in range(xyz_world.shape[0]):
        iu, iv, zc = _project_point(xyz_world, p, rot, trans, kmat, valid_rect, h, w)
        if iu < 0:
            continue
        limit = zc / (1.0 + tol)
        hidden = False
        for dv in range(-radius, radius + 1):
            for du in range(-radius, radius + 1):
                yy = iv + dv
                xx = iu + du
                if 0 <= yy < h and 0 <= xx < w and zbuf[yy, xx] < limit:
                    hidden = True
        if hidden:
            occluded += 1
            continue
        kept += 1
        if out[iv, iu] == 0.0 or zc < out[iv, iu]:
            out[iv, iu] = zc
    return kept, occluded
