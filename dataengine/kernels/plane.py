"""Plane pooling (`--pooling plane`): the laser points of `laser.laser_points` bucketed by output
pixel, then per pixel a local plane in inverse depth fitted to the points around it, or the point
nearest its centre. Status codes: `codes.PLANE_*`."""

from __future__ import annotations

import math

import numpy as np

from dataengine.kernels._jit import kernel
from dataengine.kernels.codes import (
    PLANE_COLLINEAR,
    PLANE_EXTRAPOLATED,
    PLANE_FEW_POINTS,
    PLANE_FITTED,
    PLANE_HOLE,
    PLANE_INCONSISTENT,
)


@kernel
def bucket_points(owner, pos_x, pos_y, point_depth, n, start, px, py, pw):
    """Counting sort of the first n points by owner (= 4 * flat pixel + quadrant, see
    `laser.laser_points`): sub-bucket b holds px/py/pw[start[b]:start[b+1]], so pixel p's points are
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


@kernel
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


@kernel
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


@kernel
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


@kernel
def _neighbourhood_empty(i, j, start, height, width):
    """No point in pixel (i, j)'s 3x3 neighbourhood: three adjacent pixels of a row are one
    contiguous range of sub-buckets."""
    c0 = max(j - 1, 0)
    c1 = min(j + 1, width - 1)
    for r in range(max(i - 1, 0), min(i + 1, height - 1) + 1):
        if start[4 * (r * width + c1) + 4] != start[4 * (r * width + c0)]:
            return False
    return True


@kernel
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
