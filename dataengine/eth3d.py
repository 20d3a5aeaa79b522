"""ETH3D scene discovery and the joined, cross-checked per-frame records.

Layout (per scene, after extracting the dslr_undistorted, dslr_jpg, dslr_depth and dslr_occlusion
archives): images/dslr_images_undistorted/*.JPG, dslr_calibration_undistorted/ (PINHOLE),
dslr_calibration_jpg/ (THIN_PRISM_FISHEYE), ground_truth_depth/dslr_images/*.JPG (raw float32),
masks_for_images/dslr_images/*.png. Both calibrations are joined by image basename.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataengine.colmap_text import Camera, ColmapModel, read_model
from dataengine.errors import BadInputError
from dataengine.scenes import ETH3D_URL

log = logging.getLogger(__name__)

UNDISTORTED_CALIB = "dslr_calibration_undistorted"
DISTORTED_CALIB = "dslr_calibration_jpg"
GT_DEPTH_DIR = "ground_truth_depth"
MASK_DIR = "masks_for_images"
DEPTH_MODES = ("auto", "laser", "sparse")
POSE_TOLERANCE = 1e-5  # the text files print ~6 significant digits

ARCHIVES_HINT = (
    "download the per-scene ETH3D archives <scene>_dslr_undistorted.7z, <scene>_dslr_jpg.7z, "
    f"<scene>_dslr_depth.7z and <scene>_dslr_occlusion.7z from {ETH3D_URL} and "
    "extract them into the root, e.g. `python -m dataengine download --root ROOT --scenes SCENES` "
    "(or `make download`)"
)


# A real ETH3D calibration line (courtyard, dslr_calibration_jpg/cameras.txt, camera 0): CAMERA_ID MODEL WIDTH
# HEIGHT fx fy cx cy k1 k2 p1 p2 k3 k4 sx1 sy1. The synthetic scenes' lens and the tests' distortion reference.
REFERENCE_CALIBRATION_LINE = (
    "0 THIN_PRISM_FISHEYE 6048 4032 3411.42 3410.02 3041.29 2014.07 0.21047 0.21102 "
    "-5.36231e-06 0.00051541 -0.158023 0.406856 -8.46499e-05 0.000861313"
)


def reference_camera() -> Camera:
    """The camera of `REFERENCE_CALIBRATION_LINE`: a full-size ETH3D DSLR (Nikon D3X, 6048x4032) with its
    real THIN_PRISM_FISHEYE distortion."""
    camera_id, model, width, height, *params = REFERENCE_CALIBRATION_LINE.split()
    return Camera(int(camera_id), model, int(width), int(height), np.array([float(p) for p in params]))


@dataclass
class Frame:
    scene: str
    name: str  # basename, e.g. DSC_0324.JPG
    image_path: Path
    camera_id: int
    pinhole: Camera
    prism: Camera | None  # same camera id in dslr_calibration_jpg, when present
    rotation: np.ndarray  # world-to-camera
    translation: np.ndarray
    depth_path: Path | None  # raw float32 GT (distorted geometry), when present
    mask_path: Path | None  # ETH3D mask PNG, when present (missing = all zeros)
    depth_source: str  # "laser" or "sparse"
    observed: np.ndarray  # indices into Scene.points_xyz of the points this image observes
    # Line of this image in dslr_calibration_jpg/images.txt (None: not listed there): the frame order of
    # Depth Anything 3's benchmark, which `--sampling da3` reproduces (dataengine.sampling).
    jpg_calibration_line: int | None = None


@dataclass
class Scene:
    name: str
    directory: Path
    frames: list[Frame]
    points_xyz: np.ndarray
    skipped: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def list_scenes(root: Path) -> list[str]:
    """Scene folders under root: any directory holding dslr_calibration_undistorted/."""
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(f"{root}: ETH3D root not found; {ARCHIVES_HINT}", root)
    return sorted(p.name for p in root.iterdir() if (p / UNDISTORTED_CALIB).is_dir())


def _observations(model: ColmapModel) -> dict[int, np.ndarray]:
    """Image id → sorted indices (into points3d.xyz) of the points it observes: POINTS2D ids plus
    the tracks that name the image (either alone suffices; dangling ids are ignored)."""
    pts = model.points3d
    order = np.argsort(pts.ids, kind="stable")
    ids_sorted = pts.ids[order]
    by_track: dict[int, list[int]] = {}
    for index, track in enumerate(pts.track_image_ids):
        for image_id in track.tolist():
            by_track.setdefault(image_id, []).append(index)
    out = {}
    for image_id, img in model.images.items():
        ids = img.point3d_ids[img.point3d_ids >= 0]
        idx = np.zeros(0, np.int64)
        if len(ids) and len(ids_sorted):
            pos = np.clip(np.searchsorted(ids_sorted, ids), 0, len(ids_sorted) - 1)
            idx = order[pos[ids_sorted[pos] == ids]]
        extra = np.array(by_track.get(image_id, []), dtype=np.int64)
        out[image_id] = np.unique(np.concatenate([idx, extra]))
    return out


def load_scene(scene_dir: Path, depth: str = "auto", skip_bad: bool = False, require_masks: bool = False) -> Scene:
    """Parse and cross-check one scene. Bad frames raise, or are recorded as skipped with skip_bad.
    A scene without any image, or whose sparse-depth frames have no points3D.txt points to project,
    is an error (it would give frames without supervision)."""
    if depth not in DEPTH_MODES:
        raise ValueError(f"depth must be one of {DEPTH_MODES}, got {depth!r}")
    scene_dir = Path(scene_dir)
    name = scene_dir.name
    undist = read_model(scene_dir / UNDISTORTED_CALIB, need_points=True)
    images_txt = scene_dir / UNDISTORTED_CALIB / "images.txt"
    if not undist.images:
        raise BadInputError(
            f"{images_txt}: lists no images; re-extract the scene's "
            f"dslr_undistorted archive or drop the scene from --scenes",
            images_txt,
        )
    scene = Scene(name, scene_dir, [], undist.points3d.xyz)
    dist_dir = scene_dir / DISTORTED_CALIB
    dist = read_model(dist_dir, need_points=False) if (dist_dir / "images.txt").is_file() else None
    has_gt = (scene_dir / GT_DEPTH_DIR).is_dir()
    if depth == "laser" and (dist is None or not has_gt):
        raise BadInputError(
            f"{scene_dir}: --depth laser needs {DISTORTED_CALIB}/ and {GT_DEPTH_DIR}/; {ARCHIVES_HINT}", scene_dir
        )
    use_laser = depth == "laser" or (depth == "auto" and dist is not None and has_gt)
    if depth == "auto" and not use_laser:
        msg = (
            f"{name}: no {GT_DEPTH_DIR}/ or {DISTORTED_CALIB}/ — falling back to sparse COLMAP "
            f"depth for the whole scene"
        )
        log.warning(msg)
        scene.warnings.append(msg)
    if use_laser and not (scene_dir / MASK_DIR).is_dir():
        if require_masks:
            raise BadInputError(
                f"{scene_dir / MASK_DIR}: not found (--require-masks); extract {name}_dslr_occlusion.7z into the root",
                scene_dir / MASK_DIR,
            )
        msg = (
            f"{name}: no {MASK_DIR}/ — occluded and badly coloured pixels are supervised "
            f"(extract {name}_dslr_occlusion.7z, or build with --require-masks to refuse this)"
        )
        log.warning(msg)
        scene.warnings.append(msg)

    dist_by_name = {}
    if dist is not None:
        for img in dist.images.values():
            dist_by_name[Path(img.name).name] = img
    observations = _observations(undist)

    seen = {}
    for img in sorted(undist.images.values(), key=lambda im: Path(im.name).name):
        base = Path(img.name).name
        try:
            if base in seen:
                raise BadInputError(
                    f"{images_txt}:{img.line}: image {base} appears twice (also line {seen[base]})", images_txt
                )
            seen[base] = img.line
            frame = _make_frame(
                scene,
                scene_dir,
                img,
                undist,
                dist_by_name.get(base),
                dist,
                use_laser,
                depth,
                observations,
                require_masks,
            )
        except BadInputError as exc:
            if not skip_bad:
                raise
            scene.skipped.append({"scene": name, "frame": base, "reason": str(exc)})
            log.warning("skipping %s/%s: %s", name, base, exc)
            continue
        scene.frames.append(frame)
    sparse = [f.name for f in scene.frames if f.depth_source == "sparse"]
    if sparse and len(scene.points_xyz) == 0:
        points = scene_dir / UNDISTORTED_CALIB / "points3D.txt"
        what = "file not found" if not points.is_file() else "holds no points"
        raise BadInputError(
            f"{points}: {what}, but {len(sparse)} frame(s) of {name} need sparse COLMAP "
            f"depth (e.g. {sparse[0]}) and would have no supervised pixel; restore "
            f"points3D.txt or provide laser GT (--depth laser)",
            points,
        )
    return scene


def _make_frame(
    scene: Scene,
    scene_dir: Path,
    img,
    undist: ColmapModel,
    dimg,
    dist,
    use_laser: bool,
    depth_mode: str,
    observations,
    require_masks: bool = False,
) -> Frame:
    base = Path(img.name).name
    image_path = scene_dir / "images" / img.name
    if not image_path.is_file():
        raise BadInputError(
            f"{image_path}: image listed in {undist.directory / 'images.txt'}:{img.line} is missing", image_path
        )
    if image_path.stat().st_size == 0:
        raise BadInputError(
            f"{image_path}: image file is empty (0 bytes); re-extract it, or --skip-bad to skip the frame", image_path
        )
    pinhole = undist.cameras[img.camera_id]
    if pinhole.model != "PINHOLE":
        raise BadInputError(
            f"{undist.directory / 'cameras.txt'}: camera {pinhole.camera_id} is {pinhole.model}, expected PINHOLE",
            undist.directory / "cameras.txt",
        )
    rotation, translation = img.rotation, img.tvec
    prism = depth_path = mask_path = None
    source = "sparse"
    if dimg is not None:
        dist_txt = dist.directory / "images.txt"
        if dimg.camera_id != img.camera_id:
            raise BadInputError(
                f"{dist_txt}:{dimg.line}: {base} uses camera {dimg.camera_id} but "
                f"camera {img.camera_id} in {UNDISTORTED_CALIB}",
                dist_txt,
            )
        d_rot = np.abs(dimg.rotation - rotation).max()
        d_t = np.abs(dimg.tvec - translation).max() / max(1.0, np.abs(translation).max())
        if d_rot > POSE_TOLERANCE or d_t > POSE_TOLERANCE:
            raise BadInputError(
                f"{dist_txt}:{dimg.line}: pose of {base} differs from "
                f"{UNDISTORTED_CALIB} (max|dR| {d_rot:.2g}, rel |dt| {d_t:.2g})",
                dist_txt,
            )
        prism = dist.cameras[dimg.camera_id]
        if prism.model != "THIN_PRISM_FISHEYE":
            raise BadInputError(
                f"{dist.directory / 'cameras.txt'}: camera {prism.camera_id} is "
                f"{prism.model}, expected THIN_PRISM_FISHEYE",
                dist.directory / "cameras.txt",
            )
    if use_laser:
        candidate = scene_dir / GT_DEPTH_DIR / (dimg.name if dimg is not None else "")
        if dimg is None or not candidate.is_file():
            what = (
                f"{base} is not in {DISTORTED_CALIB}/images.txt"
                if dimg is None
                else f"{candidate}: GT depth file missing"
            )
            if depth_mode == "laser":
                raise BadInputError(f"{what} (--depth laser)", candidate)
            msg = f"{scene.name}/{base}: {what} — sparse COLMAP depth for this frame"
            log.warning(msg)
            scene.warnings.append(msg)
        else:
            expected = prism.width * prism.height * 4
            size = candidate.stat().st_size
            if size != expected:
                raise BadInputError(
                    f"{candidate}: depth file has {size} bytes, expected {expected} "
                    f"(= {prism.width}x{prism.height} float32)",
                    candidate,
                )
            depth_path, source = candidate, "laser"
            mask = scene_dir / MASK_DIR / Path(dimg.name).with_suffix(".png")
            mask_path = mask if mask.is_file() else None
            if mask_path is None and require_masks:
                raise BadInputError(f"{mask}: mask missing (--require-masks)", mask)
    observed = observations[img.image_id]
    return Frame(
        scene.name,
        base,
        image_path,
        img.camera_id,
        pinhole,
        prism,
        rotation,
        np.asarray(translation, dtype=np.float64),
        depth_path,
        mask_path,
        source,
        observed,
        dimg.line if dimg is not None else None,
    )
