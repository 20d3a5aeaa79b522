"""Any COLMAP camera model → a pinhole camera at output resolution, without a full-size image.

Per source camera (and output size / fit / field choice) a map is built once: for every output
pixel, k x k stratified sub-pixel positions across its footprint, each taken through the exact
COLMAP projection of the source camera (`distort`) into the DCT-scaled decode of the photo. A frame
is then one decode plus a k x k bilinear average per output pixel (an antialiasing area filter:
the bilinear samples cover the footprint at <= 1.25 decoded pixels apart).

Coordinates: COLMAP pixels put (0, 0) at the top-left corner (pixel centres at +0.5); the output
K is OpenCV's (pixel centres at integers), as everywhere in the shards. The output camera is
the largest pinhole field whose every pixel maps inside the photo (`fov="valid"`), the bounding
field of the whole photo (`"full"`, blank corners with no supervision), or a horizontal field of
view in degrees centred on the optical axis.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from dataengine.errors import BadInputError
from dataengine.kernels.resample import sample_footprints

FIT_MODES = ("crop", "pad", "stretch")
JPEG_REDUCTIONS = (8, 4, 2, 1)
MAX_HALF_ANGLE = math.radians(80.0)  # a pinhole field can't reach 90 degrees; "full" clips here


@dataclass(frozen=True)
class SourceCamera:
    """One COLMAP camera: model name, size and params in COLMAP order (corner-origin pixels)."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]

    @classmethod
    def from_pycolmap(cls, camera_id: int, cam) -> SourceCamera:
        model = cam.model.name if hasattr(cam.model, "name") else str(cam.model_name)
        return cls(
            int(camera_id),
            model,
            int(cam.width),
            int(cam.height),
            tuple(float(p) for p in np.asarray(cam.params, dtype=np.float64)),
        )

    def to_pycolmap(self):
        import pycolmap

        return pycolmap.Camera(model=self.model, width=self.width, height=self.height, params=list(self.params))


# ---------------------------------------------------------------------------------------------
# Exact COLMAP projections (normalized x/z, y/z → corner-origin pixels), vectorised numpy.
# Written from COLMAP's camera model definitions (sensor/models.h); checked against pycolmap's
# img_from_cam for every model in tests/dataengine/test_colmap_captures.py.
# ---------------------------------------------------------------------------------------------
def _radial_poly(r2, ks):
    out = np.zeros_like(r2)
    for k in reversed(ks):
        out = (out + k) * r2
    return out


def _fisheye_theta(u, v):
    """Equidistant angle mapping: (u, v) * theta / r (identity below machine epsilon)."""
    r = np.hypot(u, v)
    small = r <= np.finfo(np.float64).eps
    theta = np.arctan(r)
    factor = np.where(small, 1.0, theta / np.where(small, 1.0, r))
    return u * factor, v * factor


def _opencv_tangential(u, v, p1, p2):
    r2 = u * u + v * v
    uv = u * v
    return 2.0 * p1 * uv + p2 * (r2 + 2.0 * u * u), 2.0 * p2 * uv + p1 * (r2 + 2.0 * v * v)


def _distort_native(model: str, p: np.ndarray, u: np.ndarray, v: np.ndarray):
    """(fx, fy, cx, cy) and the distorted normalized coordinates of (u, v), or None if not native."""
    if model == "SIMPLE_PINHOLE":
        return (p[0], p[0], p[1], p[2]), u, v
    if model == "PINHOLE":
        return tuple(p[:4]), u, v
    if model in ("SIMPLE_RADIAL", "RADIAL"):
        radial = _radial_poly(u * u + v * v, p[3:])
        return (p[0], p[0], p[1], p[2]), u * (1 + radial), v * (1 + radial)
    if model == "OPENCV":
        radial = _radial_poly(u * u + v * v, p[4:6])
        du, dv = _opencv_tangential(u, v, p[6], p[7])
        return tuple(p[:4]), u * (1 + radial) + du, v * (1 + radial) + dv
    if model == "FULL_OPENCV":
        k1, k2, p1, p2, k3, k4, k5, k6 = p[4:12]
        r2 = u * u + v * v
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        du, dv = _opencv_tangential(u, v, p1, p2)
        return tuple(p[:4]), u * radial + du, v * radial + dv
    if model in ("OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
        uf, vf = _fisheye_theta(u, v)
        ks = p[4:8] if model == "OPENCV_FISHEYE" else p[3:]
        radial = _radial_poly(uf * uf + vf * vf, ks)
        focal = tuple(p[:4]) if model == "OPENCV_FISHEYE" else (p[0], p[0], p[1], p[2])
        return focal, uf * (1 + radial), vf * (1 + radial)
    if model == "THIN_PRISM_FISHEYE":
        k1, k2, p1, p2, k3, k4, sx1, sy1 = p[4:12]
        uf, vf = _fisheye_theta(u, v)
        radial = _radial_poly(uf * uf + vf * vf, (k1, k2, k3, k4))
        du, dv = _opencv_tangential(uf, vf, p1, p2)
        t2 = uf * uf + vf * vf
        return tuple(p[:4]), uf * (1 + radial) + du + sx1 * t2, vf * (1 + radial) + dv + sy1 * t2
    if model == "FOV":
        omega = p[4]
        r2 = u * u + v * v
        if omega * omega < 1e-4:  # COLMAP's Taylor branch for tiny omega
            factor = omega * omega * r2 / 3.0 - omega * omega / 12.0 + 1.0
        else:
            r = np.sqrt(r2)
            th = math.tan(omega / 2.0)
            safe = np.where(r2 < 1e-4, 1.0, r)
            exact = np.arctan(safe * 2.0 * th) / (safe * omega)
            taylor = -2.0 * th * (4.0 * r2 * th * th - 3.0) / (3.0 * omega)
            factor = np.where(r2 < 1e-4, taylor, exact)
        return tuple(p[:4]), u * factor, v * factor
    return None


NATIVE_MODELS = (
    "SIMPLE_PINHOLE",
    "PINHOLE",
    "SIMPLE_RADIAL",
    "RADIAL",
    "OPENCV",
    "FULL_OPENCV",
    "OPENCV_FISHEYE",
    "SIMPLE_RADIAL_FISHEYE",
    "RADIAL_FISHEYE",
    "THIN_PRISM_FISHEYE",
    "FOV",
)


def distort(cam: SourceCamera, xy: np.ndarray) -> np.ndarray:
    """Normalized camera coordinates (N, 2) → COLMAP corner-origin pixels (N, 2) of `cam`.

    Native numpy for the classic models; any other model pycolmap knows goes through its
    img_from_cam (rays at z = 1)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    p = np.asarray(cam.params, dtype=np.float64)
    native = _distort_native(cam.model, p, xy[:, 0], xy[:, 1])
    if native is None:
        return pycolmap_img_from_cam(cam, xy)
    (fx, fy, cx, cy), du, dv = native
    return np.stack([fx * du + cx, fy * dv + cy], axis=1)


def pycolmap_img_from_cam(cam: SourceCamera, xy: np.ndarray) -> np.ndarray:
    """pycolmap's projection of normalized points (4.x takes 3-D points, 3.x normalized 2-D)."""
    pc = cam.to_pycolmap()
    xy = np.ascontiguousarray(xy, dtype=np.float64)
    try:
        out = pc.img_from_cam(np.ascontiguousarray(np.c_[xy, np.ones(len(xy))]))
    except TypeError:
        out = pc.img_from_cam(xy)
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def pycolmap_cam_from_img(cam: SourceCamera, uv: np.ndarray) -> np.ndarray:
    """pycolmap's unprojection: COLMAP pixels (N, 2) → normalized (N, 2) (NaN where undefined)."""
    out = cam.to_pycolmap().cam_from_img(np.ascontiguousarray(uv, dtype=np.float64))
    out = np.asarray(out, dtype=np.float64)
    return out[:, :2] / out[:, 2:3] if out.shape[1] == 3 else out


# ---------------------------------------------------------------------------------------------
# The output pinhole camera
# ---------------------------------------------------------------------------------------------
def _inside(cam: SourceCamera, px: np.ndarray, margin: float) -> np.ndarray:
    return (
        np.isfinite(px).all(axis=1)
        & (px[:, 0] >= margin)
        & (px[:, 1] >= margin)
        & (px[:, 0] <= cam.width - margin)
        & (px[:, 1] <= cam.height - margin)
    )


def _rect_border(x0, x1, y0, y1, n=512):
    xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
    return np.concatenate(
        [np.c_[xs, np.full(n, y0)], np.c_[xs, np.full(n, y1)], np.c_[np.full(n, x0), ys], np.c_[np.full(n, x1), ys]]
    )


def undistorted_field(cam: SourceCamera, fov: str = "valid", margin: float = 1.0):
    """(x0, x1, y0, y1) in normalized coordinates of the output field.

    valid: the largest axis-aligned field whose every point maps inside the photo (>= margin
    source px from its border): the photo's border is unprojected (pycolmap), the field bounded
    by its innermost points, then shrunk until the whole border of the field projects inside
    (exact forward model). full: the bounding field of the photo's border (blank corners).
    A number: that horizontal field of view in degrees, centred on the optical axis, aspect of
    the photo."""
    w, h = cam.width, cam.height
    n = 1024
    xs, ys = np.linspace(margin, w - margin, n), np.linspace(margin, h - margin, n)
    sides = [
        pycolmap_cam_from_img(cam, np.c_[np.full(n, margin), ys]),
        pycolmap_cam_from_img(cam, np.c_[np.full(n, w - margin), ys]),
        pycolmap_cam_from_img(cam, np.c_[xs, np.full(n, margin)]),
        pycolmap_cam_from_img(cam, np.c_[xs, np.full(n, h - margin)]),
    ]
    # Unprojections beyond the model's valid range are NaN or far out: drop those.
    limit = math.tan(MAX_HALF_ANGLE)
    sides = [s[np.isfinite(s).all(axis=1) & (np.abs(s) <= limit).all(axis=1)] for s in sides]
    if any(len(s) == 0 for s in sides):
        raise BadInputError(
            f"camera {cam.camera_id} ({cam.model} {list(cam.params)}): the photo's "
            f"border does not unproject; is the calibration valid?"
        )
    if fov == "full":
        allp = np.concatenate(sides)
        return (float(allp[:, 0].min()), float(allp[:, 0].max()), float(allp[:, 1].min()), float(allp[:, 1].max()))
    if fov != "valid":
        try:
            degrees = float(fov)
        except ValueError:
            raise ValueError(f"undistort fov must be 'valid', 'full' or degrees, got {fov!r}") from None
        if not 1.0 <= degrees <= 160.0:
            raise ValueError(f"undistort fov {degrees} degrees is outside [1, 160]")
        half = math.tan(math.radians(degrees) / 2.0)
        return (-half, half, -half * h / w, half * h / w)
    x0, x1 = float(sides[0][:, 0].max()), float(sides[1][:, 0].min())
    y0, y1 = float(sides[2][:, 1].max()), float(sides[3][:, 1].min())
    if not (x0 < x1 and y0 < y1):
        raise BadInputError(
            f"camera {cam.camera_id} ({cam.model}): no undistorted field without "
            f"blank pixels; use --undistort-fov full or a field of view in degrees"
        )
    for _ in range(400):
        if _inside(cam, distort(cam, _rect_border(x0, x1, y0, y1)), margin).all():
            return x0, x1, y0, y1
        cx, cy, sx, sy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2 * 0.995, (y1 - y0) / 2 * 0.995
        x0, x1, y0, y1 = cx - sx, cx + sx, cy - sy, cy + sy
    raise BadInputError(f"camera {cam.camera_id} ({cam.model}): could not fit a blank-free field")


def output_K(field, width: int, height: int, fit: str) -> np.ndarray:
    """OpenCV K of the output pinhole camera that shows `field` per the fit mode: crop (square
    pixels, field covers the output), pad (square pixels, output covers the field), stretch."""
    x0, x1, y0, y1 = field
    if fit == "stretch":
        fx, fy = width / (x1 - x0), height / (y1 - y0)
    elif fit in ("crop", "pad"):
        pick = max if fit == "crop" else min
        fx = fy = pick(width / (x1 - x0), height / (y1 - y0))
    else:
        raise ValueError(f"fit must be one of {FIT_MODES}, got {fit!r}")
    # Corner coordinate X = fx * x + cx_corner; the field's centre lands on the output's centre.
    cx = width / 2.0 - fx * (x0 + x1) / 2.0 - 0.5
    cy = height / 2.0 - fy * (y0 + y1) / 2.0 - 0.5
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class UndistortMap:
    K: np.ndarray  # (3, 3) OpenCV output intrinsics
    width: int
    height: int
    reduction: int  # DCT scaling 1/reduction of the photo's decode
    taps: int  # k: k x k samples per output pixel
    coords: np.ndarray  # (H, W, k*k, 2) float32: decoded-image bilinear coords (centre-origin)
    field: tuple[float, float, float, float]
    fov: str


def pixel_sources(cam: SourceCamera, K: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Output corner coordinates (N,) x (N,) → COLMAP source pixels (N, 2)."""
    x = (xs - 0.5 - K[0, 2]) / K[0, 0]
    y = (ys - 0.5 - K[1, 2]) / K[1, 1]
    return distort(cam, np.c_[x, y])


_cache: dict[tuple, UndistortMap] = {}
_lock = threading.Lock()


def undistort_map(
    cam: SourceCamera, width: int, height: int, fit: str = "crop", fov: str = "valid", min_oversample: float = 1.5
) -> UndistortMap:
    """The map of one camera (cached: built once per camera and output choice)."""
    key = (cam, width, height, fit, str(fov), min_oversample)
    with _lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    field = undistorted_field(cam, str(fov))
    K = output_K(field, width, height, fit)
    # Footprint scale: source pixels per output pixel at every output pixel centre.
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    centre = pixel_sources(cam, K, jj.ravel(), ii.ravel())
    step_x = pixel_sources(cam, K, jj.ravel() + 0.5, ii.ravel()) - centre
    step_y = pixel_sources(cam, K, jj.ravel(), ii.ravel() + 0.5) - centre
    scale = 2.0 * np.minimum(np.hypot(*step_x.T), np.hypot(*step_y.T))
    scale_max = 2.0 * np.maximum(np.hypot(*step_x.T), np.hypot(*step_y.T))
    ok = np.isfinite(scale)
    # The decode keeps >= min_oversample decoded px per output px over 3/4 of the output (the
    # footprint filter then averages >= 2x2 bilinear samples; 1.5 rather than the ETH3D path's 1.9
    # because distortion varies the scale across the frame: at 1.9 a 4x reduction's frames
    # would decode at full size for a few percent of scale).
    typical = float(np.percentile(scale[ok], 25)) if ok.any() else 1.0
    reduction = next((r for r in JPEG_REDUCTIONS if typical / r >= min_oversample), 1)
    widest = float(np.percentile(scale_max[ok], 95)) / reduction if ok.any() else 1.0
    # Bilinear samples <= 1.25 decoded px apart: each tent reaches +-1 px, so neighbouring
    # samples' supports overlap and the footprint is covered without gaps.
    taps = int(min(8, max(2, math.ceil(widest / 1.25))))
    offsets = (np.arange(taps) + 0.5) / taps - 0.5
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    xs = (jj[:, :, None] + ox.ravel()[None, None, :]).ravel()
    ys = (ii[:, :, None] + oy.ravel()[None, None, :]).ravel()
    src = pixel_sources(cam, K, xs, ys) / reduction - 0.5  # bilinear coords in the decode
    coords = src.astype(np.float32).reshape(height, width, taps * taps, 2)
    umap = UndistortMap(K, width, height, reduction, taps, coords, field, str(fov))
    with _lock:
        if len(_cache) > 32:
            _cache.clear()
        _cache[key] = umap
    return umap


def decode_photo(data: bytes, cam: SourceCamera, reduction: int, path) -> np.ndarray:
    """The photo at 1/reduction (JPEG: libjpeg-turbo DCT scaling; other formats: Pillow, full size
    then exact box downscale by the same factor), checked against the camera's size."""
    from dataengine.images import decode_reduced, jpeg_size

    if data[:3] == b"\xff\xd8\xff":
        width, height = jpeg_size(data, path)
        _check_size(path, cam, width, height)
        return decode_reduced(data, width, height, reduction, path)
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_size(path, cam, im.size[0], im.size[1])
            rgb = photo_rgb8(im, path)
    except (UnidentifiedImageError, OSError) as exc:
        raise BadInputError(f"{path}: not a readable image ({exc}); COLMAP photos must be JPEG or PNG", path) from None
    if reduction == 1:
        return rgb
    h, w = -(-rgb.shape[0] // reduction), -(-rgb.shape[1] // reduction)
    pad = np.pad(
        rgb.astype(np.float32),
        ((0, h * reduction - rgb.shape[0]), (0, w * reduction - rgb.shape[1]), (0, 0)),
        mode="edge",
    )
    return np.rint(pad.reshape(h, reduction, w, reduction, 3).mean(axis=(1, 3))).astype(np.uint8)


def photo_rgb8(im, path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a Pillow image of any mode. `convert("RGB")` is right for 8-bit modes
    (1, L, P, LA, PA, RGB, RGBA, CMYK, YCbCr) but clips 16-bit greyscale to 255 and floats to 0 —
    a constant frame — so wider modes are scaled here: 16-bit by 65535 → 255, 32-bit integers the
    same when they hold 16-bit values, floats from [0, 1]; anything else is refused."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(im).astype(np.float64)
        if not np.isfinite(values).all():
            raise BadInputError(f"{path}: {mode} photo holds NaN or infinite values; save it as 8-bit RGB", path)
        lo, hi = float(values.min()), float(values.max())
        if mode == "F":
            if lo < 0.0 or hi > 1.0:
                raise BadInputError(
                    f"{path}: floating-point ({mode}) photo with values in [{lo:g}, {hi:g}], not [0, 1]; "
                    f"save it as 8-bit RGB (or 16-bit PNG)",
                    path,
                )
            grey = values * 255.0
        else:
            if lo < 0 or hi > 65535:
                raise BadInputError(
                    f"{path}: 32-bit integer ({mode}) photo with values in [{lo:g}, {hi:g}], beyond 16 bits; "
                    f"save it as 8-bit RGB (or 16-bit PNG)",
                    path,
                )
            grey = values / 257.0  # 65535 → 255
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode not in ("1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"):
        raise BadInputError(f"{path}: photo mode {mode} is not supported; save it as 8-bit RGB (JPEG or PNG)", path)
    return np.asarray(im.convert("RGB"))


def _check_size(path, cam: SourceCamera, width: int, height: int) -> None:
    if (width, height) != (cam.width, cam.height):
        raise BadInputError(
            f"{path}: image is {width}x{height} but its COLMAP camera "
            f"{cam.camera_id} says {cam.width}x{cam.height}; was the photo resized "
            f"or rotated after reconstruction?",
            path,
        )


def undistort_photo(data: bytes, cam: SourceCamera, umap: UndistortMap, path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 undistorted output frame and its (H, W) float32 covered fraction."""
    img = decode_photo(data, cam, umap.reduction, path)
    out = np.empty((umap.height, umap.width, 3), dtype=np.uint8)
    covered = np.empty((umap.height, umap.width), dtype=np.float32)
    sample_footprints(img, umap.coords, out, covered)
    return out, covered
