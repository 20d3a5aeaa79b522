"""Shared inputs of the kernel and depth tests: a real ETH3D thin-prism calibration, a small strongly
distorted camera pair and GT of a known slanted plane (not a test module)."""

from __future__ import annotations

import numpy as np

from dataengine import camera
from dataengine.camera import Camera
from dataengine.eth3d import reference_camera

PRISM = reference_camera().params  # a real ETH3D THIN_PRISM_FISHEYE calibration (courtyard camera 0)


# A small, strongly distorted camera pair (120x80 distorted, 124x83 undistorted) for plane pooling.
SMALL_PRISM = np.r_[68.2, 68.2, 60.8, 40.3, PRISM[4:]]
SMALL_PIN = np.array([68.2, 68.2, 62.4, 41.4])
SMALL_CAMS = (Camera(0, "PINHOLE", 124, 83, SMALL_PIN), Camera(0, "THIN_PRISM_FISHEYE", 120, 80, SMALL_PRISM))
PLANE = np.array([0.08, 0.05, 0.2])  # inverse depth 1/z = 0.2 + 0.08 u + 0.05 v: z from ~3 to ~10 m


def gt_of_inverse_depth(inv_depth, density, seed):
    """Laser-like GT of the small camera: inverse depth f(u, v) at the distorted pixel centres
    (pycolmap-independent numpy unprojection), `density` of the pixels valid, the rest +inf."""
    ys, xs = np.mgrid[0:80, 0:120] + 0.5
    uv = camera.thin_prism_unproject(np.c_[xs.ravel(), ys.ravel()], SMALL_PRISM)
    depth = (1.0 / inv_depth(uv[:, 0], uv[:, 1])).reshape(80, 120).astype(np.float32)
    depth[np.random.default_rng(seed).random(depth.shape) >= density] = np.inf
    return depth


def output_rays(geom):
    """Pinhole-normalised (u, v) of the output pixel centres."""
    x = geom.ax * (np.arange(geom.width) + 0.5) + geom.bx
    y = geom.ay * (np.arange(geom.height) + 0.5) + geom.by
    return np.meshgrid((x - SMALL_PIN[2]) / SMALL_PIN[0], (y - SMALL_PIN[3]) / SMALL_PIN[1])


def truth_at_output_centres(geom, inv_depth):
    """Depth at the undistorted output pixel centres (the pinhole of the same camera)."""
    return 1.0 / inv_depth(*output_rays(geom))


def small_plane_pool(depth, mask, geom, **kw):
    from dataengine.depth import LaserDepthConfig, plane_depth

    cfg = LaserDepthConfig(grid_spacing=1.0, **kw)
    plane = plane_depth(depth, mask, *SMALL_CAMS, geom, cfg)
    # The same pass counts the whole map, also the columns the crop never reaches.
    assert plane.n_valid == np.count_nonzero(np.isfinite(depth) & (depth > 0))
    assert plane.n_nan == np.count_nonzero(np.isnan(depth))
    assert plane.n_masked == np.count_nonzero(mask)
    return plane.depth, plane.status
