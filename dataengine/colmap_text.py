"""COLMAP text models (cameras.txt, images.txt, points3D.txt) as ETH3D ships them.

Our own line-by-line parser is authoritative because every error must name the file and line
(pycolmap's errors do not). It follows the pitfalls of ETH3D files: camera id 0, image ids out of
name order, and an EMPTY POINTS2D line (the line after each image header is always consumed, blank
or not). `read_model_pycolmap` reads the same model through pycolmap 3.x/4.x for cross-checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dataengine.camera import CAMERA_MODEL_PARAMS, Camera, qvec_to_rotmat
from dataengine.errors import BadInputError

__all__ = [
    "CAMERA_MODEL_PARAMS",
    "Camera",
    "ColmapModel",
    "ImageRecord",
    "Points3D",
    "read_model",
    "read_model_pycolmap",
]


# |q| may differ from 1 by print rounding only (COLMAP writes >= 6 significant digits).
QUATERNION_TOLERANCE = 1e-3


@dataclass
class ImageRecord:
    image_id: int
    qvec: np.ndarray  # (4,) Hamilton w, x, y, z
    tvec: np.ndarray  # (3,)
    camera_id: int
    name: str
    xys: np.ndarray  # (N, 2) float64, COLMAP corner-origin pixels of this calibration's image
    point3d_ids: np.ndarray  # (N,) int64, -1 = not triangulated
    line: int  # header line number in images.txt, for error messages

    @property
    def rotation(self) -> np.ndarray:
        """World-to-camera rotation matrix."""
        return qvec_to_rotmat(self.qvec)


@dataclass
class Points3D:
    ids: np.ndarray  # (P,) int64
    xyz: np.ndarray  # (P, 3) float64
    track_image_ids: list[np.ndarray] = field(default_factory=list)  # per point, image ids

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class ColmapModel:
    directory: Path
    cameras: dict[int, Camera]
    images: dict[int, ImageRecord]
    points3d: Points3D


def _numbers(tokens: list[str], kind, path: Path, lineno: int, what: str) -> list:
    out = []
    for tok in tokens:
        try:
            value = kind(tok)
        except ValueError:
            raise BadInputError(
                f"{path}:{lineno}: {what}: {tok!r} is not a valid {'integer' if kind is int else 'number'}", path
            ) from None
        if kind is float and not math.isfinite(value):
            raise BadInputError(f"{path}:{lineno}: {what}: {tok!r} is not finite", path)
        out.append(value)
    return out


def _data_lines(path: Path):
    """Yield (line number, stripped text) for every physical line, comments included as None."""
    if not path.is_file():
        raise BadInputError(f"{path}: file not found", path)
    with open(path, encoding="utf-8", errors="surrogateescape", newline=None) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.isascii():
                try:
                    raw.encode("utf-8")  # undecodable bytes came back as lone surrogates
                except UnicodeEncodeError:
                    raise BadInputError(f"{path}:{lineno}: not UTF-8 text; re-extract the file", path) from None
            text = raw.strip()
            yield lineno, (None if text.startswith("#") else text)


def read_cameras_txt(path: Path) -> dict[int, Camera]:
    path = Path(path)
    cameras: dict[int, Camera] = {}
    for lineno, text in _data_lines(path):
        if not text:
            continue
        tok = text.split()
        if len(tok) < 4:
            raise BadInputError(
                f"{path}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS…', got {len(tok)} fields", path
            )
        (cam_id,) = _numbers(tok[:1], int, path, lineno, "CAMERA_ID")
        model = tok[1]
        if model not in CAMERA_MODEL_PARAMS:
            raise BadInputError(f"{path}:{lineno}: unknown camera model {model!r}", path)
        width, height = _numbers(tok[2:4], int, path, lineno, "WIDTH/HEIGHT")
        if width <= 0 or height <= 0:
            raise BadInputError(f"{path}:{lineno}: image size {width}x{height} must be positive", path)
        n_params = CAMERA_MODEL_PARAMS[model]
        if len(tok) != 4 + n_params:
            raise BadInputError(f"{path}:{lineno}: {model} expects {n_params} parameters, got {len(tok) - 4}", path)
        if cam_id in cameras:
            raise BadInputError(f"{path}:{lineno}: duplicate CAMERA_ID {cam_id}", path)
        params = np.array(_numbers(tok[4:], float, path, lineno, "PARAMS"), dtype=np.float64)
        cameras[cam_id] = Camera(cam_id, model, width, height, params)
    return cameras


def read_images_txt(path: Path) -> dict[int, ImageRecord]:
    """Two physical lines per image; the second (POINTS2D) may be empty and is always consumed."""
    path = Path(path)
    images: dict[int, ImageRecord] = {}
    lines = _data_lines(path)
    for lineno, text in lines:
        if not text:  # blank lines between records (or trailing) carry nothing
            continue
        tok = text.split()
        if len(tok) != 10:
            raise BadInputError(
                f"{path}:{lineno}: expected 10 fields 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {len(tok)}",
                path,
            )
        (image_id,) = _numbers(tok[:1], int, path, lineno, "IMAGE_ID")
        pose = _numbers(tok[1:8], float, path, lineno, "pose")
        (camera_id,) = _numbers(tok[8:9], int, path, lineno, "CAMERA_ID")
        q = np.array(pose[:4])
        if abs(np.linalg.norm(q) - 1.0) > QUATERNION_TOLERANCE:
            raise BadInputError(
                f"{path}:{lineno}: quaternion norm {np.linalg.norm(q):.6g} is not 1 "
                f"(COLMAP writes unit quaternions; tolerance {QUATERNION_TOLERANCE:g})",
                path,
            )
        if image_id in images:
            raise BadInputError(f"{path}:{lineno}: duplicate IMAGE_ID {image_id}", path)
        try:
            p_lineno, p_text = next(lines)
        except StopIteration:
            p_lineno, p_text = lineno + 1, ""  # missing final POINTS2D line = no observations
        if p_text is None:
            raise BadInputError(
                f"{path}:{p_lineno}: expected the POINTS2D line of image {image_id}, found a comment", path
            )
        ptok = p_text.split()
        if len(ptok) == 10 and not _is_float(ptok[9]) and _is_float(ptok[1]):
            raise BadInputError(
                f"{path}:{p_lineno}: POINTS2D line missing after image {image_id} "
                f"(line {lineno}): this line is the next image header",
                path,
            )
        if len(ptok) % 3:
            raise BadInputError(
                f"{path}:{p_lineno}: POINTS2D needs (X Y POINT3D_ID) triples, got {len(ptok)} fields", path
            )
        if ptok:
            try:
                arr = np.array(ptok, dtype=np.float64).reshape(-1, 3)
            except ValueError:
                bad = next(t for t in ptok if not _is_float(t))
                raise BadInputError(f"{path}:{p_lineno}: POINTS2D: {bad!r} is not a number", path) from None
            if not np.isfinite(arr).all() or (arr[:, 2] != np.round(arr[:, 2])).any():
                raise BadInputError(
                    f"{path}:{p_lineno}: POINTS2D has a non-finite coordinate or a non-integer POINT3D_ID", path
                )
            xys, ids = arr[:, :2].copy(), arr[:, 2].astype(np.int64)
        else:
            xys, ids = np.zeros((0, 2)), np.zeros(0, np.int64)
        images[image_id] = ImageRecord(image_id, q, np.array(pose[4:]), camera_id, tok[9], xys, ids, lineno)
    return images


def _is_float(tok: str) -> bool:
    try:
        float(tok)
        return True
    except ValueError:
        return False


def read_points3d_txt(path: Path) -> Points3D:
    path = Path(path)
    ids, xyz, tracks = [], [], []
    for lineno, text in _data_lines(path):
        if not text:
            continue
        tok = text.split()
        if len(tok) < 8 or (len(tok) - 8) % 2:
            raise BadInputError(
                f"{path}:{lineno}: expected 'POINT3D_ID X Y Z R G B ERROR' plus "
                f"(IMAGE_ID POINT2D_IDX) pairs, got {len(tok)} fields",
                path,
            )
        (pid,) = _numbers(tok[:1], int, path, lineno, "POINT3D_ID")
        ids.append(pid)
        xyz.append(_numbers(tok[1:4], float, path, lineno, "XYZ"))
        track = _numbers(tok[8:], int, path, lineno, "TRACK")
        tracks.append(np.array(track[0::2], dtype=np.int64))
    return Points3D(np.array(ids, dtype=np.int64), np.array(xyz, dtype=np.float64).reshape(-1, 3), tracks)


def read_model(directory: Path, *, need_points: bool = True) -> ColmapModel:
    """Parse a text model; images must reference known cameras."""
    directory = Path(directory)
    cameras = read_cameras_txt(directory / "cameras.txt")
    images = read_images_txt(directory / "images.txt")
    for img in images.values():
        if img.camera_id not in cameras:
            raise BadInputError(
                f"{directory / 'images.txt'}:{img.line}: CAMERA_ID {img.camera_id} is not in cameras.txt",
                directory / "images.txt",
            )
    points_path = directory / "points3D.txt"
    if need_points and points_path.is_file():
        points = read_points3d_txt(points_path)
    else:
        points = Points3D(np.zeros(0, np.int64), np.zeros((0, 3)), [])
    return ColmapModel(directory, cameras, images, points)


def read_model_pycolmap(directory: Path) -> dict[str, tuple[int, np.ndarray]]:
    """Name → (camera id, 3x4 world-to-camera) through pycolmap, for either API generation.

    pycolmap 4.x made `Image.cam_from_world` a method (it was a property in 3.x).
    """
    import pycolmap

    rec = pycolmap.Reconstruction(str(directory))
    out = {}
    for image in rec.images.values():
        cfw = image.cam_from_world
        cfw = cfw() if callable(cfw) else cfw
        out[image.name] = (int(image.camera_id), np.asarray(cfw.matrix(), dtype=np.float64))
    return out
