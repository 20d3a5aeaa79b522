"""Writers of ETH3D's on-disk scene layout (as if the per-scene archives dslr_undistorted, dslr_jpg,
dslr_depth and dslr_occlusion had been extracted); the calibrations are COLMAP text models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image as PILImage

from dataengine.camera import Camera
from dataengine.synth.capture import CaptureImage, SparseModel
from dataengine.synth.colmap_text import write_cameras, write_images, write_points3d
from dataengine.synth.scene import TRUTH_FILE

UNDISTORTED_FOLDER = "dslr_images_undistorted"
DISTORTED_FOLDER = "dslr_images"
UNDISTORTED_CALIBRATION = "dslr_calibration_undistorted"
DISTORTED_CALIBRATION = "dslr_calibration_jpg"
_SCENE_SUBDIRS = ("images", UNDISTORTED_CALIBRATION, DISTORTED_CALIBRATION, "ground_truth_depth", "masks_for_images")
_JPEG_QUALITY = 95


def prepare_scene_dir(scene_dir: Path) -> None:
    """Create the scene folder; a previous synthetic scene there is replaced, anything else kept."""
    if scene_dir.exists() and any(scene_dir.iterdir()):
        if not (scene_dir / TRUTH_FILE).is_file():
            raise FileExistsError(
                f"{scene_dir}: exists, is not empty and is not a synthetic scene; refusing to write into it"
            )
        for sub in _SCENE_SUBDIRS:
            shutil.rmtree(scene_dir / sub, ignore_errors=True)
        (scene_dir / TRUTH_FILE).unlink()
    for sub in (
        "images/" + UNDISTORTED_FOLDER,
        UNDISTORTED_CALIBRATION,
        DISTORTED_CALIBRATION,
        "ground_truth_depth/" + DISTORTED_FOLDER,
        "masks_for_images/" + DISTORTED_FOLDER,
    ):
        (scene_dir / sub).mkdir(parents=True, exist_ok=True)


def write_calibration(
    scene_dir: Path,
    calibration: str,
    folder: str,
    cameras: list[Camera],
    images: list[CaptureImage],
    keypoints: list,
    model: SparseModel,
) -> None:
    """cameras.txt, images.txt (image names under `folder`) and points3D.txt of one calibration."""
    write_cameras(scene_dir / calibration / "cameras.txt", cameras)
    write_images(scene_dir / calibration / "images.txt", images, folder, keypoints, model.point_ids)
    write_points3d(scene_dir / calibration / "points3D.txt", model)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(rgb), quality=_JPEG_QUALITY, colorspace="RGB", colorsubsampling="422"
    )


def write_image(scene_dir: Path, folder: str, name: str, rgb: np.ndarray) -> None:
    """images/<folder>/<name>: a JPEG like ETH3D's (quality 95, 4:2:2)."""
    path = scene_dir / "images" / folder
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_bytes(encode_jpeg(rgb))


def write_mask(scene_dir: Path, name: str, mask: np.ndarray) -> None:
    """masks_for_images/dslr_images/<stem>.png: uint8 0/1/2 (distorted frame)."""
    PILImage.fromarray(mask).save(scene_dir / "masks_for_images" / DISTORTED_FOLDER / (Path(name).stem + ".png"))


def write_gt_depth(scene_dir: Path, name: str, depth: np.ndarray) -> None:
    """ground_truth_depth/dslr_images/<name>: raw little-endian float32, +inf = no GT."""
    depth.astype("<f4").tofile(scene_dir / "ground_truth_depth" / DISTORTED_FOLDER / name)


def write_truth(scene_dir: Path, truth: dict) -> None:
    (scene_dir / TRUTH_FILE).write_text(json.dumps(truth, indent=1) + "\n")


def describe_scene(scene_dir: str | Path) -> list[str]:
    """One line per ETH3D folder of a scene: file count and total size."""
    scene_dir = Path(scene_dir)
    lines = [f"wrote {scene_dir}"]
    for sub in (
        "images/" + UNDISTORTED_FOLDER,
        "images/" + DISTORTED_FOLDER,
        UNDISTORTED_CALIBRATION,
        DISTORTED_CALIBRATION,
        "ground_truth_depth/" + DISTORTED_FOLDER,
        "masks_for_images/" + DISTORTED_FOLDER,
    ):
        folder = scene_dir / sub
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.is_file())
            size = sum(p.stat().st_size for p in files)
            lines.append(f"  {sub}/: {len(files)} files, {size / 1e6:.1f} MB")
    lines.append(f"  {TRUTH_FILE}: generator parameters and analytic geometry (not an ETH3D file)")
    return lines
