"""Footprint-sample pooling of laser GT (`--pooling nearest|median|min`): k x k samples across each
output pixel, looked up in the distorted GT through the thin-prism distortion grid."""

from __future__ import annotations

import numpy as np

from dataengine.kernels._jit import kernel
from dataengine.kernels.codes import Pooling
from dataengine.kernels.prism import grid_bilinear

# The kernel's pooling codes (plain ints: numba compiles them in as constants).
_NEAREST = int(Pooling.NEAREST)
_MEDIAN = int(Pooling.MEDIAN)


@kernel
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


@kernel
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


@kernel
def laser_depth_pool(
    depth, mask, grid_x, grid_y, spacing, affine, src_size, k, pooling, min_count, out_depth, out_count
):
    """Pool the distorted-frame laser GT into every output pixel.

    For output pixel (i, j), k x k stratified samples at undistorted COLMAP coordinates
    x = ax*(j + (s+0.5)/k) + bx, y = ay*(i + (r+0.5)/k) + by are mapped through the thin-prism
    grid into the distorted GT and looked up with floor (the GT writer's pixel rule). Samples
    outside either image, non-finite or <= 0 depth, and mask != 0 (values 1 and 2) are dropped.
    With >= min_count valid samples the pixel gets, by `pooling` (a `codes.Pooling` value): NEAREST
    = the valid sample nearest the footprint centre, MEDIAN = their lower median, MIN = their
    minimum (PLANE is `plane.plane_pool`). `mask` may be (0, 0) for "no mask file". Returns the
    number of NaN samples met.
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
                dx, dy = grid_bilinear(x, y, grid_x, grid_y, inv_spacing)
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
                if pooling == _NEAREST and n >= min_count:
                    break  # samples come nearest-first: buf[0] is the answer
            out_count[i, j] = n
            if n >= min_count and n > 0:
                if pooling == _NEAREST:
                    out_depth[i, j] = buf[0]
                elif pooling == _MEDIAN:
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
