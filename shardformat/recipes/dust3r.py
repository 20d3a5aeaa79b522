"""DUSt3R family (`mini_dust3r.model.AsymmetricCroCo3DStereo`, naver/dust3r's training views), checked
against mini-dust3r 0.1.2.

A list of view pairs, each two of DUSt3R's view dicts: img (3, H, W) in [-1, 1] (its ImgNorm), true_shape
[H, W], instance (distinct names: its `is_symmetrized` compares them), camera_pose camera-to-world 4×4,
camera_intrinsics in pixels (OpenCV centres), depthmap (0 = invalid; DUSt3R asserts finite depth), pts3d
in world coordinates, valid_mask. Sides must be multiples of 16 (518 does not fit: build at 224 or
512x384); the 512 models take landscape images only. Its loss puts both views' points in view 1's camera.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardformat.recipes.common import CHECKED_AGAINST, RecipeError, check_multiple, to_unit_float
from shardformat.views import Sample

PATCH = 16
VARIANTS = (None, "224", "512")


def dust3r_view(sample: Sample, i: int) -> dict[str, Any]:
    """Frame i as one DUSt3R training view (unbatched)."""
    valid = sample.valid[i]
    pts3d = sample.points(i, frame="world")
    return {
        "img": to_unit_float(sample.images[i]) * np.float32(2) - np.float32(1),
        "true_shape": np.array(sample.size, dtype=np.int32),
        "camera_pose": sample.c2w[i].astype(np.float32),
        "camera_intrinsics": sample.K[i].astype(np.float32),
        "depthmap": sample.depth_filled(0.0)[i],
        "pts3d": np.where(valid[..., None], pts3d, 0.0).astype(np.float32),
        "valid_mask": valid,
        "instance": f"{sample.key}/{sample.names[i] if sample.names else i}",
        "idx": i,
        "dataset": "eth3d-vggt-shards",
        "label": sample.scene,
    }


def dust3r_pairs(
    sample: Sample,
    pairs: str | list[tuple[int, int]] = "adjacent",
    symmetric: bool = True,
    variant: str | None = None,
    min_overlap: float = 0.3,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """[(view1, view2), ...] for the frame pairs of `pairs` (a `Sample.pairs` policy or explicit index
    pairs). variant "512" also refuses portrait frames (the 512 models' patch embedding needs W ≥ H)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: use one of {VARIANTS}")
    h, w = sample.size
    check_multiple("DUSt3R", (h, w), PATCH, "224 (224 models) or --size 512x384 --any-size (512 models)")
    if variant == "512" and h > w:
        raise RecipeError(
            f"DUSt3R 512 models take landscape images only; these are {w}x{h} (portrait): build with "
            "`--size 512x384 --any-size`"
        )
    index_pairs = sample.pairs(pairs, symmetric=symmetric, min_overlap=min_overlap) if isinstance(pairs, str) else pairs
    if not index_pairs:
        raise RecipeError(f"sample {sample.key}: pair policy {pairs!r} gives no pair of its {len(sample)} frames")
    views = {}
    for i in sorted({k for p in index_pairs for k in p}):
        views[i] = dust3r_view(sample, i)
    return [(views[i], views[j]) for i, j in index_pairs]


def in_camera_of(view: dict[str, Any], reference: dict[str, Any]) -> np.ndarray:
    """view's world pts3d in the reference view's camera frame (where DUSt3R predicts view 2's points)."""
    w2c = np.linalg.inv(reference["camera_pose"].astype(np.float64))
    pts = view["pts3d"].astype(np.float64)
    return pts @ w2c[:3, :3].T + w2c[:3, 3]


CHECKED = CHECKED_AGAINST["dust3r"]
