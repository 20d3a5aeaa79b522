"""Depth Anything 3 (`depth_anything_3.model.da3.DepthAnything3Net.forward`), checked against 0.1.1.

x (1, N, 3, H, W) ImageNet-normalised (the model does not normalise; its InputProcessor does), sides
multiples of 14; extrinsics (1, N, 4, 4) world-to-camera (its API's camera normalisation breaks on 3×4);
intrinsics (1, N, 3, 3) in pixels. normalise="first+median" applies what DA3's `inference()` does to
the cameras before conditioning (world = first view, translations / median camera distance, at least
0.1) and scales the depth by the same factor, so GT and prediction share one frame and scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardformat.recipes.common import CHECKED_AGAINST, IMAGENET_MEAN, IMAGENET_STD, check_multiple, to_normalised_float
from shardformat.views import Sample, rigid_inverse

PATCH = 14
NORMALISE = ("first+median", "none")


def da3_camera_normalisation(w2c: np.ndarray) -> tuple[np.ndarray, float]:
    """(w2c re-based on view 0 with translations / median camera distance, the divisor): DA3 api.py's
    `_normalize_extrinsics`, in float64."""
    rebased = w2c @ rigid_inverse(w2c[0])
    centres = rigid_inverse(rebased)[:, :3, 3]
    # torch.median of an even count takes the lower middle value, not the mean of the two
    dists = np.sort(np.linalg.norm(centres, axis=1))
    median = max(float(dists[(len(dists) - 1) // 2]), 0.1)
    out = rebased.copy()
    out[:, :3, 3] /= median
    return out, median


def da3_batch(
    sample: Sample, normalise: str = "first+median", images: str = "float", compact: bool = False
) -> dict[str, Any]:
    """The sample as DA3's forward takes it, plus the GT in the same frame (module docstring).

    Returns x, extrinsics (w2c 4×4), intrinsics (px), depth (1, N, H, W; 0 = unknown), valid, scale (the
    divisor applied to translations and depth), checked_against. images="uint8" returns x as the uint8
    frames (1, N, H, W, 3) instead, for normalising on the device with `da3_normalise_on_device` (the
    float conversion is most of the recipe's CPU cost, benchmarks/RESULTS.md). compact=True leaves every
    per-pixel step to `shardformat.recipes.device.finish("da3", batch, device)`: x uint8, depth the
    sample's own (NaN = unknown, not yet scaled), no valid; the finished batch equals this one."""
    if normalise not in NORMALISE:
        raise ValueError(f"normalise={normalise!r}: use one of {', '.join(NORMALISE)}")
    if images not in ("float", "uint8"):
        raise ValueError(f"images={images!r}: use 'float' or 'uint8'")
    check_multiple("Depth Anything 3", sample.size, PATCH, "`python -m dataengine build --size 504`")
    w2c, scale = (sample.w2c, 1.0) if normalise == "none" else da3_camera_normalisation(sample.w2c)
    cameras = {"extrinsics": w2c[None].astype(np.float32), "intrinsics": sample.K[None].astype(np.float32)}
    if compact:
        return {
            "x": sample.images[None],
            **cameras,
            "depth": sample.depth[None],
            "scale": scale,
            "checked_against": CHECKED_AGAINST["da3"],
        }
    x = sample.images if images == "uint8" else to_normalised_float(sample.images, IMAGENET_MEAN, IMAGENET_STD)
    depth = np.multiply(sample.depth, np.float32(1 / scale))
    np.fmax(depth, np.float32(0), out=depth)  # NaN (unknown) → 0; fmax drops NaN in one vectorised pass
    return {
        "x": x[None],
        **cameras,
        "depth": depth[None],
        "valid": sample.valid[None],
        "scale": scale,
        "checked_against": CHECKED_AGAINST["da3"],
    }


def da3_normalise_on_device(x_uint8: Any) -> Any:
    """A torch uint8 (B, N, H, W, 3) batch → DA3's float input (B, N, 3, H, W), computed as its
    InputProcessor computes it (ToTensor's /255, then ImageNet mean/std), on x_uint8's device."""
    x = x_uint8.permute(0, 1, 4, 2, 3).float().div(255)
    mean = x.new_tensor(IMAGENET_MEAN.tolist())[:, None, None]
    std = x.new_tensor(IMAGENET_STD.tolist())[:, None, None]
    return x.sub(mean).div(std)
