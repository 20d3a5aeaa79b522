"""`generate_scene`: a seeded synthetic scene (analytic facade, cameras, poses, laser scan, masks,
sparse model) written in the exact ETH3D layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataengine.synth.capture import (
    CaptureImage,
    Splats,
    build_sparse_model,
    make_mask,
    project_scan,
    simulate_laser_scan,
    splat_depth,
)
from dataengine.synth.eth3d_layout import (
    DISTORTED_CALIBRATION,
    DISTORTED_FOLDER,
    UNDISTORTED_CALIBRATION,
    UNDISTORTED_FOLDER,
    prepare_scene_dir,
    write_calibration,
    write_gt_depth,
    write_image,
    write_mask,
    write_truth,
)
from dataengine.synth.raycast import pixel_centre_rays
from dataengine.synth.scene import TRUTH_FORMAT, build_facade, capture_poses, distorted_cameras, undistorted_camera


def _check_arguments(scene: str, images: int, scale: float) -> None:
    if not scene or "/" in scene or "\\" in scene or scene in (".", ".."):
        raise ValueError(f"scene name must be a plain folder name, got {scene!r}")
    if images < 3:
        raise ValueError(f"need at least 3 images (tracks need 2 views plus one empty image), got {images}")
    if not 0.02 <= scale <= 1.0:
        raise ValueError(f"scale must be in [0.02, 1] (1 = ETH3D's 6048x4032), got {scale}")


def _image_names(rng: np.random.Generator, count: int) -> list[str]:
    """Sequential DSC numbers in capture order, with the occasional skipped frame."""
    numbers = int(rng.integers(100, 9000)) + np.cumsum(1 + (rng.random(count) < 0.15)) - 1
    return [f"DSC_{n:04d}.JPG" for n in numbers]


def _image_ids(rng: np.random.Generator, count: int) -> np.ndarray:
    """Non-contiguous ids whose order differs from name order (as in real ETH3D files)."""
    ids = rng.choice(np.arange(1, 3 * count + 10), count, replace=False)
    if np.all(np.diff(ids) > 0):
        ids[[0, -1]] = ids[[-1, 0]]
    return ids


def generate_scene(
    root: str | Path,
    scene: str = "synth_facade",
    images: int = 8,
    scale: float = 0.25,
    seed: int = 0,
    distorted_images: bool = False,
    log=None,
) -> Path:
    """Write a synthetic scene in the exact ETH3D layout under ``<root>/<scene>`` and return its path.

    Deterministic for a given (images, scale, seed): byte-identical files. ``distorted_images`` also
    renders ``images/dslr_images`` (the optional dslr_jpg images). ``log`` receives progress lines.
    """
    _check_arguments(scene, images, scale)
    log = log or (lambda message: None)
    rng = np.random.default_rng(seed)
    scene_dir = Path(root) / scene
    prepare_scene_dir(scene_dir)

    geometry, facade_params = build_facade(rng, scale)
    distorted = distorted_cameras(rng, 2 if images < 12 else 3, scale)
    undistorted = [undistorted_camera(cam) for cam in distorted]
    poses = capture_poses(rng, images, geometry)
    names = _image_names(rng, images)
    ids = _image_ids(rng, images)
    camera_of = (np.arange(images) * len(distorted)) // images  # one focus setting per stretch
    frames = [CaptureImage(names[i], int(ids[i]), int(camera_of[i]), *poses[i]) for i in range(images)]
    empty_image = int(rng.integers(1, images))
    has_mask = rng.random(images) < 0.7
    has_mask[rng.integers(0, images)] = False
    has_mask[empty_image] = True

    # Calibration and sparse model (both calibrations share ids, poses and POINTS2D order).
    model = build_sparse_model(geometry, frames, undistorted, distorted, rng, empty_image, scale)
    write_calibration(
        scene_dir, UNDISTORTED_CALIBRATION, UNDISTORTED_FOLDER, undistorted, frames, model.keypoints_u, model
    )
    write_calibration(scene_dir, DISTORTED_CALIBRATION, DISTORTED_FOLDER, distorted, frames, model.keypoints_d, model)
    log(f"calibrations: {len(distorted)} cameras, {images} images, {len(model.ids)} points3D")

    # Images.
    for im in frames:
        cam = undistorted[im.camera_id]
        write_image(
            scene_dir, UNDISTORTED_FOLDER, im.name, geometry.render(cam.K_opencv(), im.R, im.t, cam.width, cam.height)
        )
        if distorted_images:
            rays = pixel_centre_rays(distorted[im.camera_id])
            write_image(scene_dir, DISTORTED_FOLDER, im.name, geometry.cast_camera_rays(rays, im.R, im.t)[2])
    log(f"images: {images} undistorted renders of {undistorted[0].width}x{undistorted[0].height}")

    # Laser scan -> masks and sparse GT depth in the distorted frame.
    scan = simulate_laser_scan(geometry, scale, rng)
    splats = [project_scan(geometry, scan, distorted[im.camera_id], im.R, im.t) for im in frames]
    seen = np.zeros(len(scan), dtype=np.int64)
    for s in splats:
        seen[s.point_index] += 1
    ray_cache: dict[int, np.ndarray] = {}
    coverage = []
    for i, (im, s) in enumerate(zip(frames, splats, strict=True)):
        cam = distorted[im.camera_id]
        keep = seen[s.point_index] >= 2  # the pipeline only uses points seen in >= 2 images
        s = Splats(s.point_index[keep], s.pixel[keep], s.z[keep])
        mask = None
        if has_mask[i]:
            if im.camera_id not in ray_cache:
                ray_cache[im.camera_id] = pixel_centre_rays(cam)
            mask = make_mask(geometry, cam, im.R, im.t, ray_cache[im.camera_id], rng)
            write_mask(scene_dir, im.name, mask)
        depth = splat_depth(s, cam.width, cam.height, mask)
        write_gt_depth(scene_dir, im.name, depth)
        coverage.append(float(np.isfinite(depth).mean()))
    log(
        f"ground truth: {len(scan)} laser points, GT coverage {min(coverage):.1%}-{max(coverage):.1%}, "
        f"{int(has_mask.sum())} masks"
    )

    truth = {
        "format": TRUTH_FORMAT,
        "note": "synthetic scene written by dataengine.synth; not an ETH3D file",
        "generator": {
            "scene": scene,
            "images": images,
            "scale": scale,
            "seed": seed,
            "distorted_images": distorted_images,
        },
        "facade": facade_params,
        "geometry": geometry.to_dict(),
        "laser_points": int(len(scan)),
        "frames": [
            {
                "name": im.name,
                "image_id": im.image_id,
                "camera_id": im.camera_id,
                "has_mask": bool(has_mask[i]),
                "empty_points2d": i == empty_image,
                "gt_coverage": round(coverage[i], 6),
            }
            for i, im in enumerate(frames)
        ],
    }
    write_truth(scene_dir, truth)
    return scene_dir
