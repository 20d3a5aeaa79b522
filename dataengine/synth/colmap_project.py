"""Synthetic COLMAP projects of the analytic facade: the input a user's own capture gives the engine.

``generate_colmap_project`` writes, under ``<root>/<scene>``::

    images/<model>/<random>.jpg           distorted photos, rendered through the exact camera model
                                          (2x2 supersampled rays via pycolmap's cam_from_img)
    sparse/0/{cameras,images,points3D}.{bin|txt}   the model (binary or text), shuffled names/ids
    masks/<NAME>.png                      COLMAP masks (0 = ignore) for some photos
    dense/sparse/...                      PINHOLE model of `image_undistorter` (same names/poses)
    dense/stereo/depth_maps/<NAME>.geometric.bin   MVS-like depth (COLMAP's binary format) at half
                                          the undistorted size: 0.2 % noise, holes, 2 % outliers
    synth_colmap_truth.json               analytic geometry and generator parameters (not COLMAP's)

Names are random (capture order is lost, as for an unordered photo collection). The model's units
are the facade's metres times a seeded factor (`units_per_metre` in the truth file): a COLMAP
reconstruction is only up to scale. Poses in the truth geometry's frame are the model's with the
translation divided by that factor.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image as PILImage

from dataengine.mvs import write_depth_map
from dataengine.synth.scene import REFERENCE_THIN_PRISM, SceneGeometry, build_facade, capture_poses
from dataengine.undistort import SourceCamera, distort, pycolmap_cam_from_img, undistorted_field

TRUTH_FILE = "synth_colmap_truth.json"
TRUTH_FORMAT = "dataengine.synth.colmap_project/1"
BASE_WIDTH, BASE_HEIGHT = 1600, 1200  # photo size at scale 1
DEFAULT_MODELS = ("OPENCV", "SIMPLE_RADIAL", "OPENCV_FISHEYE")
_REFERENCE_FOCAL = float(REFERENCE_THIN_PRISM[0])  # the ETH3D focal build_facade's texture scale refers to
_OUTLIER_FRACTION = 0.02
_NOISE = 0.002


def _camera(model: str, camera_id: int, width: int, height: int, rng: np.random.Generator) -> SourceCamera:
    """A plausible calibration of each model at this photo size."""
    cx = width / 2 + rng.normal(0, 0.01 * width)
    cy = height / 2 + rng.normal(0, 0.01 * height)
    f = width * rng.uniform(0.8, 0.9)
    if model == "SIMPLE_PINHOLE":
        params = [f, cx, cy]
    elif model == "PINHOLE":
        params = [f, f * 1.002, cx, cy]
    elif model == "SIMPLE_RADIAL":
        params = [f, cx, cy, rng.uniform(-0.12, -0.08)]
    elif model == "RADIAL":
        params = [f, cx, cy, rng.uniform(-0.12, -0.08), 0.02]
    elif model == "OPENCV":
        params = [f, f * 1.001, cx, cy, rng.uniform(-0.15, -0.1), 0.04, 4e-4, -3e-4]
    elif model == "FULL_OPENCV":
        params = [f, f * 1.001, cx, cy, -0.12, 0.03, 4e-4, -3e-4, 0.002, 0.01, 0.003, 0.001]
    elif model == "OPENCV_FISHEYE":
        f = width * rng.uniform(0.42, 0.48)
        params = [f, f, cx, cy, 0.03, -0.01, 0.002, -0.0005]
    elif model == "SIMPLE_RADIAL_FISHEYE":
        f = width * 0.45
        params = [f, cx, cy, 0.03]
    elif model == "THIN_PRISM_FISHEYE":
        params = [f, f, cx, cy, 0.05, 0.02, 1e-4, 2e-4, -0.01, 0.005, 1e-4, 2e-4]
    elif model == "FOV":
        params = [f, f, cx, cy, 0.5]
    else:
        raise ValueError(f"synthetic COLMAP projects support {sorted(_SUPPORTED)}, got {model!r}")
    return SourceCamera(camera_id, model, width, height, tuple(float(p) for p in params))


_SUPPORTED = (
    "SIMPLE_PINHOLE",
    "PINHOLE",
    "SIMPLE_RADIAL",
    "RADIAL",
    "OPENCV",
    "FULL_OPENCV",
    "OPENCV_FISHEYE",
    "SIMPLE_RADIAL_FISHEYE",
    "THIN_PRISM_FISHEYE",
    "FOV",
)


def _focal(cam: SourceCamera) -> float:
    return cam.params[0]


def pixel_rays(cam: SourceCamera, supersample: int = 1) -> np.ndarray:
    """Normalized rays (H, W, s*s, 2) through s x s sub-pixel positions of every pixel."""
    off = (np.arange(supersample) + 0.5) / supersample
    oy, ox = np.meshgrid(off, off, indexing="ij")
    jj, ii = np.meshgrid(np.arange(cam.width, dtype=np.float64), np.arange(cam.height, dtype=np.float64))
    xs = (jj[:, :, None] + ox.ravel()).ravel()
    ys = (ii[:, :, None] + oy.ravel()).ravel()
    rays = pycolmap_cam_from_img(cam, np.c_[xs, ys])
    return rays.reshape(cam.height, cam.width, supersample * supersample, 2)


def render_photo(geometry: SceneGeometry, cam: SourceCamera, R, t, supersample: int = 2) -> np.ndarray:
    """(H, W, 3) uint8 photo of a camera of any model: the mean colour of s x s rays per pixel."""
    rays = pixel_rays(cam, supersample)
    _, _, rgb = geometry.cast_camera_rays(rays, R, t)
    return np.clip(np.rint(rgb.astype(np.float64).mean(axis=2)), 0, 255).astype(np.uint8)


def dense_camera(cam: SourceCamera, camera_id: int) -> SourceCamera:
    """The PINHOLE camera `colmap image_undistorter` would give: same focal lengths, the
    blank-free field of the photo."""
    x0, x1, y0, y1 = undistorted_field(cam, "valid")
    fx = cam.params[0]
    fy = (
        cam.params[0]
        if cam.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE")
        else cam.params[1]
    )
    width, height = int(np.floor((x1 - x0) * fx)), int(np.floor((y1 - y0) * fy))
    return SourceCamera(camera_id, "PINHOLE", width, height, (fx, fy, -x0 * fx, -y0 * fy))


def _write_text_model(model_dir: Path, cameras, images, points) -> None:
    """cameras/images/points3D.txt at full double precision (repr), COLMAP's text layout."""
    model_dir.mkdir(parents=True, exist_ok=True)
    with open(model_dir / "cameras.txt", "w") as fh:
        fh.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n")
        for cam in cameras:
            fh.write(
                f"{cam.camera_id} {cam.model} {cam.width} {cam.height} "
                + " ".join(repr(float(p)) for p in cam.params)
                + "\n"
            )
    with open(model_dir / "images.txt", "w") as fh:
        fh.write(
            "# Image list with two lines of data per image:\n"
            "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
        )
        for im in sorted(images, key=lambda m: m["image_id"]):
            fh.write(f"{im['image_id']} {im['pose_text']} {im['camera_id']} {im['name']}\n")
            fh.write(
                " ".join(f"{x!r} {y!r} {pid}" for (x, y), pid in zip(im["xy"].tolist(), im["pids"], strict=True)) + "\n"
            )
    with open(model_dir / "points3D.txt", "w") as fh:
        fh.write(
            "# 3D point list with one line of data per point:\n"
            "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
        )
        for pid, xyz, rgb, track in points:
            colour = " ".join(str(int(c)) for c in rgb)
            fh.write(
                f"{pid} "
                + " ".join(repr(float(v)) for v in xyz)
                + f" {colour} 0.5 "
                + " ".join(f"{i} {k}" for i, k in track)
                + "\n"
            )


def convert_model(model_dir: Path, fmt: str) -> None:
    """Rewrite a model in place as binary or text (pycolmap's writers); the other files removed."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(model_dir))
    for p in model_dir.iterdir():
        if p.suffix in (".bin", ".txt"):
            p.unlink()
    (rec.write_binary if fmt == "binary" else rec.write_text)(str(model_dir))


def _pose_text(R_text: str, scale: float) -> tuple[str, np.ndarray, np.ndarray]:
    values = [float(v) for v in R_text.split()]
    q, t = np.array(values[:4]), np.array(values[4:])
    text = " ".join(repr(float(v)) for v in [*q, *(t * scale)])  # the model's units
    w, x, y, z = q / np.linalg.norm(q)
    R = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    return text, R, t  # t in metres (rendering); the text in model units


def generate_colmap_project(
    root: str | Path,
    scene: str = "synth_colmap",
    images: int = 10,
    scale: float = 0.25,
    seed: int = 0,
    models=DEFAULT_MODELS,
    model_format: str = "binary",
    dense: bool = True,
    log=None,
) -> Path:
    """Write a synthetic COLMAP project under <root>/<scene>; deterministic for the arguments."""
    if not scene or "/" in scene or scene in (".", ".."):
        raise ValueError(f"scene name must be a plain folder name, got {scene!r}")
    if images < 3:
        raise ValueError(f"need at least 3 images, got {images}")
    if not 0.05 <= scale <= 2.0:
        raise ValueError(f"scale must be in [0.05, 2] (1 = {BASE_WIDTH}x{BASE_HEIGHT} photos), got {scale}")
    if model_format not in ("binary", "text"):
        raise ValueError(f"model_format must be binary or text, got {model_format!r}")
    models = tuple(models)
    log = log or (lambda message: None)
    rng = np.random.default_rng(seed)
    out = Path(root) / scene
    if out.exists() and any(out.iterdir()):
        if not (out / TRUTH_FILE).is_file():
            raise FileExistsError(f"{out}: exists, is not empty and is not a synthetic COLMAP project")
        shutil.rmtree(out)
    width, height = round(BASE_WIDTH * scale), round(BASE_HEIGHT * scale)
    cameras = [_camera(m, i + 1, width, height, rng) for i, m in enumerate(models)]
    # Texture: the finest wavelength spans ~3 px of the widest-angle camera at 6 m.
    geometry, facade = build_facade(rng, min(_focal(c) for c in cameras) / _REFERENCE_FOCAL)
    unit = float(rng.uniform(0.3, 3.0))  # COLMAP units per metre: the model is up to scale
    poses = capture_poses(rng, images, geometry)
    ids = rng.choice(np.arange(1, 4 * images + 10), images, replace=False)
    frames = []
    camera_of = rng.permutation(np.arange(images) % len(cameras))  # every model, mixed order
    for i in range(images):
        cam = cameras[int(camera_of[i])]
        name = f"{cam.model.lower()}/{rng.integers(0, 16**6):06x}.jpg"
        text, R, t = _pose_text(poses[i][2], unit)
        frames.append(
            {
                "name": name,
                "image_id": int(ids[i]),
                "camera_id": cam.camera_id,
                "cam": cam,
                "pose_text": text,
                "R": R,
                "t": t,
                "order": i,
            }
        )
    if len({f["name"] for f in frames}) != images:
        raise RuntimeError("image name collision; use another seed")
    world_geometry = geometry  # metres; the written model is in metres x unit

    # Photos.
    (out / "images").mkdir(parents=True)
    for f in frames:
        rgb = render_photo(world_geometry, f["cam"], f["R"], f["t"])
        path = out / "images" / f["name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(simplejpeg.encode_jpeg(rgb, quality=95, colorspace="RGB", colorsubsampling="444"))
    log(f"photos: {images} of {width}x{height}, models {', '.join(models)}")

    # Sparse model: surface points seen (unoccluded, inside the photo) by >= 2 images.
    pool = []
    for f in frames:
        xy = rng.uniform([0, 0], [width, height], (150, 2))
        dirs = np.c_[pycolmap_cam_from_img(f["cam"], xy), np.ones(len(xy))] @ f["R"]
        centre = -f["R"].T @ f["t"]
        tt, pts, colours = world_geometry.cast_rays(np.broadcast_to(centre, dirs.shape), dirs)
        pool.append((pts[np.isfinite(tt)], colours[np.isfinite(tt)]))
    xyz = np.concatenate([p for p, _ in pool])
    colours = np.concatenate([c for _, c in pool])
    obs = []
    for f in frames:
        cam_pts = xyz @ f["R"].T + f["t"]
        front = cam_pts[:, 2] > 1e-3
        px = np.full((len(xyz), 2), -1.0)
        px[front] = distort(f["cam"], cam_pts[front, :2] / cam_pts[front, 2:3])
        inside = front & (px[:, 0] > 1) & (px[:, 1] > 1) & (px[:, 0] < width - 1) & (px[:, 1] < height - 1)
        idx = np.flatnonzero(inside)
        idx = idx[world_geometry.visible(xyz[idx], -f["R"].T @ f["t"], 0.01)]
        obs.append((idx, px[idx]))
    counts = np.bincount(np.concatenate([o[0] for o in obs]), minlength=len(xyz))
    tracked = np.flatnonzero(counts >= 2)
    point_id = np.full(len(xyz), -1)
    point_id[tracked] = np.arange(1, len(tracked) + 1) * 3  # sparse ids, as after COLMAP's filtering
    tracks = {int(point_id[p]): [] for p in tracked}
    for f, (idx, px) in zip(frames, obs, strict=True):
        keep = point_id[idx] > 0
        n_free = 5
        xy = np.concatenate(
            [px[keep] + rng.normal(0, 0.3, px[keep].shape), rng.uniform([0, 0], [width, height], (n_free, 2))]
        )
        pids = np.concatenate([point_id[idx[keep]], np.full(n_free, -1)])
        order = rng.permutation(len(pids))
        f["xy"], f["pids"] = xy[order], pids[order].tolist()
        for k, pid in enumerate(f["pids"]):
            if pid > 0:
                tracks[pid].append((f["image_id"], k))
    points = [
        (int(point_id[p]), (xyz[p] + rng.normal(0, 0.002, 3)) * unit, colours[p], sorted(tracks[int(point_id[p])]))
        for p in tracked
    ]
    model_dir = out / "sparse" / "0"
    _write_text_model(model_dir, cameras, frames, points)
    if model_format == "binary":
        convert_model(model_dir, "binary")
    log(f"sparse model ({model_format}): {len(cameras)} cameras, {images} images, {len(points)} points")

    # Masks (COLMAP: masks/NAME.png, 0 = ignore): the lowest fifth of two photos.
    masked = sorted(rng.choice(images, size=min(2, images), replace=False).tolist())
    for i in masked:
        mask = np.full((height, width), 255, dtype=np.uint8)
        mask[int(0.8 * height) :] = 0
        path = out / "masks" / f"{frames[i]['name']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(mask).save(path)

    if dense:
        _write_dense(out, frames, cameras, world_geometry, rng, model_format, unit)
        log(
            f"dense workspace: {images} geometric depth maps (noise {_NOISE:.1%}, holes, "
            f"{_OUTLIER_FRACTION:.0%} outliers)"
        )
    truth = {
        "format": TRUTH_FORMAT,
        "note": "synthetic COLMAP project written by dataengine.synth.colmap_project",
        "generator": {
            "scene": scene,
            "images": images,
            "scale": scale,
            "seed": seed,
            "models": list(models),
            "model_format": model_format,
            "dense": dense,
        },
        "units_per_metre": unit,
        "facade": facade,
        "geometry": world_geometry.to_dict(),
        "capture_order": [f["name"] for f in sorted(frames, key=lambda f: f["order"])],
        "masked": [frames[i]["name"] for i in masked],
    }
    (out / TRUTH_FILE).write_text(json.dumps(truth, indent=1) + "\n")
    return out


def _write_dense(out: Path, frames, cameras, geometry: SceneGeometry, rng, model_format: str, unit: float) -> None:
    dense_cams = {c.camera_id: dense_camera(c, c.camera_id) for c in cameras}
    model_dir = out / "dense" / "sparse"
    pinhole_frames = [{**f, "xy": np.zeros((0, 2)), "pids": []} for f in frames]
    _write_text_model(model_dir, list(dense_cams.values()), pinhole_frames, [])
    if model_format == "binary":
        convert_model(model_dir, "binary")
    maps = out / "dense" / "stereo" / "depth_maps"
    for f in frames:
        cam = dense_cams[f["camera_id"]]
        w, h = cam.width // 2, cam.height // 2  # patch_match_stereo --max_image_size: half size
        sx, sy = w / cam.width, h / cam.height
        fx, fy, cx, cy = cam.params
        K = np.array([[fx * sx, 0, cx * sx - 0.5], [0, fy * sy, cy * sy - 0.5], [0, 0, 1.0]])
        z = geometry.zdepth(K, f["R"], f["t"], w, h)
        depth = np.where(np.isfinite(z), z * unit, 0.0) * (1.0 + rng.normal(0, _NOISE, z.shape))
        for _ in range(6):  # holes: textureless or occluded patches PatchMatch leaves empty
            hw, hh = int(rng.integers(w // 20, w // 6)), int(rng.integers(h // 20, h // 6))
            x0, y0 = int(rng.integers(0, w - hw)), int(rng.integers(0, h - hh))
            depth[y0 : y0 + hh, x0 : x0 + hw] = 0.0
        outliers = rng.random(depth.shape) < _OUTLIER_FRACTION
        depth[outliers] *= rng.uniform(0.5, 0.8, int(outliers.sum()))
        path = maps / f"{f['name']}.geometric.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_depth_map(path, depth.astype(np.float32))
