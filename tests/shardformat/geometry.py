"""Cross-view consistency of ground truth, the check every recipe's output must pass in its own frame:
unproject frame i, move the points into camera j, project, and compare with frame j's depth there."""

from __future__ import annotations

import numpy as np


def cross_view_errors(depth_i, K_i, c2w_i, depth_j, K_j, w2c_j) -> np.ndarray:
    """Relative depth errors |z_proj − depth_j| / depth_j at frame i's known pixels that land between four known
    pixels of frame j (bilinear, OpenCV centres). NaN or 0 marks unknown depth in either frame."""
    depth_i, depth_j = (np.where(np.isfinite(d) & (d > 0), d, np.nan).astype(np.float64) for d in (depth_i, depth_j))
    h, w = depth_i.shape
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    known = np.isfinite(depth_i)
    z = depth_i[known]
    cam = np.stack([(u[known] - K_i[0, 2]) / K_i[0, 0] * z, (v[known] - K_i[1, 2]) / K_i[1, 1] * z, z], -1)
    T = np.asarray(w2c_j, np.float64) @ np.asarray(c2w_i, np.float64)
    pj = cam @ T[:3, :3].T + T[:3, 3]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = pj[:, 0] / pj[:, 2] * K_j[0, 0] + K_j[0, 2]
        y = pj[:, 1] / pj[:, 2] * K_j[1, 1] + K_j[1, 2]
    hj, wj = depth_j.shape
    inside = (pj[:, 2] > 0) & (x >= 0) & (x < wj - 1) & (y >= 0) & (y < hj - 1)
    x, y, pj = x[inside], y[inside], pj[inside]
    # bilinear between the four pixel centres around the point: only where all four are known (never across a hole)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    dj = (
        depth_j[y0, x0] * (1 - fx) * (1 - fy)
        + depth_j[y0, x0 + 1] * fx * (1 - fy)
        + depth_j[y0 + 1, x0] * (1 - fx) * fy
        + depth_j[y0 + 1, x0 + 1] * fx * fy
    )
    ok = np.isfinite(dj)
    return np.abs(pj[ok, 2] - dj[ok]) / dj[ok]


def consistent(errors: np.ndarray, median: float = 2e-4, within: float = 0.9) -> bool:
    """Median relative error <= `median` and at least `within` of the pixels within 1 % (occlusions and
    depth edges account for the rest)."""
    return errors.size > 100 and float(np.median(errors)) <= median and float(np.mean(errors < 0.01)) >= within
