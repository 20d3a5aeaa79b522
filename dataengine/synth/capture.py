"""What ETH3D's capture and dataset pipeline would record of the scene: the laser scan and its
sparse GT depth per distorted image, the masks, and the sparse COLMAP model (keypoints, tracks)
consistent in both calibrations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataengine.camera import Camera, format_float
from dataengine.synth.materials import GLASS
from dataengine.synth.raycast import cast_kernel
from dataengine.synth.scene import REFERENCE_THIN_PRISM, SceneGeometry, undistorted_to_distorted

# Mask values of ETH3D's dataset pipeline (src/opt/image.h MaskType).
MASK_NONE, MASK_OBS, MASK_EVAL_OBS = 0, 1, 2


# ==================================================================================================
# Laser scan -> sparse GT depth (ETH3D dataset-pipeline semantics)
# ==================================================================================================
# Angular step of the simulated scanner, in undistorted pixels at the same distance: ~2.6 px
# spacing gives ETH3D-like sparse GT (about 5-15 % of the distorted pixels).
_SCAN_STEP_PX = 3.5
_SCAN_MAX_RANGE_M = 80.0
_OCCLUSION_THRESHOLD_M = 0.01  # dataset-pipeline default occlusion_depth_threshold


def simulate_laser_scan(geometry: SceneGeometry, scale: float, rng: np.random.Generator) -> np.ndarray:
    """World-frame points (M,3) of two terrestrial laser scans in front of the facade.

    The angular step scales with the image scale, so the GT density in pixels is scale-invariant.
    Only surfaces a scanner sees get points (the balcony casts scan shadows, as in real scans).
    """
    step = _SCAN_STEP_PX / (REFERENCE_THIN_PRISM[0] * scale)
    width = geometry.building[3] - geometry.building[0]
    scanners = [np.array([-0.2 * width, -9.0, 1.7]), np.array([0.2 * width, -11.0, 1.7])]
    points = []
    for position in scanners:
        az = np.arange(np.radians(-75), np.radians(75), step) + rng.uniform(0, step)
        el = np.arange(np.radians(-40), np.radians(65), step) + rng.uniform(0, step)
        for el_chunk in np.array_split(el, max(1, len(el) // 256)):
            A, E = np.meshgrid(az, el_chunk)
            dirs = np.stack([np.cos(E) * np.sin(A), np.cos(E) * np.cos(A), np.sin(E)], -1).reshape(-1, 3)
            origins = np.ascontiguousarray(np.broadcast_to(position, dirs.shape))
            t = np.empty(len(dirs))
            mat = np.empty(len(dirs), dtype=np.int64)
            cast_kernel(
                origins,
                np.ascontiguousarray(dirs),
                False,
                geometry.facade_arrays(),
                t,
                mat,
                np.zeros((0, 3), np.float32),
            )
            keep = t < _SCAN_MAX_RANGE_M
            points.append(position + t[keep, None] * dirs[keep])
    return geometry.to_world(np.concatenate(points))


@dataclass
class Splats:
    """Scan points that project into one distorted image and are visible there."""

    point_index: np.ndarray  # into the scan
    pixel: np.ndarray  # linear pixel index iy * W + ix, ix = floor(x_colmap)
    z: np.ndarray


def _max_field_angle(camera: Camera) -> float:
    """Largest angle off the optical axis the distorted image sees (from its border pixels)."""
    W, H = camera.width, camera.height
    border = np.array([[0, 0], [W, 0], [0, H], [W, H], [W / 2, 0], [W / 2, H], [0, H / 2], [W, H / 2]])
    uv = camera.unproject(border)
    return float(np.arctan(np.hypot(uv[:, 0], uv[:, 1])).max())


def project_scan(geometry: SceneGeometry, scan_w: np.ndarray, camera: Camera, R, t) -> Splats:
    """Project scan points through the THIN_PRISM_FISHEYE camera; keep in-image, visible points."""
    xyz = scan_w @ R.T + t
    in_front = xyz[:, 2] > 1e-6
    angle = np.arctan(np.hypot(xyz[:, 0], xyz[:, 1]) / np.where(in_front, xyz[:, 2], 1.0))
    # Beyond the field of view the distortion polynomial is meaningless (it may fold back inside).
    candidates = np.flatnonzero(in_front & (angle <= _max_field_angle(camera) + 0.02))
    xy = camera.project(xyz[candidates])
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < camera.width) & (xy[:, 1] >= 0) & (xy[:, 1] < camera.height)
    candidates, xy = candidates[inside], xy[inside]
    visible = geometry.visible(scan_w[candidates], -R.T @ t, _OCCLUSION_THRESHOLD_M)
    candidates, xy = candidates[visible], xy[visible]
    ix = np.floor(xy[:, 0]).astype(np.int64)
    iy = np.floor(xy[:, 1]).astype(np.int64)
    return Splats(candidates, iy * camera.width + ix, xyz[candidates, 2])


def splat_depth(splats: Splats, width: int, height: int, mask: np.ndarray | None) -> np.ndarray:
    """Min z-buffer of one-pixel splats; +inf = no GT; GT removed where mask == 2 (kEvalObs)."""
    depth = np.full(width * height, np.inf, dtype=np.float32)
    pixel, z = splats.pixel, splats.z.astype(np.float32)
    if mask is not None:
        keep = mask.reshape(-1)[pixel] != MASK_EVAL_OBS
        pixel, z = pixel[keep], z[keep]
    np.minimum.at(depth, pixel, z)
    return depth.reshape(height, width)


# ==================================================================================================
# Masks (distorted geometry)
# ==================================================================================================
def make_mask(
    geometry: SceneGeometry, camera: Camera, R, t, rays_cam: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    # rays_cam: pixel_centre_rays(camera), shared by all images of the camera
    """uint8 mask: 1 (kObs) on window glass (reflections: geometry right, colour unreliable),
    2 (kEvalObs) on a transient object region (e.g. a passer-by), 0 elsewhere."""
    W, H = camera.width, camera.height
    materials = geometry.cast_camera_rays(rays_cam, R, t, want_colour=False)[1]
    mask = np.where(materials == GLASS, MASK_OBS, MASK_NONE).astype(np.uint8)
    # A passer-by: a person-sized ellipse standing in the lower half of the image.
    cx, cy = rng.uniform(0.15, 0.85) * W, rng.uniform(0.62, 0.8) * H
    ax, ay = rng.uniform(0.025, 0.045) * W, rng.uniform(0.10, 0.16) * H
    x0, x1 = max(0, int(cx - ax)), min(W, int(cx + ax) + 1)
    y0, y1 = max(0, int(cy - ay)), min(H, int(cy + ay) + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    person = ((xx + 0.5 - cx) / ax) ** 2 + ((yy + 0.5 - cy) / ay) ** 2 <= 1.0
    mask[y0:y1, x0:x1][person] = MASK_EVAL_OBS
    return mask


# ==================================================================================================
# Sparse COLMAP model (keypoints, tracks) consistent in both calibrations
# ==================================================================================================
_KEYPOINT_SAMPLES_PER_IMAGE = 160
_KEYPOINT_NOISE_PX = 0.3  # at scale 1; keypoint localisation noise of the POINTS2D entries
_UNTRACKED_FRACTION = 0.4  # POINTS2D entries with POINT3D_ID -1, relative to tracked ones


@dataclass
class CaptureImage:
    name: str  # DSC_xxxx.JPG
    image_id: int
    camera_id: int
    R: np.ndarray
    t: np.ndarray
    pose_text: str

    @property
    def centre(self) -> np.ndarray:
        return -self.R.T @ self.t


@dataclass
class SparseModel:
    keypoints_u: list  # per image (n,2) undistorted COLMAP pixels
    keypoints_d: list  # per image (n,2) distorted COLMAP pixels
    point_ids: list  # per image (n,) int64, -1 = untracked
    xyz: np.ndarray  # (P,3) world
    colours: np.ndarray  # (P,3) uint8
    ids: np.ndarray  # (P,) POINT3D_ID
    errors: np.ndarray  # (P,) mean reprojection error, px
    tracks: list  # per point [(image_id, point2D_idx), ...]


def build_sparse_model(
    geometry: SceneGeometry,
    images: list[CaptureImage],
    undistorted: list[Camera],
    distorted: list[Camera],
    rng: np.random.Generator,
    empty_image: int,
    scale: float,
) -> SparseModel:
    """Keypoints on the true surfaces seen by >= 2 images, with noisy POINTS2D, -1 keypoints and
    one image without any keypoint (an EMPTY POINTS2D line, which breaks naive parsers)."""
    pool, pool_colours = [], []
    for i, im in enumerate(images):
        if i == empty_image:
            continue
        cam = undistorted[im.camera_id]
        xy = rng.uniform([0.0, 0.0], [cam.width, cam.height], (_KEYPOINT_SAMPLES_PER_IMAGE, 2))
        dirs = np.c_[cam.unproject(xy), np.ones(len(xy))] @ im.R
        t, pts, colours = geometry.cast_rays(np.broadcast_to(im.centre, dirs.shape), dirs)
        hit = np.isfinite(t)
        pool.append(pts[hit])
        pool_colours.append(colours[hit])
    points = np.concatenate(pool)
    colours = np.concatenate(pool_colours)
    # The text file keeps 6 significant digits; observations must match what readers get back.
    points = np.array([[float(format_float(v)) for v in p] for p in points]).reshape(-1, 3)

    observed = []
    counts = np.zeros(len(points), dtype=np.int64)
    for i, im in enumerate(images):
        if i == empty_image:
            observed.append((np.zeros(0, np.int64), np.zeros((0, 2))))
            continue
        cam = undistorted[im.camera_id]
        xyz = points @ im.R.T + im.t
        front = xyz[:, 2] > 0.1
        xy = np.full((len(points), 2), -1.0)
        xy[front] = cam.project(xyz[front])
        inside = front & np.all((xy >= 1.0) & (xy <= [cam.width - 1.0, cam.height - 1.0]), axis=1)
        idx = np.flatnonzero(inside)
        idx = idx[geometry.visible(points[idx], im.centre, _OCCLUSION_THRESHOLD_M)]
        observed.append((idx, xy[idx]))
        counts[idx] += 1

    tracked = np.flatnonzero(counts >= 2)
    new_index = np.full(len(points), -1)
    new_index[tracked] = np.arange(len(tracked))
    ids = np.sort(rng.choice(np.arange(1, 3 * len(tracked) + 10), len(tracked), replace=False))
    tracks: list = [[] for _ in tracked]
    residuals: list = [[] for _ in tracked]
    model = SparseModel([], [], [], points[tracked], colours[tracked], ids, np.zeros(len(tracked)), tracks)
    noise = _KEYPOINT_NOISE_PX * max(scale, 0.25)
    for i, im in enumerate(images):
        cam_u, cam_d = undistorted[im.camera_id], distorted[im.camera_id]
        idx, xy = observed[i]
        keep = new_index[idx] >= 0
        idx, xy_exact = new_index[idx[keep]], xy[keep]
        n_untracked = 0 if i == empty_image else int(round(_UNTRACKED_FRACTION * len(idx))) + 3
        xy_obs = xy_exact + rng.normal(0.0, noise, xy_exact.shape)
        xy_free = rng.uniform([0.0, 0.0], [cam_u.width, cam_u.height], (n_untracked, 2))
        xy_all = np.clip(np.concatenate([xy_obs, xy_free]), 0.5, [cam_u.width - 0.5, cam_u.height - 0.5])
        pid_all = np.concatenate([idx, np.full(n_untracked, -1)])
        order = rng.permutation(len(pid_all))
        xy_all, pid_all = xy_all[order], pid_all[order]
        # What the text file holds (6 significant digits) is what the tracks must agree with.
        xy_all = np.array([[float(format_float(v)) for v in p] for p in xy_all]).reshape(-1, 2)
        xy_dist = undistorted_to_distorted(xy_all, cam_u, cam_d)
        model.keypoints_u.append(xy_all)
        model.keypoints_d.append(xy_dist)
        model.point_ids.append(np.where(pid_all >= 0, ids[np.maximum(pid_all, 0)], -1))
        exact = cam_u.project(model.xyz @ im.R.T + im.t) if len(model.xyz) else np.zeros((0, 2))
        for k in np.flatnonzero(pid_all >= 0):
            p = pid_all[k]
            tracks[p].append((im.image_id, int(k)))
            residuals[p].append(float(np.hypot(*(xy_all[k] - exact[p]))))
    model.errors = np.array([np.mean(r) for r in residuals]) if residuals else np.zeros(0)
    for track in tracks:
        track.sort()
    return model
