"""Depth supervision at output resolution: ETH3D laser GT (default) or z-buffered COLMAP points.

Laser: the raw float32 GT lives in the DISTORTED (THIN_PRISM_FISHEYE) geometry, one laser point per
valid pixel (splatted with floor). Two estimators, both excluding mask values 1/2 and never filling
a pixel without GT of its own:
- `plane` (default): every valid GT pixel is taken back through the same camera's thin-prism model
  (a cached undistortion grid) to the undistorted image and the output; per output pixel a local
  plane in inverse depth (exact on planes: 1/z is affine in pinhole pixels) is fitted to the
  points around it and evaluated at the pixel centre, where the fit is well posed, consistent
  (one surface) and not extrapolated; elsewhere the GT value nearest the centre is kept.
- `nearest` / `median` / `min`: k x k stratified samples of each footprint in the undistorted
  image, mapped into the GT (floor lookup); the valid sample nearest the footprint centre, their
  lower median or min, with a minimum count. Every value is one real laser sample.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dataengine.camera import Camera
from dataengine.errors import BadInputError
from dataengine.images import OutputGeometry
from dataengine.kernels.codes import PLANE_FITTED, Pooling

POOLING = Pooling.labels()  # LaserDepthConfig.pooling's spellings, in the CLI's order


@dataclass(frozen=True)
class LaserDepthConfig:
    samples: int = 8  # k: k x k samples per output pixel footprint (nearest / median / min)
    # plane: a local plane in inverse depth fitted to the laser points around the pixel and
    #   evaluated at its centre, where the fit is well posed, consistent and not extrapolated;
    #   else the GT value nearest the centre (kernels.plane.plane_pool);
    # nearest: the valid sample nearest the footprint centre; median: their lower median (a real
    #   sample, robust to outliers); min: the nearest surface.
    pooling: str = Pooling.PLANE.label
    # Valid samples needed to supervise a pixel (plane: GT pixels overlapping its footprint).
    min_count: int = 1
    grid_spacing: float = 8.0  # px between exact thin-prism evaluations (both map directions)
    # plane: the fit window starts at the pixel's own footprint (+-0.5 output px) and widens up to
    # +-plane_radius (<= 1.5: the 3x3 neighbourhood) while the points are too few.
    plane_radius: float = 1.5
    plane_min_points: int = 5  # laser points (3 define a plane; more let it be checked)
    plane_tolerance: float = 0.005  # max relative residual: larger = two surfaces, no plane
    plane_min_spread: float = 0.15  # output px: smallest position std (points not on a line)

    def __post_init__(self):
        if self.pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {self.pooling!r}")
        if self.samples < 1 or self.min_count < 0 or self.grid_spacing <= 0:
            raise ValueError("samples >= 1, min_count >= 0 and grid_spacing > 0 are required")
        if not 0.0 < self.plane_radius <= 1.5:
            raise ValueError(f"plane_radius must be in (0, 1.5] output pixels, got {self.plane_radius}")
        if self.plane_min_points < 3 or self.plane_tolerance <= 0 or self.plane_min_spread < 0:
            raise ValueError("plane_min_points >= 3, plane_tolerance > 0 and plane_min_spread >= 0 are required")

    @property
    def mode(self) -> Pooling:
        return Pooling.from_label(self.pooling)


@dataclass(frozen=True)
class SparseDepthConfig:
    occlusion_radius: int = 1  # (2r+1)^2 neighbourhood of the z-buffer test
    occlusion_tolerance: float = 0.05  # occluded when z > zbuf * (1 + tol)


_local = threading.local()  # per-thread reusable point buffers (sizes vary per frame)


def _buffer_at_least(name: str, size: int, dtype) -> np.ndarray:
    """Per-thread reusable 1-D buffer of at least `size` elements (sizes vary per frame)."""
    buf = getattr(_local, name, None)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = np.empty(int(size * 1.25) + 1024, dtype=dtype)
        setattr(_local, name, buf)
    return buf


def map_gt_depth(path: Path, width: int, height: int) -> np.ndarray:
    """Raw little-endian float32 (height, width) GT, memory-mapped read-only (no 97.5 MB copy
    out of the page cache); a clear error on a wrong file size. The map lives as long as the array
    (the file must not be truncated meanwhile)."""
    path = Path(path)
    expected = width * height * 4
    size = os.path.getsize(path)
    if size != expected:
        raise BadInputError(
            f"{path}: depth file has {size} bytes, expected {expected} "
            f"(= {width}x{height} float32 of the distorted camera)",
            path,
        )
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mapped, dtype="<f4").reshape(height, width)


def check_gt_values(path: Path, n_bad: int, gt: np.ndarray) -> None:
    """Reject a GT map holding values that are neither a plausible depth (0 < z <= MAX_GT_DEPTH
    metres) nor the +inf "no GT" marker; the kernels count them in their scan, and only a bad file
    pays for the breakdown by kind."""
    if not n_bad:
        return
    from dataengine.kernels.laser import MAX_GT_DEPTH

    with np.errstate(invalid="ignore"):
        kinds = {
            "NaN": np.isnan(gt),
            "-inf": gt == -np.inf,
            "<= 0": np.isfinite(gt) & (gt <= 0),
            f"> {MAX_GT_DEPTH:g} m": np.isfinite(gt) & (gt > MAX_GT_DEPTH),
        }
    detail = ", ".join(f"{int(np.count_nonzero(v))} {k}" for k, v in kinds.items() if np.any(v))
    raise BadInputError(
        f"{path}: {n_bad} bad GT depth values ({detail}); expected metres in (0, "
        f"{MAX_GT_DEPTH:g}] or +inf for 'no GT'; re-extract the file, or --skip-bad "
        f"to skip the frame",
        path,
    )


def read_gt_depth(path: Path, width: int, height: int) -> tuple[np.ndarray, int]:
    """`map_gt_depth` and its count of valid (finite, > 0) pixels; a clear error on any bad value.
    (Plane pooling scans the map inside its own first pass instead: `plane_depth`.)"""
    from dataengine.kernels.laser import scan_depth

    gt = map_gt_depth(path, width, height)
    n_bad, n_valid = scan_depth(gt)
    check_gt_values(path, n_bad, gt)
    return gt, n_valid


def read_mask(path: Path | None, width: int, height: int, out: np.ndarray | None = None) -> np.ndarray:
    """ETH3D mask PNG (0 = fine, 1 = bad colour, 2 = bad geometry) or (0, 0) when there is none.

    8-bit greyscale PNGs (ETH3D's kind) take the fast decoder (dataengine.png, ~3x faster than
    Pillow), into `out` when given (a reusable uint8 buffer); any other PNG kind goes through
    Pillow."""
    if path is None:
        return np.zeros((0, 0), dtype=np.uint8)
    from dataengine.png import read_png_gray8

    try:
        fast = read_png_gray8(path, out)
    except OSError as exc:
        raise BadInputError(f"{path}: unreadable mask PNG ({exc})", path) from None
    if fast is not None:
        mask, max_value = fast
        _check_mask_size(path, mask.shape[1], mask.shape[0], width, height)
    else:
        mask = _read_mask_pillow(path, width, height)
        max_value = int(mask.max(initial=0))
    check_mask_values(path, max_value)
    return mask


def _mask_buffer(prism: Camera) -> np.ndarray:
    """The per-thread decoded-mask buffer; it lives until this thread's next frame (the mask is
    not returned)."""
    return _buffer_at_least("mask", prism.width * prism.height, np.uint8)


def read_mask_scanlines(path: Path | None, width: int, height: int) -> np.ndarray | None:
    """The still-filtered (height, width + 1) scanlines of an 8-bit greyscale mask PNG
    (`png.read_png_gray8_scanlines`) for `kernels.laser.laser_points` to unfilter row by row; (0, 0)
    without a mask file; None when it must be decoded whole (`read_mask`: other PNG kinds)."""
    if path is None:
        return np.zeros((0, 0), dtype=np.uint8)
    from dataengine.png import read_png_gray8_scanlines

    try:
        scanlines = read_png_gray8_scanlines(path)
    except OSError as exc:
        raise BadInputError(f"{path}: unreadable mask PNG ({exc})", path) from None
    if scanlines is not None:
        _check_mask_size(path, scanlines.shape[1] - 1, scanlines.shape[0], width, height)
    return scanlines


def check_mask_values(path: Path, max_value: int) -> None:
    if max_value > 2:
        raise BadInputError(f"{path}: mask values must be 0, 1 or 2, found {max_value}", path)


def _check_mask_size(path, got_w, got_h, width, height):
    if (got_w, got_h) != (width, height):
        raise BadInputError(
            f"{path}: mask is {got_w}x{got_h}, expected {width}x{height} (the distorted image size)", path
        )


def _read_mask_pillow(path: Path, width: int, height: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            _check_mask_size(path, im.size[0], im.size[1], width, height)
            if im.mode not in ("L", "P", "1"):
                raise BadInputError(f"{path}: mask must be 8-bit single channel, got mode {im.mode}", path)
            if im.mode == "1":
                im = im.convert("L")
            # tobytes + frombuffer: np.asarray(im) costs ~50 ms more on a 24-megapixel mask.
            return np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(height, width)
    except (OSError, SyntaxError) as exc:
        raise BadInputError(f"{path}: unreadable mask PNG ({exc})", path) from None


_grid_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_grid_lock = threading.Lock()


def _cached_grid(kind: str, pinhole: Camera, prism: Camera, spacing: float):
    """Cached per (camera pair, direction): 'distort' = thin-prism position of every undistorted
    grid node; 'undistort' = undistorted position of every distorted grid node."""
    from dataengine.kernels.prism import distortion_grid, undistortion_grid

    key = (
        kind,
        pinhole.width,
        pinhole.height,
        tuple(pinhole.params),
        prism.width,
        prism.height,
        tuple(prism.params),
        spacing,
    )
    with _grid_lock:
        hit = _grid_cache.get(key)
    if hit is not None:
        return hit
    w, h = (pinhole.width, pinhole.height) if kind == "distort" else (prism.width, prism.height)
    gx = np.empty((int(h // spacing) + 2, int(w // spacing) + 2), dtype=np.float64)
    gy = np.empty_like(gx)
    fill = distortion_grid if kind == "distort" else undistortion_grid
    fill(pinhole.params.astype(np.float64), prism.params.astype(np.float64), float(spacing), gx, gy)
    with _grid_lock:
        if len(_grid_cache) > 64:
            _grid_cache.clear()
        _grid_cache[key] = (gx, gy)
    return gx, gy


def distortion_grid_for(pinhole: Camera, prism: Camera, spacing: float):
    return _cached_grid("distort", pinhole, prism, spacing)


def undistortion_grid_for(pinhole: Camera, prism: Camera, spacing: float):
    return _cached_grid("undistort", pinhole, prism, spacing)


def laser_depth(
    depth_path: Path,
    mask_path: Path | None,
    pinhole: Camera,
    prism: Camera,
    geom: OutputGeometry,
    cfg: LaserDepthConfig,
) -> tuple[np.ndarray, dict]:
    """(H, W) float32 metres (0 = no supervision) and source statistics."""
    if prism.model != "THIN_PRISM_FISHEYE":
        raise BadInputError(
            f"camera {prism.camera_id} of dslr_calibration_jpg must be THIN_PRISM_FISHEYE, got {prism.model}"
        )
    if cfg.mode is Pooling.PLANE:
        # The mask's filtered scanlines go to the GT pass, which unfilters them row by row.
        scanlines = read_mask_scanlines(mask_path, prism.width, prism.height)
        mask = (
            scanlines if scanlines is not None else read_mask(mask_path, prism.width, prism.height, _mask_buffer(prism))
        )
        gt = map_gt_depth(depth_path, prism.width, prism.height)
        plane = plane_depth(
            gt, mask, pinhole, prism, geom, cfg, mask_filtered=scanlines is not None, mask_path=mask_path
        )
        check_gt_values(depth_path, plane.n_nan, gt)
        out, n_valid, n_masked = plane.depth, plane.n_valid, plane.n_masked
        n_mask_pixels = prism.width * prism.height if mask.size else 0
    else:
        mask = read_mask(mask_path, prism.width, prism.height, _mask_buffer(prism))
        gt, n_valid = read_gt_depth(depth_path, prism.width, prism.height)
        out = _sampled_depth(gt, mask, pinhole, prism, geom, cfg)
        n_masked = np.count_nonzero(mask)
        n_mask_pixels = mask.size
    stats = {
        "source_valid_fraction": round(n_valid / gt.size, 6),
        "masked_fraction": round(n_masked / n_mask_pixels, 6) if n_mask_pixels else 0.0,
    }
    if cfg.mode is Pooling.PLANE:
        supervised = np.count_nonzero(out)
        stats["plane_fraction"] = (
            round(np.count_nonzero(plane.status == PLANE_FITTED) / supervised, 6) if supervised else 0.0
        )
    return out, stats


def _sampled_depth(gt, mask, pinhole, prism, geom, cfg) -> np.ndarray:
    """nearest / median / min of k x k footprint samples (kernels.footprint.laser_depth_pool)."""
    from dataengine.kernels.footprint import laser_depth_pool

    gx, gy = distortion_grid_for(pinhole, prism, cfg.grid_spacing)
    out = np.empty((geom.height, geom.width), dtype=np.float32)
    count = np.empty((geom.height, geom.width), dtype=np.uint16)
    laser_depth_pool(
        gt,
        mask,
        gx,
        gy,
        float(cfg.grid_spacing),
        geom.affine,
        np.array([pinhole.width, pinhole.height], dtype=np.float64),
        cfg.samples,
        int(cfg.mode),
        cfg.min_count,
        out,
        count,
    )
    return out


class PlaneDepth(NamedTuple):
    depth: np.ndarray  # (H, W) float32 metres, 0 = no supervision
    status: np.ndarray  # (H, W) uint8 kernels.codes.PLANE_* code of every pixel
    n_valid: int  # valid (finite, > 0) pixels of the whole GT map
    n_nan: int  # bad pixels of the whole GT map (kernels.laser._is_bad_bits; the caller rejects the file when > 0)
    n_masked: int  # mask pixels != 0 (0 without a mask)


def plane_depth(
    gt, mask, pinhole, prism, geom, cfg, mask_filtered: bool = False, mask_path: Path | None = None
) -> PlaneDepth:
    """Local plane fits with nearest-point fallback (kernels.plane.plane_pool). gt: the raw GT map
    (scanned for valid/NaN pixels in the same pass); mask may be (0, 0). mask_filtered: mask is
    the PNG's filtered scanlines (`read_mask_scanlines`), unfiltered inside the GT pass; an
    invalid filter type or a value above 2 then raises BadInputError naming mask_path."""
    from dataengine.kernels.laser import PointBuffers, laser_points
    from dataengine.kernels.plane import bucket_points, plane_pool
    from dataengine.png import bad_filter_error

    ux, uy = undistortion_grid_for(pinhole, prism, cfg.grid_spacing)
    src_size = np.array([pinhole.width, pinhole.height], dtype=np.float64)
    want = getattr(_local, "points_needed", gt.size // 8)  # the thread's last frame, else 12.5 %
    while True:
        buffers = PointBuffers(
            _buffer_at_least("pt_owner", want, np.int32),
            _buffer_at_least("pt_x", want, np.float32),
            _buffer_at_least("pt_y", want, np.float32),
            _buffer_at_least("pt_z", want, np.float32),
        )
        found = laser_points(
            gt,
            mask,
            ux,
            uy,
            buffers,
            spacing=float(cfg.grid_spacing),
            affine=geom.affine,
            src_size=src_size,
            out_shape=(geom.height, geom.width),
            mask_filtered=mask_filtered,
        )
        if mask_filtered and found.bad_filter_row >= 0:
            row = found.bad_filter_row
            raise bad_filter_error(mask_path, row, int(mask[row, 0]))
        if mask_filtered:
            check_mask_values(mask_path, found.mask_peak)
        n = found.n_points
        if n <= buffers.capacity:
            break
        want = n  # more points than the buffers hold (rare): grow them and map again
    _local.points_needed = n
    n_buckets = 4 * geom.height * geom.width  # quadrant sub-buckets
    start = _buffer_at_least("bk_start", n_buckets + 1, np.int32)[: n_buckets + 1]
    # The bucketed points as 16-byte records (1/depth, x, y): the scatter of the counting sort
    # and the window reads touch one cache line per point, not three.
    records = _buffer_at_least("bk_rec", 2 * n, np.float64)[: 2 * n].reshape(n, 2)
    pw = records[:, 0]
    px = records.view(np.float32)[:, 2]
    py = records.view(np.float32)[:, 3]
    bucket_points(*buffers, n, start, px, py, pw)
    out = np.empty((geom.height, geom.width), dtype=np.float32)
    status = np.empty((geom.height, geom.width), dtype=np.uint8)
    plane_pool(
        start,
        px,
        py,
        pw,
        geom.affine,
        cfg.min_count,
        float(cfg.plane_radius),
        cfg.plane_min_points,
        float(cfg.plane_tolerance),
        float(cfg.plane_min_spread),
        out,
        status,
    )
    return PlaneDepth(out, status, found.n_valid, found.n_nan, found.n_masked)


def sparse_depth(
    points_xyz: np.ndarray,
    observed_xyz: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    kmat: np.ndarray,
    geom: OutputGeometry,
    cfg: SparseDepthConfig,
) -> tuple[np.ndarray, dict]:
    """Observed COLMAP points that survive a z-buffer occlusion test over all points."""
    from dataengine.kernels.splat import sparse_visible_depth, splat_min_depth

    rect = geom.content_rect
    zbuf = np.full((geom.height, geom.width), np.inf, dtype=np.float64)
    rot = np.ascontiguousarray(rotation, dtype=np.float64)
    trans = np.ascontiguousarray(translation, dtype=np.float64)
    kmat = np.ascontiguousarray(kmat, dtype=np.float64)
    splat_min_depth(np.ascontiguousarray(points_xyz, dtype=np.float64), rot, trans, kmat, rect, zbuf)
    out = np.zeros((geom.height, geom.width), dtype=np.float64)
    kept, occluded = sparse_visible_depth(
        np.ascontiguousarray(observed_xyz, dtype=np.float64),
        rot,
        trans,
        kmat,
        rect,
        zbuf,
        cfg.occlusion_radius,
        cfg.occlusion_tolerance,
        out,
    )
    return out.astype(np.float32), {"sparse_points": int(kept), "sparse_occluded": int(occluded)}
