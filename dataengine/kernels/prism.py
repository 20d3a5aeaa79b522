"""ETH3D's THIN_PRISM_FISHEYE camera model and its maps between the distorted and the undistorted
image: exact projection, grids of exact values every `spacing` px in both directions, and the
bilinear lookup between grid nodes."""

from __future__ import annotations

import math

import numpy as np

from dataengine.kernels._jit import kernel


@kernel
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


@kernel
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


@kernel
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


@kernel
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


@kernel
def grid_bilinear(x, y, grid_x, grid_y, inv_spacing):
    """(x, y) through a map sampled at grid nodes 1 / inv_spacing px apart, bilinear between them:
    undistorted → distorted COLMAP pixel with `distortion_grid`'s, the inverse with
    `undistortion_grid`'s."""
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
