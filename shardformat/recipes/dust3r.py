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

from shardformat.recipes.common import CHECKED_AGAINST, RecipeError, check_multiple, to_normalised_float
from shardformat.views import Sample, pixel_rays, points_f32

HALF = np.full(3, 0.5, dtype=np.float32)


def to_signed_float(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) → float32 (3, H, W) in [-1, 1]: DUSt3R's ImgNorm (ToTensor, Normalize(0.5, 0.5))."""
    return to_normalised_float(image, HALF, HALF)


PATCH = 16
VARIANTS = (None, "224", "512")


def dust3r_view(
    sample: Sample,
    i: int,
    c2w: np.ndarray | None = None,
    compact: bool = False,
    rays: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Frame i as one DUSt3R training view (unbatched). pts3d of unknown pixels is the camera centre
    (depth 0), as in DUSt3R's own datasets; valid_mask marks the known ones. compact=True: img uint8
    (H, W, 3), `depth` the sample's own (NaN = unknown), the pixel rays `rays_x` / `rays_y`, and no
    depthmap, valid_mask or pts3d: `shardformat.recipes.device.finish("dust3r", ...)` makes them. rays:
    `pixel_rays` of every frame, computed once by the caller."""
    c2w = sample.c2w[i] if c2w is None else c2w
    view = {
        "true_shape": np.array(sample.size, dtype=np.int32),
        "camera_pose": c2w.astype(np.float32),
        "camera_intrinsics": sample.K[i].astype(np.float32),
        "instance": f"{sample.key}/{sample.names[i] if sample.names else i}",
        "idx": i,
        "dataset": "eth3d-vggt-shards",
        "label": sample.scene,
    }
    if compact:
        rays_x, rays_y = pixel_rays(sample.K[i], sample.size) if rays is None else (rays[0][i], rays[1][i])
        return view | {"img": sample.images[i], "depth": sample.depth[i], "rays_x": rays_x, "rays_y": rays_y}
    depthmap = np.fmax(sample.depth[i], np.float32(0))  # NaN (unknown) → 0
    return view | {
        "img": to_signed_float(sample.images[i]),
        "depthmap": depthmap,
        "pts3d": points_f32(depthmap, sample.K[i], c2w),
        "valid_mask": np.isfinite(sample.depth[i]),  # this frame only (Sample.valid is every frame)
    }


def dust3r_pairs(
    sample: Sample,
    pairs: str | list[tuple[int, int]] = "adjacent",
    symmetric: bool = True,
    variant: str | None = None,
    min_overlap: float = 0.3,
    compact: bool = False,
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """[(view1, view2), ...] for the frame pairs of `pairs` (a `Sample.pairs` policy or explicit index
    pairs). variant "512" also refuses portrait frames (the 512 models' patch embedding needs W ≥ H). Each
    frame's view is built once and shared by every pair holding it. compact=True: see `dust3r_view`."""
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: use one of {VARIANTS}")
    h, w = sample.size
    builds = "`python -m dataengine build --size 224`, or `--size 512x384 --any-size` for the 512 models"
    check_multiple("DUSt3R", (h, w), PATCH, builds)
    if variant == "512" and h > w:
        raise RecipeError(
            f"DUSt3R 512 models take landscape images only; these are {w}x{h} (portrait): build with "
            "`--size 512x384 --any-size`"
        )
    index_pairs = sample.pairs(pairs, symmetric=symmetric, min_overlap=min_overlap) if isinstance(pairs, str) else pairs
    if not index_pairs:
        raise RecipeError(f"sample {sample.key}: pair policy {pairs!r} gives no pair of its {len(sample)} frames")
    c2w = sample.c2w
    rays = pixel_rays(sample.K, sample.size) if compact else None  # every frame's rays in one call
    frames = sorted({k for p in index_pairs for k in p})
    views = {i: dust3r_view(sample, i, c2w[i], compact=compact, rays=rays) for i in frames}
    return [(views[i], views[j]) for i, j in index_pairs]


def in_camera_of(view: dict[str, Any], reference: dict[str, Any]) -> np.ndarray:
    """view's world pts3d in the reference view's camera frame (where DUSt3R predicts view 2's points)."""
    w2c = np.linalg.inv(reference["camera_pose"].astype(np.float64))
    pts = view["pts3d"].astype(np.float64)
    return pts @ w2c[:3, :3].T + w2c[:3, 3]


CHECKED = CHECKED_AGAINST["dust3r"]
