"""Every numba kernel of the engine (cache=True, nogil=True so frame workers run in parallel threads).

Big buffers are allocated by the callers in numpy and passed in: numba's own np.full is ~4x slower
at 24-megapixel size (engine-performance-notes §3.2).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = dict(cache=True, nogil=True, fastmath=False)


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
def laser_depth_pool(depth, mask, grid_x, grid_y, spacing, affine, src_size, k, pooling,
                     min_count, out_depth, out_count):
    """Pool the distorted-frame laser GT into every output pixel.

    For output pixel (i, j), k x k stratified samples at undistorted COLMAP coordinates
    x = ax*(j + (s+0.5)/k) + bx, y = ay*(i + (r+0.5)/k) + by are mapped through the thin-prism
    grid into the distorted GT and looked up with floor (the GT writer's pixel rule). Samples
    outside either image, non-finite or <= 0 depth, and mask != 0 (values 1 and 2) are dropped.
    With >= min_count valid samples the pixel gets, by `pooling`: 0 = the valid sample nearest
    the footprint centre (the best estimate of the depth at the pixel centre), 1 = their lower
    median, 2 = their minimum. `mask` may be (0, 0) for "no mask file". Returns the number of NaN
    samples met.
    """
    ax, bx, ay, by = affine[0], affine[1], affine[2], affine[3]
    src_w, src_h = src_size[0], src_size[1]
    dist_h, dist_w = depth.shape
    has_mask = mask.shape[0] > 0
    gh, gw = grid_x.shape
    buf = np.empty(k * k, dtype=np.float32)
    # Sample offsets inside the footprint, nearest to its centre first (ties: row-major order).
    offsets = np.empty((k * k, 2), dtype=np.float64)
    dist = np.empty(k * k, dtype=np.float64)
    for q in range(k * k):
        offsets[q, 0] = (q // k + 0.5) / k
        offsets[q, 1] = (q % k + 0.5) / k
        dist[q] = (offsets[q, 0] - 0.5) ** 2 + (offsets[q, 1] - 0.5) ** 2
    order = np.argsort(dist, kind="mergesort")
    n_nan = 0
    inv_spacing = 1.0 / spacing
    for i in range(out_depth.shape[0]):
        for j in range(out_depth.shape[1]):
            n = 0
            for q in range(k * k):
                y = ay * (i + offsets[order[q], 0]) + by
                if y < 0.0 or y >= src_h:
                    continue
                fy = y * inv_spacing
                gy0 = min(int(fy), gh - 2)
                wy = fy - gy0
                x = ax * (j + offsets[order[q], 1]) + bx
                if x < 0.0 or x >= src_w:
                    continue
                fx = x * inv_spacing
                gx0 = min(int(fx), gw - 2)
                wx = fx - gx0
                dx = ((grid_x[gy0, gx0] * (1 - wx) + grid_x[gy0, gx0 + 1] * wx) * (1 - wy)
                      + (grid_x[gy0 + 1, gx0] * (1 - wx) + grid_x[gy0 + 1, gx0 + 1] * wx) * wy)
                dy = ((grid_y[gy0, gx0] * (1 - wx) + grid_y[gy0, gx0 + 1] * wx) * (1 - wy)
                      + (grid_y[gy0 + 1, gx0] * (1 - wx) + grid_y[gy0 + 1, gx0 + 1] * wx) * wy)
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
def scan_depth(depth):
    """(NaN count, valid count = finite and > 0) of a raw GT depth map, in one pass."""
    n_nan = 0
    n_valid = 0
    flat = depth.reshape(-1)
    for i in range(flat.size):
        d = flat[i]
        if d != d:
            n_nan += 1
        elif d > 0.0 and d < np.inf:
            n_valid += 1
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
    src_h, src_w = src.shape[0], src.shape[1]
    row = np.empty((out_w, nc), dtype=np.float64)
    acc = np.empty((out_w, nc), dtype=np.float64)
    for i in range(out_h):
        acc[:, :] = 0.0
        for ty in range(taps_y):
            wy = w_y[i, ty]
            sy = first_y[i] + ty
            if wy == 0.0 or sy >= src_h:
                continue
            for j in range(out_w):
                for c in range(nc):
                    row[j, c] = 0.0
                for tx in range(taps_x):
                    wx = w_x[j, tx]
                    sx = first_x[j] + tx
                    if wx == 0.0 or sx >= src_w:
                        continue
                    for c in range(nc):
                        row[j, c] += wx * src[sy, sx, c]
            for j in range(out_w):
                for c in range(nc):
                    acc[j, c] += wy * row[j, c]
        for j in range(out_w):
            for c in range(nc):
                v = acc[j, c] + 0.5
                out[i, j, c] = 255 if v >= 255.0 else (0 if v < 0.0 else np.uint8(v))


@njit(**_JIT)
def splat_min_depth(xyz_world, rot, trans, kmat, valid_rect, zbuf):
    """Project world points with X_cam = R X + t and OpenCV pixel-centre K; keep the min z per pixel.

    Pixel index = floor(x + 0.5). Points with z <= 0 or outside valid_rect (x0, y0, x1, y1, in
    output pixel-corner units: the content region of the output) are skipped.
    """
    h, w = zbuf.shape
    for p in range(xyz_world.shape[0]):
        X, Y, Z = xyz_world[p, 0], xyz_world[p, 1], xyz_world[p, 2]
        zc = rot[2, 0] * X + rot[2, 1] * Y + rot[2, 2] * Z + trans[2]
        if zc <= 0.0:
            continue
        xc = rot[0, 0] * X + rot[0, 1] * Y + rot[0, 2] * Z + trans[0]
        yc = rot[1, 0] * X + rot[1, 1] * Y + rot[1, 2] * Z + trans[1]
        u = kmat[0, 0] * xc / zc + kmat[0, 1] * yc / zc + kmat[0, 2] + 0.5
        v = kmat[1, 1] * yc / zc + kmat[1, 2] + 0.5
        if u < valid_rect[0] or v < valid_rect[1] or u >= valid_rect[2] or v >= valid_rect[3]:
            continue
        iu = int(math.floor(u))
        iv = int(math.floor(v))
        if iu < 0 or iv < 0 or iu >= w or iv >= h:
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
        X, Y, Z = xyz_world[p, 0], xyz_world[p, 1], xyz_world[p, 2]
        zc = rot[2, 0] * X + rot[2, 1] * Y + rot[2, 2] * Z + trans[2]
        if zc <= 0.0:
            continue
        xc = rot[0, 0] * X + rot[0, 1] * Y + rot[0, 2] * Z + trans[0]
        yc = rot[1, 0] * X + rot[1, 1] * Y + rot[1, 2] * Z + trans[1]
        u = kmat[0, 0] * xc / zc + kmat[0, 1] * yc / zc + kmat[0, 2] + 0.5
        v = kmat[1, 1] * yc / zc + kmat[1, 2] + 0.5
        if u < valid_rect[0] or v < valid_rect[1] or u >= valid_rect[2] or v >= valid_rect[3]:
            continue
        iu = int(math.floor(u))
        iv = int(math.floor(v))
        if iu < 0 or iv < 0 or iu >= w or iv >= h:
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
