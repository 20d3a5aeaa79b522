"""Point splatting into the output camera: a z-buffer of all the 3-D points and the observed points
it does not occlude (`--depth sparse`)."""

from __future__ import annotations

import math

from dataengine.kernels._jit import kernel


@kernel
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


@kernel
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


@kernel
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
