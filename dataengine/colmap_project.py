"""Any COLMAP project (as COLMAP writes it) → per-frame records the build renders into shards.

Layout of one scene (DIR itself, or each subfolder of DIR):

    images/<NAME>                    the original (distorted) photos; NAME may hold subfolders
    sparse/0/ or sparse/             cameras, images, points3D: .bin or .txt (read by pycolmap)
    masks/<NAME>.png (or <stem>.png) optional, COLMAP's convention: 0 = ignore this pixel
    dense/ (or dense/0/)             optional `image_undistorter` + `patch_match_stereo` workspace:
      sparse/                          the undistorted PINHOLE model (same image names and poses)
      stereo/depth_maps/<NAME>.geometric.bin | .photometric.bin

Every camera model pycolmap reads is accepted (undistort.py maps it to a pinhole camera).
Depth per frame: COLMAP MVS (geometric preferred) when present, else z-buffered sparse points.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataengine.errors import BadInputError
from dataengine.undistort import SourceCamera

log = logging.getLogger(__name__)

DEPTH_MODES = ("auto", "mvs", "sparse", "laser")
MODEL_FILES = ("cameras", "images", "points3D")
LAYOUT_HINT = (
    "a COLMAP project holds images/ and sparse/0/ (or sparse/) with cameras, images and "
    "points3D as .bin or .txt, e.g. from `colmap mapper` (see docs/own-captures.md)"
)


@dataclass
class ColmapFrame:
    scene: str
    name: str  # the image name in the model (relative to images/, may hold subfolders)
    image_id: int
    image_path: Path
    camera_id: int
    camera: SourceCamera
    rotation: np.ndarray  # world-to-camera (metric_scale applied to translation)
    translation: np.ndarray
    observed: np.ndarray  # indices into ColmapScene.points_xyz
    mask_path: Path | None
    mvs_path: Path | None  # the depth map used (geometric preferred) when depth_source == "mvs"
    dense_camera: SourceCamera | None  # its PINHOLE camera from dense/sparse
    depth_source: str  # "mvs" or "sparse"
    neighbour_maps: list = field(default_factory=list)  # (map, camera, R, t) the consistency filter reads
    rig_frame: str | None = None  # pycolmap >= 3.12: the id of the frame (rig shot) the image belongs to

    def cache_ident(self) -> list:
        """Everything of the inputs that changes this frame's render (for the build's cache key).
        Files by size and change times (a rewrite moves ctime even when mtime is restored); the
        sparse points by the build (dataengine.frames.frame_cache_path hashes the coordinates)."""
        from dataengine.frames import stat_key

        return [
            "colmap",
            self.scene,
            self.name,
            stat_key(self.image_path, full=True),
            stat_key(self.mask_path, full=True),
            stat_key(self.mvs_path, full=True),
            [self.camera.model, self.camera.width, self.camera.height, list(self.camera.params)],
            None
            if self.dense_camera is None
            else [self.dense_camera.model, self.dense_camera.width, self.dense_camera.height],
            None if self.dense_camera is None else list(self.dense_camera.params),
            self.rotation.tolist(),
            self.translation.tolist(),
            self.depth_source,
            # the consistency filter reads each neighbour's map, camera and pose
            [
                [stat_key(p, full=True), list(c.params), np.asarray(r).tolist(), np.asarray(t).tolist()]
                for p, c, r, t in self.neighbour_maps
            ],
        ]


@dataclass
class ColmapScene:
    name: str
    directory: Path
    model_dir: Path
    model_format: str  # "binary" or "text"
    frames: list[ColmapFrame]
    points_xyz: np.ndarray  # (P, 3), metric_scale applied
    units: str
    scale: float = 1.0  # --metric-scale (1 = COLMAP's own units); dense views stay unscaled
    skipped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dense_views: dict = field(default_factory=dict)  # frame name → (mvs path, dense camera, R, t)
    mvs_neighbours: dict = field(default_factory=dict)  # frame name → covisible MVS frame names
    rig: dict | None = None  # rig_members(): how the images group into rig shots, None = no rig

    def covisibility(self, frames: list[ColmapFrame] | None = None) -> np.ndarray:
        """(n, n) int64: 3-D points shared by each pair of frames (diagonal: points seen)."""
        frames = self.frames if frames is None else frames
        n, p = len(frames), len(self.points_xyz)
        incidence = np.zeros((n, max(p, 1)), dtype=np.float32)
        for i, f in enumerate(frames):
            incidence[i, f.observed] = 1.0
        return np.rint(incidence @ incidence.T).astype(np.int64)


def model_dir_of(scene_dir: Path) -> Path | None:
    """sparse/0 or sparse, whichever holds a model (cameras.bin or cameras.txt)."""
    for cand in (scene_dir / "sparse" / "0", scene_dir / "sparse"):
        if (cand / "cameras.bin").is_file() or (cand / "cameras.txt").is_file():
            return cand
    return None


def list_colmap_scenes(root: Path) -> list[tuple[str, Path]]:
    """(name, directory) of every COLMAP project: root itself, else its subfolders (sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"{root}: COLMAP root not found; {LAYOUT_HINT}", root)
    if model_dir_of(root) is not None:
        return [(root.resolve().name, root)]
    return [(p.name, p) for p in sorted(root.iterdir()) if p.is_dir() and model_dir_of(p) is not None]


def _model_format(model_dir: Path) -> str:
    if (model_dir / "cameras.bin").is_file():
        missing = [f"{n}.bin" for n in MODEL_FILES if not (model_dir / f"{n}.bin").is_file()]
        if missing:
            raise BadInputError(f"{model_dir}: binary model lacks {', '.join(missing)}; {LAYOUT_HINT}", model_dir)
        return "binary"
    missing = [f"{n}.txt" for n in MODEL_FILES if not (model_dir / f"{n}.txt").is_file()]
    if missing:
        raise BadInputError(f"{model_dir}: text model lacks {', '.join(missing)}; {LAYOUT_HINT}", model_dir)
    return "text"


def read_reconstruction(model_dir: Path):
    """pycolmap.Reconstruction of a binary or text model; errors name the file (and line)."""
    import pycolmap

    fmt = _model_format(model_dir)
    try:
        return pycolmap.Reconstruction(str(model_dir)), fmt
    except Exception as exc:  # pycolmap raises RuntimeError / ValueError with its own message
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if fmt == "text":
        # Our line-by-line parser says which line is wrong (it knows the classic models).
        from dataengine.colmap_text import read_cameras_txt, read_images_txt, read_points3d_txt

        read_cameras_txt(model_dir / "cameras.txt")
        read_images_txt(model_dir / "images.txt")
        read_points3d_txt(model_dir / "points3D.txt")
    raise BadInputError(
        f"{model_dir}: pycolmap cannot read this {fmt} model ({reason}); re-export it with `colmap model_converter`",
        model_dir,
    )


def _pose_file(model_dir: Path, image_id: int) -> str:
    """Where an image's pose lives, for errors: frames.txt/.bin when the model has rigs and frames
    (COLMAP >= 3.12: the image's pose is its frame's), else the images file (text: with the line)."""
    for name in ("frames.txt", "frames.bin"):
        if (model_dir / name).is_file():
            return str(model_dir / name)
    if (model_dir / "images.txt").is_file():
        lineno = 0
        with open(model_dir / "images.txt", encoding="utf-8", errors="replace") as fh:
            for lineno, text in enumerate(fh, 1):
                tok = text.split()
                if len(tok) >= 10 and not text.startswith("#") and tok[0] == str(image_id):
                    return f"{model_dir / 'images.txt'}:{lineno}"
        return str(model_dir / "images.txt")
    return str(model_dir / "images.bin")


def _quaternion_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix of a unit quaternion in pycolmap's (x, y, z, w) order."""
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


NORMALISE_BEYOND = 1e-5


def _pose(image, model_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t). pycolmap turns a non-unit quaternion into a scaled, non-orthonormal
    matrix and `0 0 0 0` into a pose: the same rule as the ETH3D reader (dataengine.colmap_text) applies —
    a norm off by more than QUATERNION_TOLERANCE is an error, a smaller one is normalised."""
    from dataengine.colmap_text import QUATERNION_TOLERANCE

    cfw = image.cam_from_world
    cfw = cfw() if callable(cfw) else cfw  # a method in pycolmap 4.x, a property in 3.x
    m = np.asarray(cfw.matrix(), dtype=np.float64)
    q = np.asarray(cfw.rotation.quat, dtype=np.float64)
    norm = float(np.linalg.norm(q))
    if not (math.isfinite(norm) and abs(norm - 1.0) <= QUATERNION_TOLERANCE) or not np.isfinite(m).all():
        where = _pose_file(model_dir, int(image.image_id)) if model_dir is not None else "the model"
        raise BadInputError(
            f"{where}: quaternion of image {image.image_id} ({image.name}) has norm {norm:.6g}, not 1 "
            f"(COLMAP writes unit quaternions; tolerance {QUATERNION_TOLERANCE:g}); fix the pose or re-export "
            f"the model with `colmap model_converter`",
            model_dir,
        )
    R = m[:, :3].copy()
    # Within the tolerance: the rotation of the normalised quaternion. Below NORMALISE_BEYOND (text
    # models round quaternions; R is then orthonormal to ~2e-5, far inside the trainer's 1e-4 check)
    # pycolmap's matrix is kept, so the shards of such models stay byte-identical.
    if abs(norm - 1.0) > NORMALISE_BEYOND:
        R = _quaternion_matrix(q / norm)
    return R, m[:, 3].copy()


def _model_file(model_dir: Path, fmt: str, stem: str) -> Path:
    return model_dir / f"{stem}.{'txt' if fmt == 'text' else 'bin'}"


MAX_PRINCIPAL_OFFSET = 1.0  # principal point at most one image size outside the image


def _check_camera(model_dir: Path, fmt: str, camera_id: int, cam) -> None:
    """A camera the build can undistort: positive size, finite parameters, positive focal lengths
    (a negative one mirrors the image: `--undistort-fov full` then built frames rotated 180 degrees
    against their K and extrinsics) and a principal point near the image."""
    import numpy as np

    where = f"{_model_file(model_dir, fmt, 'cameras')}: camera {camera_id} ({cam.model.name})"
    params = np.asarray(cam.params, dtype=np.float64)
    problem = None
    if cam.width <= 0 or cam.height <= 0:
        problem = f"has size {cam.width}x{cam.height}"
    elif not np.isfinite(params).all():
        problem = f"has non-finite parameters {params.tolist()}"
    else:
        focal = [float(params[i]) for i in cam.focal_length_idxs()]
        cx, cy = (float(params[i]) for i in cam.principal_point_idxs())
        if min(focal) <= 0:
            problem = f"has focal length {', '.join(f'{f:g}' for f in focal)} (must be > 0)"
        elif not (
            -MAX_PRINCIPAL_OFFSET * cam.width <= cx <= (1 + MAX_PRINCIPAL_OFFSET) * cam.width
            and -MAX_PRINCIPAL_OFFSET * cam.height <= cy <= (1 + MAX_PRINCIPAL_OFFSET) * cam.height
        ):
            problem = f"has its principal point ({cx:g}, {cy:g}) far outside its {cam.width}x{cam.height} image"
    if problem:
        raise BadInputError(f"{where} {problem}; fix the calibration (re-run `colmap mapper`)", model_dir)


def _registered(image) -> bool:
    for attr in ("has_pose", "registered"):
        value = getattr(image, attr, None)
        if value is not None:
            return bool(value() if callable(value) else value)
    return True


def _mask_path(scene_dir: Path, name: str) -> Path | None:
    for cand in (scene_dir / "masks" / f"{name}.png", (scene_dir / "masks" / name).with_suffix(".png")):
        if cand.is_file():
            return cand
    return None


def _dense_dir(scene_dir: Path) -> Path | None:
    for cand in (scene_dir / "dense", scene_dir / "dense" / "0"):
        if (cand / "stereo" / "depth_maps").is_dir():
            return cand
    return None


def _read_dense(scene_dir: Path, prefer: str) -> dict:
    """Name → (depth map path, PINHOLE camera, R, t) of the dense workspace (empty without one)."""
    dense = _dense_dir(scene_dir)
    if dense is None:
        return {}
    model_dir = model_dir_of(dense)
    if model_dir is None:
        raise BadInputError(
            f"{dense}: dense workspace without sparse/ (the undistorted model that `colmap image_undistorter` writes)",
            dense,
        )
    rec, _ = read_reconstruction(model_dir)
    kinds = ("geometric", "photometric") if prefer == "geometric" else ("photometric", "geometric")
    out = {}
    for image in rec.images.values():
        if not _registered(image):
            continue
        cam = SourceCamera.from_pycolmap(image.camera_id, rec.cameras[image.camera_id])
        if cam.model not in ("PINHOLE", "SIMPLE_PINHOLE"):
            raise BadInputError(
                f"{model_dir}: camera {cam.camera_id} is {cam.model}; the dense "
                f"workspace's cameras must be undistorted (PINHOLE)",
                model_dir,
            )
        for kind in kinds:
            path = dense / "stereo" / "depth_maps" / f"{image.name}.{kind}.bin"
            if path.is_file():
                out[image.name] = (path, cam, *_pose(image, model_dir))
                break
    return out


def load_colmap_scene(
    name: str,
    scene_dir: Path,
    depth: str = "auto",
    skip_bad: bool = False,
    metric_scale: float | None = None,
    prefer: str = "geometric",
) -> ColmapScene:
    """Parse one project and cross-check photos, masks and depth maps against the model."""
    if depth not in DEPTH_MODES:
        raise ValueError(f"depth must be one of {DEPTH_MODES}, got {depth!r}")
    if depth == "laser":
        raise BadInputError(
            f"{scene_dir}: --depth laser needs ETH3D laser scans (--format eth3d); a "
            f"COLMAP project has --depth mvs or sparse",
            scene_dir,
        )
    if metric_scale is not None and not (math.isfinite(metric_scale) and metric_scale > 0):
        raise ValueError(f"--metric-scale must be a positive number, got {metric_scale}")
    scale = 1.0 if metric_scale is None else float(metric_scale)
    model_dir = model_dir_of(scene_dir)
    if model_dir is None:
        raise BadInputError(f"{scene_dir}: no COLMAP model; {LAYOUT_HINT}", scene_dir)
    rec, fmt = read_reconstruction(model_dir)
    if model_dir.name == "0" and (model_dir.parent / "1").is_dir():
        msg = f"{name}: {model_dir.parent} holds several models; using sparse/0 only"
        log.warning(msg)
        several_models = msg
    else:
        several_models = None
    point_ids = np.array(sorted(rec.points3D.keys()), dtype=np.int64)
    xyz = np.array([rec.points3D[int(p)].xyz for p in point_ids], dtype=np.float64).reshape(-1, 3) * scale
    index_of = {int(p): i for i, p in enumerate(point_ids)}
    units = "arbitrary (COLMAP)" if metric_scale is None else f"metres (COLMAP x {scale:g})"
    scene = ColmapScene(name, scene_dir, model_dir, fmt, [], xyz, units, scale)
    if several_models:
        scene.warnings.append(several_models)
    dense = _read_dense(scene_dir, prefer) if depth in ("auto", "mvs") else {}
    if depth == "auto" and not dense:
        msg = f"{name}: no dense workspace (dense/stereo/depth_maps) — sparse COLMAP depth for every frame"
        log.warning(msg)
        scene.warnings.append(msg)
    if depth == "mvs" and not dense:
        raise BadInputError(
            f"{scene_dir}: --depth mvs but no dense/stereo/depth_maps/*.bin; run "
            f"`colmap image_undistorter` and `colmap patch_match_stereo` (see "
            f"docs/own-captures.md) or use --depth sparse",
            scene_dir,
        )
    cameras = {cid: SourceCamera.from_pycolmap(cid, cam) for cid, cam in rec.cameras.items()}
    used = {int(im.camera_id) for im in rec.images.values() if _registered(im)}
    for cid in sorted(used & set(rec.cameras)):
        _check_camera(model_dir, fmt, cid, rec.cameras[cid])
    seen: dict[str, int] = {}
    for image in rec.images.values():
        if image.name in seen:
            raise BadInputError(
                f"{_model_file(model_dir, fmt, 'images')}: images {seen[image.name]} and {image.image_id} share the "
                f"name {image.name!r} (one photo under two poses); give every image its own name or remove one",
                model_dir,
            )
        seen[image.name] = int(image.image_id)
    for image in sorted(rec.images.values(), key=lambda im: im.name):
        try:
            frame = _make_frame(scene, scene_dir, image, cameras, dense, depth, index_of, scale)
        except BadInputError as exc:
            if not skip_bad:
                raise
            scene.skipped.append({"scene": name, "frame": image.name, "reason": str(exc)})
            log.warning("skipping %s/%s: %s", name, image.name, exc)
            continue
        if frame is not None:
            scene.frames.append(frame)
    for f in scene.frames:
        if f.depth_source == "mvs":
            scene.dense_views[f.name] = dense[f.name]
    scene.rig = rig_members(scene.frames)
    _warn_unregistered_photos(scene, {im.name for im in rec.images.values() if _registered(im)})
    return scene


PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


def _warn_unregistered_photos(scene: ColmapScene, registered: set[str]) -> None:
    """Photos in images/ that the model does not hold registered (COLMAP stores only the images it
    registered): left out of the build, listed in the warnings (docs/own-captures.md)."""
    images = scene.directory / "images"
    if not images.is_dir():
        return
    names = sorted(
        p.relative_to(images).as_posix()
        for p in images.rglob("*")
        if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
    )
    missing = [n for n in names if n not in registered]
    if missing:
        shown = ", ".join(missing[:50]) + (f" … and {len(missing) - 50} more" if len(missing) > 50 else "")
        msg = (
            f"{scene.name}: {len(missing)} photo(s) in {images} not registered in {scene.model_dir} (left out): {shown}"
        )
        log.warning(msg)
        scene.warnings.append(msg)


def rig_members(frames: list[ColmapFrame]) -> dict | None:
    """{"by": how, "members": [(stream, rig frame) per frame]} when the images come from a rig, else
    None. A rig is seen (1) in the model: several images share one pycolmap frame (COLMAP >= 3.12
    rigs), stream = the camera; or (2) in the names: one folder per camera holding the same file
    names (cam0/0001.jpg, cam1/0001.jpg), stream = the folder, rig frame = the name inside it."""
    from collections import Counter
    from pathlib import PurePosixPath

    shared = Counter(f.rig_frame for f in frames if f.rig_frame is not None)
    if any(c > 1 for c in shared.values()):
        members = [(f"camera {f.camera_id}", f"frame {f.rig_frame}") for f in frames]
        return {"by": "model frames", "members": members}
    parts = [PurePosixPath(f.name).parts for f in frames]
    members = [(p[0], str(PurePosixPath(*p[1:]).with_suffix(""))) if len(p) > 1 else ("", p[0]) for p in parts]
    streams_of = Counter(key for _, key in set(members))
    if len({s for s, _ in members}) > 1 and any(c > 1 for c in streams_of.values()):
        return {"by": "camera folders", "members": members}
    return None


def _make_frame(scene, scene_dir, image, cameras, dense, depth_mode, index_of, scale):
    if not _registered(image):
        scene.warnings.append(f"{scene.name}/{image.name}: not registered in the model — left out")
        return None
    image_path = scene_dir / "images" / image.name
    if not image_path.is_file():
        raise BadInputError(
            f"{image_path}: photo of image {image.image_id} in {scene.model_dir} is "
            f"missing (image names are relative to images/)",
            image_path,
        )
    R, t = _pose(image, scene.model_dir)
    ids = [int(p.point3D_id) for p in image.points2D if p.has_point3D()]
    dangling = sorted({i for i in ids if i not in index_of})
    if dangling:  # a truncated points3D file silently halves the sparse model otherwise
        raise BadInputError(
            f"{_model_file(scene.model_dir, scene.model_format, 'points3D')}: image {image.image_id} ({image.name}) "
            f"observes {len(dangling)} 3-D point(s) the file does not hold (e.g. POINT3D_ID {dangling[0]}); the file "
            f"is truncated or from another model — re-export the model (`colmap model_converter`)",
            scene.model_dir,
        )
    observed = np.unique(np.array([index_of[i] for i in ids if i in index_of], dtype=np.int64))
    mvs_path = dense_cam = None
    source = "sparse"
    if image.name in dense:
        path, dense_cam, dR, dt = dense[image.name]
        if np.abs(dR - R).max() > 1e-6 or np.abs(dt - t).max() > 1e-6 * max(1.0, np.abs(t).max()):
            raise BadInputError(
                f"{path}: the dense model's pose of {image.name} differs from "
                f"{scene.model_dir}; was the workspace built from another model?",
                path,
            )
        mvs_path, source = path, "mvs"
    elif depth_mode == "mvs":
        raise BadInputError(
            f"{scene_dir / 'dense/stereo/depth_maps'}: no depth map for {image.name} "
            f"(--depth mvs); use --skip-bad or --depth auto",
            scene_dir,
        )
    elif depth_mode == "auto" and dense:
        scene.warnings.append(f"{scene.name}/{image.name}: no MVS depth map — sparse depth")
    return ColmapFrame(
        scene.name,
        image.name,
        int(image.image_id),
        image_path,
        int(image.camera_id),
        cameras[image.camera_id],
        R,
        t * scale,
        observed,
        _mask_path(scene_dir, image.name),
        mvs_path,
        dense_cam,
        source,
        rig_frame=None if getattr(image, "frame_id", None) is None else str(image.frame_id),
    )
