"""The analytic scene: the facade's geometry (exact depth, renders and ray hits for any camera),
its seeded construction, the ETH3D-like cameras and the capture poses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataengine.camera import (
    PINHOLE,
    THIN_PRISM_FISHEYE,
    Camera,
    format_float,
    qvec_to_rotmat,
    rotmat_to_qvec,
    thin_prism_distort_normalized,
)
from dataengine.eth3d import reference_camera
from dataengine.synth.materials import CONCRETE, DOOR, GLASS, METAL, STONE
from dataengine.synth.raycast import cast_camera_kernel, cast_kernel, pixel_centre_rays, render_pinhole_kernel

TRUTH_FILE = "synth_truth.json"  # generator parameters and analytic geometry, next to the ETH3D folders
TRUTH_FORMAT = "dataengine.synth/1"

# Full-resolution ETH3D DSLR (Nikon D3X) and a real THIN_PRISM_FISHEYE calibration (courtyard).
_REFERENCE = reference_camera()
FULL_WIDTH, FULL_HEIGHT = _REFERENCE.width, _REFERENCE.height
REFERENCE_THIN_PRISM = _REFERENCE.params


# ==================================================================================================
# Scene description and analytic truth
# ==================================================================================================
@dataclass(eq=False)
class SceneGeometry:
    """The analytic facade: exact ray hits, z-depth and renders for any camera.

    All public methods take world-frame quantities and world-to-camera poses
    (``X_cam = R @ X_world + t``, OpenCV axes).
    """

    boxes: np.ndarray  # (nb, 6) facade frame
    box_mat: np.ndarray  # (nb,)
    building: np.ndarray  # (6,)
    openings: np.ndarray  # (no, 5)
    opening_mat: np.ndarray  # (no,)
    ground: np.ndarray  # (4,)
    light: np.ndarray  # (8,)
    facade_from_world_R: np.ndarray  # X_facade = R @ X_world + t
    facade_from_world_t: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.ascontiguousarray(self.boxes, dtype=np.float64).reshape(-1, 6)
        self.box_mat = np.ascontiguousarray(self.box_mat, dtype=np.int64).reshape(-1)
        self.building = np.ascontiguousarray(self.building, dtype=np.float64).reshape(6)
        self.openings = np.ascontiguousarray(self.openings, dtype=np.float64).reshape(-1, 5)
        self.opening_mat = np.ascontiguousarray(self.opening_mat, dtype=np.int64).reshape(-1)
        self.ground = np.ascontiguousarray(self.ground, dtype=np.float64).reshape(4)
        self.light = np.ascontiguousarray(self.light, dtype=np.float64).reshape(8)
        self.facade_from_world_R = np.asarray(self.facade_from_world_R, dtype=np.float64).reshape(3, 3)
        self.facade_from_world_t = np.asarray(self.facade_from_world_t, dtype=np.float64).reshape(3)

    # ---------------------------------------------------------------- serialisation
    @property
    def texture_min_wavelength(self) -> float:
        """Finest texture wavelength (metres); the texture is band-limited above it."""
        return float(self.light[5])

    def to_dict(self) -> dict:
        return {
            "boxes": self.boxes.tolist(),
            "box_materials": self.box_mat.tolist(),
            "building": self.building.tolist(),
            "openings": self.openings.tolist(),
            "opening_materials": self.opening_mat.tolist(),
            "ground": self.ground.tolist(),
            "sun_direction": self.light[:3].tolist(),
            "ambient": float(self.light[3]),
            "diffuse": float(self.light[4]),
            "texture_min_wavelength": float(self.light[5]),
            "ground_floor_height": float(self.light[6]),
            "texture_seed": int(self.light[7]),
            "facade_from_world_R": self.facade_from_world_R.tolist(),
            "facade_from_world_t": self.facade_from_world_t.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SceneGeometry:
        light = [
            *d["sun_direction"],
            d["ambient"],
            d["diffuse"],
            d["texture_min_wavelength"],
            d["ground_floor_height"],
            d["texture_seed"],
        ]
        return cls(
            d["boxes"],
            d["box_materials"],
            d["building"],
            d["openings"],
            d["opening_materials"],
            d["ground"],
            light,
            d["facade_from_world_R"],
            d["facade_from_world_t"],
        )

    @classmethod
    def from_scene_dir(cls, scene_dir: str | Path) -> SceneGeometry:
        """Load the truth of a scene written by ``generate_scene`` (reads ``synth_truth.json``)."""
        path = Path(scene_dir) / TRUTH_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not a synthetic scene (no {TRUTH_FILE})")
        try:
            truth = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        if truth.get("format") != TRUTH_FORMAT:
            raise ValueError(f"{path}: unknown format {truth.get('format')!r}, expected {TRUTH_FORMAT!r}")
        return cls.from_dict(truth["geometry"])

    # ---------------------------------------------------------------- frames
    def facade_arrays(self):
        """The geometry as the tuple the ray-casting kernels take (`raycast`: `facade`)."""
        return (self.boxes, self.box_mat, self.building, self.openings, self.opening_mat, self.ground, self.light)

    def _to_facade(self, points_w: np.ndarray) -> np.ndarray:
        return points_w @ self.facade_from_world_R.T + self.facade_from_world_t

    def to_world(self, points_f: np.ndarray) -> np.ndarray:
        return (points_f - self.facade_from_world_t) @ self.facade_from_world_R

    def _camera_in_facade(self, R: np.ndarray, t: np.ndarray):
        R = np.asarray(R, dtype=np.float64).reshape(3, 3)
        t = np.asarray(t, dtype=np.float64).reshape(3)
        centre_w = -R.T @ t
        R_fc = self.facade_from_world_R @ R.T
        return np.ascontiguousarray(R_fc), self._to_facade(centre_w[None])[0]

    # ---------------------------------------------------------------- ray level
    def _cast(self, origins_w, dirs_w, want_colour: bool):
        origins_w = np.asarray(origins_w, dtype=np.float64).reshape(-1, 3)
        dirs_w = np.asarray(dirs_w, dtype=np.float64).reshape(-1, 3)
        if origins_w.shape != dirs_w.shape:
            raise ValueError(f"origins {origins_w.shape} and dirs {dirs_w.shape} differ in shape")
        o_f = np.ascontiguousarray(self._to_facade(origins_w))
        d_f = np.ascontiguousarray(dirs_w @ self.facade_from_world_R.T)
        n = len(o_f)
        t = np.empty(n)
        mat = np.empty(n, dtype=np.int64)
        rgb = np.zeros((n if want_colour else 0, 3), dtype=np.float32)
        cast_kernel(o_f, d_f, want_colour, self.facade_arrays(), t, mat, rgb)
        return t, mat, rgb

    def cast_rays(self, origins: np.ndarray, dirs: np.ndarray):
        """World rays o + t d -> (t (N,), points (N,3), colours (N,3) uint8).

        ``t`` is in units of ``dirs`` (metres for unit dirs); misses give t = inf, points = nan and
        the sky colour. Colours are the shaded surface colour the renders use.
        """
        t, _, rgb = self._cast(origins, dirs, True)
        hit = np.isfinite(t)
        points = np.full((len(t), 3), np.nan)
        o = np.asarray(origins, dtype=np.float64).reshape(-1, 3)
        d = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
        points[hit] = o[hit] + t[hit, None] * d[hit]
        return t, points, float_to_u8(rgb)

    def materials(self, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
        """Material code (SKY, GROUND, WALL, ..., see MATERIAL_NAMES) hit by each world ray."""
        return self._cast(origins, dirs, False)[1]

    def visible(self, points: np.ndarray, camera_centre: np.ndarray, tolerance: float = 0.01) -> np.ndarray:
        """Whether surface points (N,3) are unoccluded from a camera centre, within ``tolerance`` m
        (the ETH3D pipeline's default occlusion threshold)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        centre = np.asarray(camera_centre, dtype=np.float64).reshape(1, 3)
        dirs = points - centre
        t, _, _ = self._cast(np.broadcast_to(centre, points.shape), dirs, False)
        dist = np.linalg.norm(dirs, axis=1)
        return t >= 1.0 - tolerance / np.maximum(dist, 1e-12)

    # ---------------------------------------------------------------- camera level
    def _render(self, K, R, t, width, height, supersample, want_colour):
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        if abs(K[2, 0]) + abs(K[2, 1]) > 0 or K[2, 2] != 1.0:
            raise ValueError(f"K must have last row [0, 0, 1], got {K[2].tolist()}")
        if supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        R_fc, C_f = self._camera_in_facade(R, t)
        depth = np.empty((int(height), int(width)))
        rgb = np.zeros((int(height), int(width), 3) if want_colour else (0, 0, 3), dtype=np.float32)
        render_pinhole_kernel(
            np.linalg.inv(K),
            R_fc,
            C_f,
            int(width),
            int(height),
            int(supersample),
            want_colour,
            self.facade_arrays(),
            depth,
            rgb,
        )
        return depth, rgb

    def zdepth(self, K, R, t, width: int, height: int) -> np.ndarray:
        """(H,W) float64 camera-axis depth (metres) through the OpenCV pixel centres of a pinhole
        camera (pixel (u,v) integer = centre); inf where the ray hits nothing (sky)."""
        return self._render(K, R, t, width, height, 1, False)[0]

    def render(self, K, R, t, width: int, height: int, supersample: int = 1) -> np.ndarray:
        """(H,W,3) uint8 image of a pinhole camera (OpenCV K), the same way the scene's JPEGs were
        rendered. ``supersample=k`` averages k x k sub-pixel rays (an area filter, e.g. to compare
        with a downscaled image)."""
        return float_to_u8(self._render(K, R, t, width, height, supersample, True)[1])

    def cast_camera_rays(self, rays_n: np.ndarray, R, t, want_colour: bool = True):
        """Camera rays given as pinhole-normalized (x/z, y/z) (..., 2) of a camera with pose (R, t)
        -> (z-depth (...), material (...), colour (..., 3) uint8 or None)."""
        rays_n = np.asarray(rays_n, dtype=np.float64)
        shape = rays_n.shape[:-1]
        flat = np.ascontiguousarray(rays_n.reshape(-1, 2))
        R_fc, C_f = self._camera_in_facade(R, t)
        n = len(flat)
        z = np.empty(n)
        mat = np.empty(n, dtype=np.int64)
        rgb = np.zeros((n if want_colour else 0, 3), dtype=np.float32)
        cast_camera_kernel(flat, R_fc, C_f, want_colour, self.facade_arrays(), z, mat, rgb)
        colour = float_to_u8(rgb).reshape(*shape, 3) if want_colour else None
        return z.reshape(shape), mat.reshape(shape), colour

    def zdepth_camera(self, camera: Camera, R, t) -> np.ndarray:
        """(H,W) z-depth through the COLMAP pixel centres (+0.5) of any camera model, e.g. the
        distorted THIN_PRISM_FISHEYE camera of the GT depth maps; inf = no surface."""
        return self.cast_camera_rays(pixel_centre_rays(camera), R, t, want_colour=False)[0]


def float_to_u8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * np.float32(255.0)), 0, 255).astype(np.uint8)


# ==================================================================================================
# Scene construction (seeded)
# ==================================================================================================
# The texture's finest wavelength spans this many pixels at this distance (metres) in the
# undistorted images, so neighbouring views sample consistent colours (no aliasing) while the
# images keep realistic high-frequency detail.
_TEXTURE_MIN_WAVELENGTH_PX = 3.0
_TEXTURE_REFERENCE_DISTANCE_M = 6.0


def build_facade(rng: np.random.Generator, scale: float) -> tuple[SceneGeometry, dict]:
    """A seeded facade: wall with recessed windows, a door with steps, balconies, cornice, plinth,
    a lamp post, the ground; metres, facade frame. Returns the geometry and its parameters."""
    width = float(rng.uniform(20.0, 26.0))
    ground_floor, floor_height = 4.0, 3.2
    upper_floors = int(rng.integers(3, 5))
    height = ground_floor + upper_floors * floor_height + 0.8
    columns = int(width // 2.7)
    pitch = width / columns
    centre_col = columns // 2
    recess = float(rng.uniform(0.22, 0.30))
    window_w = float(rng.uniform(1.1, 1.3))
    balcony_floors = {1: centre_col, 2 + int(rng.integers(0, upper_floors - 1)): int(rng.choice([1, columns - 2]))}

    openings, opening_mat = [], []
    for col in range(columns):
        xc = -width / 2 + pitch * (col + 0.5)
        if col == centre_col:  # entrance door, reached by three steps
            openings.append([xc - 0.8, xc + 0.8, 0.5, 3.1, recess + 0.15])
            opening_mat.append(DOOR)
        else:
            openings.append([xc - 0.75, xc + 0.75, 0.9, 3.1, recess])
            opening_mat.append(GLASS)
        for floor in range(1, upper_floors + 1):
            z_floor = ground_floor + (floor - 1) * floor_height
            z0 = z_floor if balcony_floors.get(floor) == col else z_floor + 0.9  # balcony door
            openings.append([xc - window_w / 2, xc + window_w / 2, z0, z_floor + 2.35, recess])
            opening_mat.append(GLASS)

    x_door = -width / 2 + pitch * (centre_col + 0.5)
    boxes, box_mat = [], []

    def box(x0, y0, z0, x1, y1, z1, mat):
        boxes.append([x0, y0, z0, x1, y1, z1])
        box_mat.append(mat)

    box(-width / 2 - 0.05, -0.06, 0.0, width / 2 + 0.05, 0.0, 0.45, CONCRETE)  # plinth
    box(-width / 2 - 0.3, -0.45, height - 0.65, width / 2 + 0.3, 0.0, height - 0.3, STONE)  # cornice
    for step in range(3):  # entrance steps
        box(x_door - 1.1, -0.75 + 0.25 * step, 0.17 * step, x_door + 1.1, 0.0, 0.17 * (step + 1), CONCRETE)
    for floor, col in balcony_floors.items():
        z = ground_floor + (floor - 1) * floor_height
        xc = -width / 2 + pitch * (col + 0.5)
        x0, x1, y0 = xc - 1.6, xc + 1.6, -1.3
        box(x0, y0, z - 0.18, x1, 0.0, z, CONCRETE)  # slab
        box(x0, y0, z, x1, y0 + 0.1, z + 1.0, CONCRETE)  # front parapet
        box(x0, y0, z, x0 + 0.1, 0.0, z + 1.0, CONCRETE)  # side parapets
        box(x1 - 0.1, y0, z, x1, 0.0, z + 1.0, CONCRETE)
    x_lamp = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.22, 0.38) * width)
    box(x_lamp - 0.07, -3.57, 0.0, x_lamp + 0.07, -3.43, 4.2, METAL)  # lamp post
    box(x_lamp - 0.25, -3.75, 4.2, x_lamp + 0.25, -3.25, 4.55, METAL)

    sun_azimuth = np.radians(rng.uniform(-50.0, 50.0))
    sun_elevation = np.radians(rng.uniform(30.0, 50.0))
    sun = [
        np.sin(sun_azimuth) * np.cos(sun_elevation),
        -np.cos(sun_azimuth) * np.cos(sun_elevation),
        np.sin(sun_elevation),
    ]
    min_wavelength = _TEXTURE_MIN_WAVELENGTH_PX * _TEXTURE_REFERENCE_DISTANCE_M / (REFERENCE_THIN_PRISM[0] * scale)
    light = [*sun, 0.38, 0.72, min_wavelength, ground_floor, int(rng.integers(0, 2**20))]

    yaw = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(yaw), np.sin(yaw)
    facade_from_world_R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    facade_from_world_t = np.array([rng.uniform(-40, 40), rng.uniform(-40, 40), rng.uniform(-3, 3)])
    geometry = SceneGeometry(
        boxes=np.array(boxes),
        box_mat=np.array(box_mat),
        building=np.array([-width / 2, 0.0, 0.0, width / 2, 14.0, height]),
        openings=np.array(openings),
        opening_mat=np.array(opening_mat),
        ground=np.array([-50.0, 50.0, -50.0, 30.0]),
        light=np.array(light, dtype=np.float64),
        facade_from_world_R=facade_from_world_R,
        facade_from_world_t=facade_from_world_t,
    )
    params = {
        "width_m": width,
        "height_m": height,
        "upper_floors": upper_floors,
        "window_columns": columns,
        "recess_depth_m": recess,
        "lamp_post_x_m": x_lamp,
        "balconies": [{"floor": f, "column": c} for f, c in sorted(balcony_floors.items())],
    }
    return geometry, params


def distorted_cameras(rng: np.random.Generator, count: int, scale: float) -> list[Camera]:
    """THIN_PRISM_FISHEYE cameras (one per focus setting) around the real ETH3D calibration,
    quantised to the 6 significant digits the text files hold."""
    width, height = round(FULL_WIDTH * scale), round(FULL_HEIGHT * scale)
    ref = REFERENCE_THIN_PRISM
    cameras = []
    for camera_id in range(count):
        fx = ref[0] * scale * (1.0 + rng.normal(0.0, 0.003))
        fy = fx * (ref[1] / ref[0]) * (1.0 + rng.normal(0.0, 2e-4))
        cx = (ref[2] - FULL_WIDTH / 2 + rng.normal(0.0, 8.0)) * scale + width / 2
        cy = (ref[3] - FULL_HEIGHT / 2 + rng.normal(0.0, 8.0)) * scale + height / 2
        k1, k2 = ref[4] + rng.normal(0, 0.004), ref[5] + rng.normal(0, 0.006)
        p1, p2 = ref[6] + rng.normal(0, 2e-5), ref[7] + rng.normal(0, 1e-4)
        k3, k4 = ref[8] + rng.normal(0, 0.008), ref[9] + rng.normal(0, 0.015)
        sx1, sy1 = ref[10] + rng.normal(0, 5e-5), ref[11] + rng.normal(0, 1e-4)
        params = [fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, sx1, sy1]
        cameras.append(Camera(camera_id, THIN_PRISM_FISHEYE, width, height, [float(format_float(p)) for p in params]))
    return cameras


def undistorted_camera(distorted: Camera) -> Camera:
    """The PINHOLE camera ETH3D's undistortion produces: same focal length, and the largest
    centred size whose every pixel centre maps inside the distorted image (no blank pixels)."""
    W, H = distorted.width, distorted.height
    fx, fy, cx, cy = distorted.params[:4]
    n = 4096
    xs, ys = np.linspace(0.5, W - 0.5, n), np.linspace(0.5, H - 0.5, n)

    def pinhole(xy):  # distorted pixels -> pinhole pixels with the same f and c
        return distorted.unproject(xy) * [fx, fy] + [cx, cy]

    left = pinhole(np.c_[np.full(n, 0.5), ys])[:, 0].max()
    right = pinhole(np.c_[np.full(n, W - 0.5), ys])[:, 0].min()
    top = pinhole(np.c_[xs, np.full(n, 0.5)])[:, 1].max()
    bottom = pinhole(np.c_[xs, np.full(n, H - 0.5)])[:, 1].min()
    width, height = int(np.floor(right - left)), int(np.floor(bottom - top))
    centre_x, centre_y = 0.5 * (left + right), 0.5 * (top + bottom)
    for _ in range(200):
        cx_u = float(format_float(cx - (centre_x - width / 2)))
        cy_u = float(format_float(cy - (centre_y - height / 2)))
        camera = Camera(distorted.camera_id, PINHOLE, width, height, [fx, fy, cx_u, cy_u])
        if _maps_inside(camera, distorted):
            return camera
        width, height = width - 2, height - 2
    raise RuntimeError(f"could not fit an undistorted image inside the distorted camera {distorted}")


def undistorted_to_distorted(xy_undistorted: np.ndarray, undistorted: Camera, distorted: Camera) -> np.ndarray:
    """COLMAP pixels of the undistorted PINHOLE image -> COLMAP pixels of the distorted image."""
    return thin_prism_distort_normalized(undistorted.unproject(xy_undistorted), distorted.params)


def _maps_inside(undistorted: Camera, distorted: Camera) -> bool:
    W, H = undistorted.width, undistorted.height
    xs, ys = np.arange(W) + 0.5, np.arange(H) + 0.5
    border = np.concatenate(
        [
            np.c_[xs, np.full(W, 0.5)],
            np.c_[xs, np.full(W, H - 0.5)],
            np.c_[np.full(H, 0.5), ys],
            np.c_[np.full(H, W - 0.5), ys],
        ]
    )
    xy = undistorted_to_distorted(border, undistorted, distorted)
    return bool(np.all((xy >= 0.5) & (xy <= [distorted.width - 0.5, distorted.height - 0.5])))


def capture_poses(
    rng: np.random.Generator, count: int, geometry: SceneGeometry
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """World-to-camera poses along a hand-held capture arc in front of the facade, in name order:
    consecutive views overlap strongly; modest pitch, yaw and roll. Each pose is (R, t, text) with
    R, t exactly what a reader reconstructs from ``text`` (the images.txt "QW QX QY QZ TX TY TZ")."""
    radius = rng.uniform(10.5, 12.5)
    span = np.radians(min(70.0, 10.0 + 4.0 * (count - 1)))
    angles = np.linspace(-span / 2, span / 2, count) + rng.normal(0, np.radians(0.6), count)
    poses = []
    for a in angles:
        centre = np.array([radius * np.sin(a), 2.0 - radius * np.cos(a), rng.uniform(1.45, 1.9)])
        centre[:2] += rng.normal(0, 0.25, 2)
        target = np.array([0.55 * centre[0] + rng.normal(0, 0.8), 0.0, rng.uniform(2.0, 4.5)])
        forward = (target - centre) / np.linalg.norm(target - centre)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        roll = rng.normal(0, np.radians(1.5))
        cr, sr = np.cos(roll), np.sin(roll)
        right, down = cr * right + sr * down, -sr * right + cr * down
        cam_from_facade = np.stack([right, down, forward])
        R = cam_from_facade @ geometry.facade_from_world_R
        centre_w = geometry.to_world(centre[None])[0]
        poses.append(_quantised_pose(R, -R @ centre_w))
    return poses


def _quantised_pose(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The pose exactly as a reader of the 6-significant-digit images.txt line reconstructs it."""
    text = " ".join(format_float(v) for v in [*rotmat_to_qvec(R), *t])
    values = np.array([float(v) for v in text.split()])
    return qvec_to_rotmat(values[:4]), values[4:], text
