"""Camera models shared by the data engine and the synthetic scene generator (numpy, float64).

Conventions (see docs on ETH3D / COLMAP):
- Poses are world-to-camera: ``X_cam = R @ X_world + t``; camera axes are OpenCV (x right, y down,
  z forward).
- COLMAP pixel coordinates put (0, 0) at the top-left *corner* of the top-left pixel, so the centre
  of pixel (i, j) is (i + 0.5, j + 0.5). ``K_colmap`` uses that convention, ``K_opencv`` puts pixel
  centres at integers (cx_opencv = cx_colmap - 0.5).
- ``THIN_PRISM_FISHEYE`` params are ``fx fy cx cy k1 k2 p1 p2 k3 k4 sx1 sy1`` (p1/p2 sit between k2
  and k3, unlike OpenCV), projected exactly as COLMAP does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PINHOLE = "PINHOLE"
THIN_PRISM_FISHEYE = "THIN_PRISM_FISHEYE"
# Number of parameters per COLMAP camera model (colmap/src/colmap/sensor/models.h). Every model
# parses; PINHOLE and THIN_PRISM_FISHEYE (all ETH3D uses) also project.
CAMERA_MODEL_PARAMS = {
    "SIMPLE_PINHOLE": 3,
    "PINHOLE": 4,
    "SIMPLE_RADIAL": 4,
    "RADIAL": 5,
    "OPENCV": 8,
    "OPENCV_FISHEYE": 8,
    "FULL_OPENCV": 12,
    "FOV": 5,
    "SIMPLE_RADIAL_FISHEYE": 4,
    "RADIAL_FISHEYE": 5,
    "THIN_PRISM_FISHEYE": 12,
}
PROJECTED_MODELS = (PINHOLE, THIN_PRISM_FISHEYE)

# Below this normalized radius COLMAP skips the fisheye angle mapping (uf = u).
_EPS_RADIUS = np.finfo(np.float64).eps


# --------------------------------------------------------------------------------------------------
# THIN_PRISM_FISHEYE
# --------------------------------------------------------------------------------------------------
def _fisheye_normalized(uv: np.ndarray) -> np.ndarray:
    """Pinhole-normalized (x/z, y/z) -> equidistant fisheye coordinates (theta * u / r)."""
    r = np.hypot(uv[:, 0], uv[:, 1])
    safe_r = np.where(r > _EPS_RADIUS, r, 1.0)
    factor = np.where(r > _EPS_RADIUS, np.arctan(r) / safe_r, 1.0)
    return uv * factor[:, None]


def _thin_prism_distortion(uf: np.ndarray, vf: np.ndarray, params: np.ndarray):
    """Distortion offsets (du, dv) of COLMAP's thin-prism model at fisheye coordinates (uf, vf)."""
    k1, k2, p1, p2, k3, k4, sx1, sy1 = params[4:12]
    t2 = uf * uf + vf * vf
    radial = t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
    uv = uf * vf
    du = uf * radial + 2.0 * p1 * uv + p2 * (t2 + 2.0 * uf * uf) + sx1 * t2
    dv = vf * radial + 2.0 * p2 * uv + p1 * (t2 + 2.0 * vf * vf) + sy1 * t2
    return du, dv


def thin_prism_distort_normalized(uv: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Pinhole-normalized coordinates (N,2) -> COLMAP corner-origin pixels (N,2)."""
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    params = _check_params(params, THIN_PRISM_FISHEYE)
    fisheye = _fisheye_normalized(uv)
    du, dv = _thin_prism_distortion(fisheye[:, 0], fisheye[:, 1], params)
    x = params[0] * (fisheye[:, 0] + du) + params[2]
    y = params[1] * (fisheye[:, 1] + dv) + params[3]
    return np.stack([x, y], axis=1)


def thin_prism_project(xyz_cam: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Camera-frame points (N,3) -> COLMAP corner-origin pixel coordinates (N,2).

    Exactly COLMAP's ``ThinPrismFisheyeCameraModel::ImgFromCam``. Points must have z > 0; points
    behind the camera give meaningless coordinates (filter them first, as COLMAP callers do).
    """
    xyz = np.asarray(xyz_cam, dtype=np.float64).reshape(-1, 3)
    uv = xyz[:, :2] / xyz[:, 2:3]
    return thin_prism_distort_normalized(uv, params)


def _thin_prism_jacobian(uf: np.ndarray, vf: np.ndarray, params: np.ndarray):
    """d(fisheye + distortion)/d(uf, vf), the 2x2 Jacobian of the distortion step, per point."""
    k1, k2, p1, p2, k3, k4, sx1, sy1 = params[4:12]
    t2 = uf * uf + vf * vf
    radial = t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))
    dradial_dt2 = k1 + t2 * (2.0 * k2 + t2 * (3.0 * k3 + t2 * 4.0 * k4))
    j00 = 1.0 + radial + 2.0 * uf * uf * dradial_dt2 + 2.0 * p1 * vf + 6.0 * p2 * uf + 2.0 * sx1 * uf
    j01 = 2.0 * uf * vf * dradial_dt2 + 2.0 * p1 * uf + 2.0 * p2 * vf + 2.0 * sx1 * vf
    j10 = 2.0 * uf * vf * dradial_dt2 + 2.0 * p2 * vf + 2.0 * p1 * uf + 2.0 * sy1 * uf
    j11 = 1.0 + radial + 2.0 * vf * vf * dradial_dt2 + 2.0 * p2 * uf + 6.0 * p1 * vf + 2.0 * sy1 * vf
    return j00, j01, j10, j11


def thin_prism_unproject(
    xy: np.ndarray, params: np.ndarray, max_iterations: int = 20, tolerance: float = 1e-12
) -> np.ndarray:
    """COLMAP corner-origin pixels (N,2) -> pinhole-normalized (x/z, y/z) (N,2).

    Newton's method on the distortion step (analytic Jacobian), then the inverse fisheye angle
    mapping r = tan(theta). Converges to ~1e-14 in normalized units within a few iterations for
    realistic ETH3D calibrations. Raises if any point fails to converge (e.g. pixels far outside the
    calibrated field of view), rather than returning silently wrong rays.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    params = _check_params(params, THIN_PRISM_FISHEYE)
    target_u = (xy[:, 0] - params[2]) / params[0]
    target_v = (xy[:, 1] - params[3]) / params[1]
    uf, vf = target_u.copy(), target_v.copy()
    active = np.arange(len(xy))
    for _ in range(max_iterations):
        if active.size == 0:
            break
        u, v = uf[active], vf[active]
        du, dv = _thin_prism_distortion(u, v, params)
        res_u = u + du - target_u[active]
        res_v = v + dv - target_v[active]
        j00, j01, j10, j11 = _thin_prism_jacobian(u, v, params)
        det = j00 * j11 - j01 * j10
        step_u = (j11 * res_u - j01 * res_v) / det
        step_v = (-j10 * res_u + j00 * res_v) / det
        uf[active] = u - step_u
        vf[active] = v - step_v
        active = active[np.hypot(step_u, step_v) > tolerance]
    if active.size:
        raise ValueError(
            f"thin_prism_unproject: {active.size} of {len(xy)} pixels did not converge "
            f"(first: {xy[active[0]].tolist()}); they lie outside the model's valid field of view"
        )
    theta = np.hypot(uf, vf)
    if np.any(theta >= 0.5 * np.pi):
        raise ValueError("thin_prism_unproject: pixel maps to a ray at or beyond 90 degrees")
    safe_theta = np.where(theta > _EPS_RADIUS, theta, 1.0)
    factor = np.where(theta > _EPS_RADIUS, np.tan(theta) / safe_theta, 1.0)
    return np.stack([uf * factor, vf * factor], axis=1)


# --------------------------------------------------------------------------------------------------
# PINHOLE
# --------------------------------------------------------------------------------------------------
def pinhole_project(xyz_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame points (N,3) -> pixels (N,2) in whatever convention K uses."""
    xyz = np.asarray(xyz_cam, dtype=np.float64).reshape(-1, 3)
    uv = xyz[:, :2] / xyz[:, 2:3]
    K = np.asarray(K, dtype=np.float64)
    x = K[0, 0] * uv[:, 0] + K[0, 1] * uv[:, 1] + K[0, 2]
    y = K[1, 1] * uv[:, 1] + K[1, 2]
    return np.stack([x, y], axis=1)


def pinhole_unproject(xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixels (N,2) in K's convention -> pinhole-normalized (x/z, y/z) (N,2)."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    K = np.asarray(K, dtype=np.float64)
    v = (xy[:, 1] - K[1, 2]) / K[1, 1]
    u = (xy[:, 0] - K[0, 2] - K[0, 1] * v) / K[0, 0]
    return np.stack([u, v], axis=1)


def pinhole_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Camera-frame ray directions (H,W,3) with z = 1 through the pixel centres of an OpenCV K.

    Pixel (u, v) with integer u, v is a pixel centre (OpenCV convention). Multiplying a ray by a
    z-depth gives the camera-frame point.
    """
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    uv = pinhole_unproject(np.stack([u.ravel(), v.ravel()], axis=1), K)
    rays = np.concatenate([uv, np.ones((uv.shape[0], 1))], axis=1)
    return rays.reshape(height, width, 3)


def K_colmap_to_opencv(K: np.ndarray) -> np.ndarray:
    """Corner-origin K (pixel centres at +0.5) -> centre-origin OpenCV K."""
    K = np.array(K, dtype=np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K


def resize_intrinsics_opencv(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """OpenCV K after resizing the image by (sx, sy): f' = f*s, c' = (c + 0.5) * s - 0.5."""
    K = np.array(K, dtype=np.float64)
    K[0, 0] *= sx
    K[0, 1] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K


def crop_intrinsics(K: np.ndarray, x0: float, y0: float) -> np.ndarray:
    """K after cropping the image at top-left (x0, y0) (any convention; padding is a negative crop)."""
    K = np.array(K, dtype=np.float64)
    K[0, 2] -= x0
    K[1, 2] -= y0
    return K


# --------------------------------------------------------------------------------------------------
# Rotations (COLMAP quaternions: Hamilton, w first)
# --------------------------------------------------------------------------------------------------
def qvec_to_rotmat(qvec) -> np.ndarray:
    """(qw, qx, qy, qz) -> 3x3 rotation; the quaternion is normalized first, as COLMAP does.
    (pycolmap.Rotation3d(...).matrix() differs from this in the last bit for ~1/3 of unit
    quaternions: shards store these matrices, so ours stays.)"""
    q = np.asarray(qvec, dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"invalid quaternion {q.tolist()}")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """3x3 rotation -> unit (qw, qx, qy, qz) with qw >= 0 (Shepperd's method, numerically stable)."""
    R = np.asarray(R, dtype=np.float64)
    trace = np.trace(R)
    diag = np.diag(R)
    largest = int(np.argmax([trace, *diag]))
    if largest == 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif largest == 1:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif largest == 2:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


# --------------------------------------------------------------------------------------------------
# Camera record
# --------------------------------------------------------------------------------------------------
def _check_params(params, model: str) -> np.ndarray:
    params = np.asarray(params, dtype=np.float64).reshape(-1)
    if params.size != CAMERA_MODEL_PARAMS[model]:
        raise ValueError(f"{model} needs {CAMERA_MODEL_PARAMS[model]} params, got {params.size}")
    return params


@dataclass(frozen=True, eq=False)
class Camera:
    """One COLMAP camera (a ``cameras.txt`` line); PINHOLE and THIN_PRISM_FISHEYE also project."""

    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # float64, COLMAP order; principal point in corner-origin pixels

    def __post_init__(self) -> None:
        if self.model not in CAMERA_MODEL_PARAMS:
            raise ValueError(f"unknown camera model {self.model!r}")
        object.__setattr__(self, "params", _check_params(self.params, self.model))
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")

    def _projected_model(self) -> str:
        if self.model not in PROJECTED_MODELS:
            raise ValueError(
                f"unsupported camera model {self.model!r} for projection; expected one of {list(PROJECTED_MODELS)}"
            )
        return self.model

    @property
    def focal(self) -> tuple[float, float]:
        return float(self.params[0]), float(self.params[1])

    def K_colmap(self) -> np.ndarray:
        """3x3 intrinsics of the pinhole part, corner-origin (COLMAP) convention."""
        fx, fy, cx, cy = self.params[:4]
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])

    def K_opencv(self) -> np.ndarray:
        """3x3 intrinsics of the pinhole part, centre-origin (OpenCV) convention."""
        return K_colmap_to_opencv(self.K_colmap())

    def project(self, xyz_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (N,3), z > 0 -> COLMAP corner-origin pixels (N,2)."""
        if self._projected_model() == PINHOLE:
            return pinhole_project(xyz_cam, self.K_colmap())
        return thin_prism_project(xyz_cam, self.params)

    def unproject(self, xy: np.ndarray) -> np.ndarray:
        """COLMAP corner-origin pixels (N,2) -> pinhole-normalized (x/z, y/z) (N,2)."""
        if self._projected_model() == PINHOLE:
            return pinhole_unproject(xy, self.K_colmap())
        return thin_prism_unproject(xy, self.params)

    def pixel_centre_rays(self, rows: slice = slice(None)) -> np.ndarray:
        """Camera-frame rays (h,W,3), z = 1, through the pixel centres of the given rows."""
        ys = np.arange(self.height, dtype=np.float64)[rows] + 0.5
        xs = np.arange(self.width, dtype=np.float64) + 0.5
        gx, gy = np.meshgrid(xs, ys)
        uv = self.unproject(np.stack([gx.ravel(), gy.ravel()], axis=1))
        rays = np.concatenate([uv, np.ones((uv.shape[0], 1))], axis=1)
        return rays.reshape(len(ys), self.width, 3)

    def colmap_line(self) -> str:
        """The ``cameras.txt`` data line, values printed like ETH3D's files (6 significant digits)."""
        values = " ".join(format_float(p) for p in self.params)
        return f"{self.camera_id} {self.model} {self.width} {self.height} {values}"


def format_float(value: float) -> str:
    """COLMAP/ETH3D text formatting: C++ ostream default precision (6 significant digits)."""
    text = f"{float(value):.6g}"
    return "0" if text == "-0" else text
