"""Image resampling into the output frame: the exact box (area) filter of a photo decoded at a DCT
scale (ETH3D's undistorted photos), and the bilinear footprint average through a per-pixel sample
map (COLMAP photos of any camera model, `dataengine.undistort`)."""

from __future__ import annotations

import math

import numpy as np

from dataengine.kernels._jit import kernel


@kernel
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


@kernel
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


@kernel
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


@kernel
def sample_footprints(src, coords, out, covered):
    """out[i, j] = mean of the bilinear samples coords[i, j, :] of src (h, w, 3) uint8 that lie
    on the image (within half a pixel of its outer pixel centres: edge-clamped); covered[i, j] =
    fraction of samples on the image (0 = a blank pixel, black)."""
    h, w = src.shape[0], src.shape[1]
    H, W, S = coords.shape[0], coords.shape[1], coords.shape[2]
    for i in range(H):
        for j in range(W):
            r = 0.0
            g = 0.0
            b = 0.0
            n = 0
            for s in range(S):
                x = coords[i, j, s, 0]
                y = coords[i, j, s, 1]
                if not (x >= -0.5 and y >= -0.5 and x <= w - 0.5 and y <= h - 0.5):
                    continue
                x = min(max(x, 0.0), w - 1.0)
                y = min(max(y, 0.0), h - 1.0)
                x0 = min(int(x), w - 2) if w > 1 else 0
                y0 = min(int(y), h - 2) if h > 1 else 0
                fx = x - x0
                fy = y - y0
                x1 = min(x0 + 1, w - 1)
                y1 = min(y0 + 1, h - 1)
                w00 = (1.0 - fx) * (1.0 - fy)
                w01 = fx * (1.0 - fy)
                w10 = (1.0 - fx) * fy
                w11 = fx * fy
                r += w00 * src[y0, x0, 0] + w01 * src[y0, x1, 0] + w10 * src[y1, x0, 0] + w11 * src[y1, x1, 0]
                g += w00 * src[y0, x0, 1] + w01 * src[y0, x1, 1] + w10 * src[y1, x0, 1] + w11 * src[y1, x1, 1]
                b += w00 * src[y0, x0, 2] + w01 * src[y0, x1, 2] + w10 * src[y1, x0, 2] + w11 * src[y1, x1, 2]
                n += 1
            covered[i, j] = n / S
            if n == 0:
                out[i, j, 0] = 0
                out[i, j, 1] = 0
                out[i, j, 2] = 0
                continue
            out[i, j, 0] = np.uint8(min(255.0, r / n + 0.5))
            out[i, j, 1] = np.uint8(min(255.0, g / n + 0.5))
            out[i, j, 2] = np.uint8(min(255.0, b / n + 0.5))
