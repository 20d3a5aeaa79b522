"""COLMAP text model writers (cameras.txt, images.txt, points3D.txt), values printed as ETH3D's
files print them (6 significant digits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataengine.camera import Camera, format_float
from dataengine.synth.capture import CaptureImage, SparseModel

_CAMERAS_HEADER = (
    "# Camera list with one line of data per camera:\n"
    "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
    "# Number of cameras: {n}\n"
)
_IMAGES_HEADER = (
    "# Image list with two lines of data per image:\n"
    "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
    "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
    "# Number of images: {n}, mean observations per image: {mean}\n"
)
_POINTS_HEADER = (
    "# 3D point list with one line of data per point:\n"
    "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
    "# Number of points: {n}, mean track length: {mean}\n"
)


def write_cameras(path: Path, cameras: list[Camera]) -> None:
    lines = [_CAMERAS_HEADER.format(n=len(cameras))]
    assert [cam.camera_id for cam in cameras] == list(range(len(cameras))), "images.txt refers to list positions"
    lines += [cam.colmap_line() + "\n" for cam in cameras]
    path.write_text("".join(lines))


def write_images(path: Path, images: list[CaptureImage], folder: str, keypoints: list, point_ids: list) -> None:
    n_obs = sum(len(k) for k in keypoints)
    lines = [_IMAGES_HEADER.format(n=len(images), mean=format_float(n_obs / max(len(images), 1)))]
    for i in sorted(range(len(images)), key=lambda i: images[i].image_id):
        im = images[i]
        lines.append(f"{im.image_id} {im.pose_text} {im.camera_id} {folder}/{im.name}\n")
        lines.append(
            " ".join(
                f"{format_float(x)} {format_float(y)} {int(p)}"
                for (x, y), p in zip(keypoints[i], point_ids[i], strict=True)
            )
            + "\n"
        )
    path.write_text("".join(lines))


def write_points3d(path: Path, model: SparseModel) -> None:
    mean_track = np.mean([len(t) for t in model.tracks]) if model.tracks else 0.0
    lines = [_POINTS_HEADER.format(n=len(model.ids), mean=format_float(mean_track))]
    for pid, xyz, rgb, err, track in zip(model.ids, model.xyz, model.colours, model.errors, model.tracks, strict=True):
        coords = " ".join(format_float(v) for v in xyz)
        track_text = " ".join(f"{image_id} {idx}" for image_id, idx in track)
        lines.append(f"{pid} {coords} {rgb[0]} {rgb[1]} {rgb[2]} {format_float(err)} {track_text}\n")
    path.write_text("".join(lines))
