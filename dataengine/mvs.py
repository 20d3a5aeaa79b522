"""COLMAP dense depth maps: the binary file format, the multi-view consistency filter, and pooling
into the output camera.

File format (COLMAP's mvs/mat.h, read_write_dense.py): an ASCII header `width&height&channels&`
then float32 little-endian values in column-major (x fastest within a channel... i.e. for one
channel exactly a row-major (height, width) array). 0 = no depth.

Consistency (after COLMAP's stereo fusion): a reference pixel is kept only when its 3-D point,
projected into at least `min_views` other views, lands on a depth that agrees within
`depth_tolerance` (relative) and whose own back-projection returns to the reference pixel within
`reproj_px` (reference pixels). PatchMatch's isolated wrong depths fail both tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataengine.errors import BadInputError
from dataengine.kernels.consistency import count_consistent


@dataclass(frozen=True)
class MvsConfig:
    min_views: int = 2  # other views that must agree
    depth_tolerance: float = 0.01  # relative, COLMAP fusion's max_depth_error
    reproj_px: float = 2.0  # COLMAP fusion's max_reproj_error (pixels of the reference map)
    neighbours: int = 8  # most covisible views checked
    prefer: str = "geometric"  # geometric (PatchMatch's consistent pass) before photometric

    def __post_init__(self):
        if self.min_views < 0 or self.depth_tolerance <= 0 or self.reproj_px <= 0 or self.neighbours < 0:
            raise ValueError("min_views >= 0, depth_tolerance > 0, reproj_px > 0 and neighbours >= 0 are required")


def read_depth_map(path: Path, invalid: list | None = None) -> np.ndarray:
    """(height, width) float32 (channel 0 of a multi-channel map); clear errors on bad files. NaN,
    infinite and negative values become 0 (no depth); their count is appended to `invalid` (the build
    records them as a warning)."""
    path = Path(path)
    data = path.read_bytes()
    parts = data.split(b"&", 3)
    if len(parts) < 4:
        raise BadInputError(f"{path}: not a COLMAP depth map (expected a 'width&height&channels&' header)", path)
    try:
        width, height, channels = (int(p) for p in parts[:3])
    except ValueError:
        raise BadInputError(f"{path}: bad COLMAP depth map header {data[:40]!r}", path) from None
    offset = len(parts[0]) + len(parts[1]) + len(parts[2]) + 3
    expected = width * height * channels * 4
    if width <= 0 or height <= 0 or channels <= 0 or len(data) - offset != expected:
        raise BadInputError(
            f"{path}: header says {width}x{height}x{channels} float32 ({expected} "
            f"bytes) but {len(data) - offset} bytes follow",
            path,
        )
    values = np.frombuffer(data, dtype="<f4", offset=offset)
    arr = values.reshape(channels, height, width)[0]  # column-major (w, h, c) = C-order (c, h, w)
    arr = np.array(arr, dtype=np.float32)
    bad = ~np.isfinite(arr) | (arr < 0)
    if invalid is not None:
        invalid.append(int(bad.sum()))
    if bad.any():
        arr[bad] = 0.0  # COLMAP writes 0 for "none"; anything else non-positive is unusable too
    return arr


def write_depth_map(path: Path, depth: np.ndarray) -> None:
    """Write one channel in COLMAP's format (header, then column-major float32)."""
    depth = np.asarray(depth, dtype="<f4")
    h, w = depth.shape
    with open(path, "wb") as fh:
        fh.write(f"{w}&{h}&1&".encode())
        fh.write(np.ascontiguousarray(depth).tobytes())


@dataclass
class DepthView:
    """One depth map with its camera: K corner-origin (COLMAP) scaled to the map, world-to-camera."""

    depth: np.ndarray
    K: np.ndarray
    R: np.ndarray
    t: np.ndarray


def consistency_filter(
    ref: DepthView, others: list[DepthView], cfg: MvsConfig, rect: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, dict]:
    """The reference depth with every pixel fewer than cfg.min_views others confirm set to 0.
    rect (u0, v0, u1, v1): only those pixels are checked (the part the output shows); the rest
    becomes 0 too."""
    h, w = ref.depth.shape
    rect = np.array((0, 0, w, h) if rect is None else rect, dtype=np.int64)
    rect[[0, 2]] = np.clip(rect[[0, 2]], 0, w)
    rect[[1, 3]] = np.clip(rect[[1, 3]], 0, h)
    counts = np.zeros(ref.depth.shape, dtype=np.int32)

    def f64(a):
        return np.ascontiguousarray(a, dtype=np.float64)

    for o in others:
        count_consistent(
            ref.depth,
            f64(ref.K),
            f64(ref.R),
            f64(ref.t),
            o.depth,
            f64(o.K),
            f64(o.R),
            f64(o.t),
            float(cfg.depth_tolerance),
            float(cfg.reproj_px),
            rect,
            cfg.min_views,
            counts,
        )
    valid = np.zeros(ref.depth.shape, dtype=bool)
    valid[rect[1] : rect[3], rect[0] : rect[2]] = ref.depth[rect[1] : rect[3], rect[0] : rect[2]] > 0
    keep = valid & (counts >= cfg.min_views)
    out = np.where(keep, ref.depth, np.float32(0.0)).astype(np.float32)
    n_valid = int(valid.sum())
    return out, {
        "mvs_valid_fraction": round(n_valid / ref.depth.size, 6),
        "mvs_kept_fraction": round(int(keep.sum()) / n_valid, 6) if n_valid else 0.0,
        "mvs_views_checked": len(others),
    }


def pool_depth(
    depth: np.ndarray,
    affine: np.ndarray,
    out_h: int,
    out_w: int,
    min_count: int = 1,
    plane_radius: float = 1.5,
    plane_min_points: int = 5,
    plane_tolerance: float = 0.005,
    plane_min_spread: float = 0.15,
) -> np.ndarray:
    """A (pinhole) depth map into the output camera with the laser path's plane pooling
    (kernels.laser.laser_points → kernels.plane.bucket_points → plane_pool): affine maps output
    corner coordinates to the map's corner coordinates; the map's own pixels are the points
    (identity grid)."""
    from dataengine.kernels.laser import PointBuffers, laser_points
    from dataengine.kernels.plane import bucket_points, plane_pool

    h, w = depth.shape
    spacing = 8.0
    gx = np.arange(int(w // spacing) + 2, dtype=np.float64) * spacing
    gy = np.arange(int(h // spacing) + 2, dtype=np.float64) * spacing
    ux = np.ascontiguousarray(np.broadcast_to(gx[None, :], (len(gy), len(gx))))
    uy = np.ascontiguousarray(np.broadcast_to(gy[:, None], (len(gy), len(gx))))
    n_max = int(np.count_nonzero(depth)) + 1
    buffers = PointBuffers(
        np.empty(n_max, np.int32), np.empty(n_max, np.float32), np.empty(n_max, np.float32), np.empty(n_max, np.float32)
    )
    owner, pos_x, pos_y, point_depth = buffers
    affine = np.ascontiguousarray(affine, dtype=np.float64)
    n = laser_points(
        np.ascontiguousarray(depth, dtype=np.float32),
        np.zeros((0, 0), np.uint8),
        ux,
        uy,
        buffers,
        spacing=spacing,
        affine=affine,
        src_size=np.array([w, h], dtype=np.float64),
        out_shape=(out_h, out_w),
    ).n_points
    start = np.empty(4 * out_h * out_w + 1, np.int32)
    records = np.empty((max(n, 1), 2), np.float64)
    pw = records[:, 0]
    px = records.view(np.float32)[:, 2]
    py = records.view(np.float32)[:, 3]
    bucket_points(owner, pos_x, pos_y, point_depth, n, start, px, py, pw)
    out = np.empty((out_h, out_w), dtype=np.float32)
    status = np.empty((out_h, out_w), dtype=np.uint8)
    plane_pool(
        start,
        px,
        py,
        pw,
        affine,
        min_count,
        float(plane_radius),
        plane_min_points,
        float(plane_tolerance),
        float(plane_min_spread),
        out,
        status,
    )
    return out
