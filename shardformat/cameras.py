"""`cameras.json`, the per-sample camera record (shards/README.md): the one owner of its schema.

The engine builds it from plain values (`sample_cameras`, `frame_camera`); readers check it
(`parse_cameras` for the record, `frame_arrays` for one frame's K and [R|t], `camera_arrays` for all
of them stacked) or read its per-frame coverage leniently (`frame_coverages`, for `verify` notes).
numpy only, so any reader (the trainer's decoder, a numpy-only view reader, `inspect`) can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shardformat.names import CAMERAS, FORMAT, ShardError

PIXEL_CONVENTION = "OpenCV: pixel (0,0) is the centre of the top-left pixel"
EXTRINSICS_CONVENTION = "world-to-camera [R|t], OpenCV axes (x right, y down, z forward)"
ROTATION_TOL = 1e-4  # |R Rᵀ − I| of the stored extrinsics (written in full double precision)


# ---- writing -------------------------------------------------------------------------------------
def frame_camera(
    name: str,
    index: int,
    camera_id: Any,
    K: np.ndarray,
    rotation: np.ndarray,
    translation: np.ndarray,
    source_size: list[int],
    coverage: float,
    depth_source: str,
) -> dict:
    """One frame's record: `index` into its scene's frames, OpenCV K, world-to-camera [R|t]."""
    return {
        "name": name,
        "index": int(index),
        "camera_id": camera_id,
        "K": np.asarray(K).tolist(),
        "extrinsics": np.hstack([rotation, np.asarray(translation)[:, None]]).tolist(),
        "source_size": source_size,
        "coverage": coverage,
        "depth_source": depth_source,
    }


def sample_cameras(
    scene: str, split: str, window: int, units: str, image_size: tuple[int, int], frames: list[dict]
) -> dict:
    """The sample's record (the key order is the written order); `image_size` is (H, W); the sample's
    depth source is its frames' one, or "mixed"."""
    sources = {f["depth_source"] for f in frames}
    return {
        "format": FORMAT,
        "scene": scene,
        "split": split,
        "window": window,
        "depth_source": sources.pop() if len(sources) == 1 else "mixed",
        "units": units,
        "pixel_convention": PIXEL_CONVENTION,
        "extrinsics_convention": EXTRINSICS_CONVENTION,
        "image_size": [image_size[0], image_size[1]],
        "frames": frames,
    }


# ---- reading -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleCameras:
    """A checked record: its frames (raw dicts, in frame order) and the image size every frame has."""

    record: dict
    frames: list
    height: int
    width: int


def parse_cameras(cams: Any, where: str) -> SampleCameras:
    """The record's format tag, its non-empty 'frames' list and its [H, W] 'image_size' (ShardError
    naming `where` otherwise); check each frame you read with `frame_arrays`."""
    if not isinstance(cams, dict) or cams.get("format") != FORMAT:
        found = cams.get("format") if isinstance(cams, dict) else None
        raise ShardError(f"{where}: {CAMERAS} format {found!r}, expected {FORMAT!r}")
    frames, size = cams.get("frames"), cams.get("image_size")
    if not isinstance(frames, list) or not frames or not isinstance(size, list) or len(size) != 2:
        raise ShardError(f"{where}: {CAMERAS} has no 'frames' list or no [H, W] 'image_size'")
    height, width = size
    return SampleCameras(cams, frames, height, width)


def frame_arrays(where: str, i: int, frame: Any) -> tuple[np.ndarray, np.ndarray]:
    """Frame i's K (3x3 float64: finite, positive focal lengths, last row 0 0 1) and world-to-camera
    [R|t] (3x4 float64: finite, R a rotation); a corrupt camera would silently poison a camera loss."""
    try:
        K = np.asarray(frame["K"], dtype=np.float64)
        Rt = np.asarray(frame["extrinsics"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShardError(f"{where}: {CAMERAS} frame {i}: unreadable K/extrinsics ({exc})") from None
    if K.shape != (3, 3) or Rt.shape != (3, 4):
        raise ShardError(f"{where}: {CAMERAS} frame {i}: K {K.shape} / extrinsics {Rt.shape}, expected (3, 3) / (3, 4)")
    if not (np.isfinite(K).all() and np.isfinite(Rt).all()):
        raise ShardError(f"{where}: {CAMERAS} frame {i}: non-finite K or extrinsics")
    if not (K[0, 0] > 0 and K[1, 1] > 0 and np.array_equal(K[2], [0.0, 0.0, 1.0])):
        raise ShardError(f"{where}: {CAMERAS} frame {i}: K {K.tolist()} is not a pinhole intrinsic matrix")
    R = Rt[:, :3]
    off = float(np.abs(R @ R.T - np.eye(3)).max())
    if off > ROTATION_TOL or np.linalg.det(R) <= 0:
        raise ShardError(
            f"{where}: {CAMERAS} frame {i}: extrinsics rotation is not orthonormal "
            f"(|R Rᵀ − I| = {off:.2g}, det {np.linalg.det(R):.4g})"
        )
    return K, Rt


def camera_arrays(cams: SampleCameras, where: str, frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """K (n, 3, 3) and world-to-camera [R|t] (n, 3, 4) of the first `frames` frames (all when None),
    each checked by `frame_arrays`."""
    n = len(cams.frames) if frames is None else frames
    if n > len(cams.frames):
        raise ShardError(f"{where}: {n} frames asked, the sample has only {len(cams.frames)}")
    pairs = [frame_arrays(where, i, cams.frames[i]) for i in range(n)]
    return np.stack([K for K, _ in pairs]), np.stack([Rt for _, Rt in pairs])


def frame_coverages(cams: Any) -> list[tuple[str, float]]:
    """(frame name, coverage) of every frame, leniently ("?" and 0.0 where missing): `verify`'s notes."""
    frames = cams.get("frames", []) if isinstance(cams, dict) else []
    return [(f.get("name", "?"), float(f.get("coverage", 0.0))) for f in frames]
