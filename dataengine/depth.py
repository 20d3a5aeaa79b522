"""Depth supervision at output resolution: ETH3D laser GT (default) or z-buffered COLMAP points.

Laser: the raw float32 GT lives in the DISTORTED (THIN_PRISM_FISHEYE) geometry; each output pixel
pools k x k stratified samples of its footprint in the undistorted image, mapped through the same
camera's thin-prism model into the GT (floor lookup, mask values 1/2 excluded; the valid sample
nearest the footprint centre, or their lower median or min, with a minimum count). Never
interpolates across holes: every output value is one real laser sample.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataengine.colmap import BadInputError, Camera
from dataengine.images import OutputGeometry

POOLING = ("nearest", "median", "min")  # kernel codes 0, 1, 2


@dataclass(frozen=True)
class LaserDepthConfig:
    samples: int = 8  # k: k x k samples per output pixel footprint
    # nearest: the valid sample nearest the footprint centre (most accurate at the pixel centre);
    # median: their lower median (a real sample, robust to outliers); min: the nearest surface.
    pooling: str = "nearest"
    min_count: int = 1  # valid samples needed to supervise a pixel
    grid_spacing: float = 8.0  # undistorted px between exact thin-prism evaluations


@dataclass(frozen=True)
class SparseDepthConfig:
    occlusion_radius: int = 1  # (2r+1)^2 neighbourhood of the z-buffer test
    occlusion_tolerance: float = 0.05  # occluded when z > zbuf * (1 + tol)


_local = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Per-thread reusable buffer (97.5 MB per GT map: allocating it per frame costs more than
    the depth kernel itself)."""
    buf = getattr(_local, name, None)
    if buf is None or buf.shape != shape or buf.dtype != dtype:
        buf = np.empty(shape, dtype=dtype)
        setattr(_local, name, buf)
    return buf


def read_gt_depth(path: Path, width: int, height: int) -> np.ndarray:
    """Raw little-endian float32 (height, width) GT; a clear error on a wrong file size or NaN."""
    path = Path(path)
    expected = width * height * 4
    size = os.path.getsize(path)
    if size != expected:
        raise BadInputError(f"{path}: depth file has {size} bytes, expected {expected} "
                            f"(= {width}x{height} float32 of the distorted camera)", path)
    buf = _buffer("gt_depth", (height, width), np.dtype("<f4"))
    with open(path, "rb", buffering=0) as fh:
        n = fh.readinto(memoryview(buf).cast("B"))
    if n != expected:
        raise BadInputError(f"{path}: short read ({n} of {expected} bytes)", path)
    return buf


def read_mask(path: Path | None, width: int, height: int) -> np.ndarray:
    """ETH3D mask PNG (0 = fine, 1 = bad colour, 2 = bad geometry) or (0, 0) when there is none."""
    if path is None:
        return np.zeros((0, 0), dtype=np.uint8)
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.size != (width, height):
                raise BadInputError(f"{path}: mask is {im.size[0]}x{im.size[1]}, expected "
                                    f"{width}x{height} (the distorted image size)", path)
            if im.mode not in ("L", "P", "1"):
                raise BadInputError(f"{path}: mask must be 8-bit single channel, got mode {im.mode}",
                                    path)
            mask = np.asarray(im.convert("L") if im.mode == "1" else im, dtype=np.uint8)
    except (OSError, SyntaxError) as exc:
        raise BadInputError(f"{path}: unreadable mask PNG ({exc})", path) from None
    if mask.max(initial=0) > 2:
        raise BadInputError(f"{path}: mask values must be 0, 1 or 2, found {int(mask.max())}", path)
    return mask


_grid_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_grid_lock = threading.Lock()


def distortion_grid_for(pinhole: Camera, prism: Camera, spacing: float):
    """Cached per (camera pair): thin-prism distorted position of every grid node."""
    from dataengine.kernels import distortion_grid

    key = (pinhole.width, pinhole.height, tuple(pinhole.params), tuple(prism.params), spacing)
    with _grid_lock:
        hit = _grid_cache.get(key)
    if hit is not None:
        return hit
    gw = int(pinhole.width // spacing) + 2
    gh = int(pinhole.height // spacing) + 2
    gx = np.empty((gh, gw), dtype=np.float64)
    gy = np.empty((gh, gw), dtype=np.float64)
    distortion_grid(pinhole.params.astype(np.float64), prism.params.astype(np.float64),
                    float(spacing), gx, gy)
    with _grid_lock:
        if len(_grid_cache) > 64:
            _grid_cache.clear()
        _grid_cache[key] = (gx, gy)
    return gx, gy


def laser_depth(depth_path: Path, mask_path: Path | None, pinhole: Camera, prism: Camera,
                geom: OutputGeometry, cfg: LaserDepthConfig) -> tuple[np.ndarray, dict]:
    """(H, W) float32 metres (0 = no supervision) and source statistics."""
    from dataengine.kernels import laser_depth_pool, scan_depth

    if prism.model != "THIN_PRISM_FISHEYE":
        raise BadInputError(f"camera {prism.camera_id} of dslr_calibration_jpg must be "
                            f"THIN_PRISM_FISHEYE, got {prism.model}")
    if cfg.pooling not in POOLING:
        raise ValueError(f"pooling must be one of {POOLING}, got {cfg.pooling!r}")
    gt = read_gt_depth(depth_path, prism.width, prism.height)
    n_nan, n_valid = scan_depth(gt)
    if n_nan:
        raise BadInputError(f"{depth_path}: {n_nan} NaN values in the GT depth (expected +inf for "
                            f"'no depth')", depth_path)
    mask = read_mask(mask_path, prism.width, prism.height)
    gx, gy = distortion_grid_for(pinhole, prism, cfg.grid_spacing)
    out = np.empty((geom.height, geom.width), dtype=np.float32)
    count = np.empty((geom.height, geom.width), dtype=np.uint16)
    laser_depth_pool(gt, mask, gx, gy, float(cfg.grid_spacing), geom.affine,
                     np.array([pinhole.width, pinhole.height], dtype=np.float64), cfg.samples,
                     POOLING.index(cfg.pooling), cfg.min_count, out, count)
    stats = {"source_valid_fraction": round(n_valid / gt.size, 6),
             "masked_fraction": round(float(np.count_nonzero(mask)) / mask.size, 6)
             if mask.size else 0.0}
    return out, stats


def sparse_depth(points_xyz: np.ndarray, observed_xyz: np.ndarray, rotation: np.ndarray,
                 translation: np.ndarray, kmat: np.ndarray, geom: OutputGeometry,
                 cfg: SparseDepthConfig) -> tuple[np.ndarray, dict]:
    """Observed COLMAP points that survive a z-buffer occlusion test over all points."""
    from dataengine.kernels import sparse_visible_depth, splat_min_depth

    rect = geom.content_rect
    zbuf = np.full((geom.height, geom.width), np.inf, dtype=np.float64)
    rot = np.ascontiguousarray(rotation, dtype=np.float64)
    trans = np.ascontiguousarray(translation, dtype=np.float64)
    kmat = np.ascontiguousarray(kmat, dtype=np.float64)
    splat_min_depth(np.ascontiguousarray(points_xyz, dtype=np.float64), rot, trans, kmat, rect, zbuf)
    out = np.zeros((geom.height, geom.width), dtype=np.float64)
    kept, occluded = sparse_visible_depth(np.ascontiguousarray(observed_xyz, dtype=np.float64), rot,
                                          trans, kmat, rect, zbuf, cfg.occlusion_radius,
                                          cfg.occlusion_tolerance, out)
    return out.astype(np.float32), {"sparse_points": int(kept), "sparse_occluded": int(occluded)}
