"""What the recipes share: the peer releases they were checked against, size guards, collation."""

from __future__ import annotations

from typing import Any

import numpy as np

# The release of each peer whose own code the tests ran against the recipe's output (tests/shardformat/).
CHECKED_AGAINST = {"da3": "depth-anything-3 0.1.1", "moge": "dlr-moge 2.0.0", "dust3r": "mini-dust3r 0.1.2"}

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class RecipeError(ValueError):
    """A sample the peer model cannot take as it is (the message says what to build instead)."""


def check_multiple(model: str, size: tuple[int, int], patch: int, builds: str) -> None:
    h, w = size
    if h % patch or w % patch:
        raise RecipeError(
            f"{model}: image size {w}x{h} is not a multiple of its patch size {patch}; build the shards at a "
            f"size it takes ({builds}), or views.resize() to one"
        )


# uint8 → float32 by the same float32 operations as torchvision's ToTensor (x / 255) and Normalize ((x − mean)
# / std), each a vectorised pass written straight into the (…, 3, H, W) layout: 2–3× faster than a lookup
# table with uint8 indices (np.take gathers byte by byte), and value for value the same.
def to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) → float32 (..., 3, H, W) in [0, 1], value for value torchvision's ToTensor."""
    out = np.empty((*images.shape[:-3], 3, *images.shape[-3:-1]), dtype=np.float32)
    np.divide(np.moveaxis(images, -1, -3), np.float32(255), out=out, dtype=np.float32)
    return out


def to_normalised_float(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) → float32 (..., 3, H, W), (x/255 − mean)/std per channel in float32 (ToTensor
    then Normalize)."""
    out = to_unit_float(images)
    out -= mean.astype(np.float32)[:, None, None]
    out /= std.astype(np.float32)[:, None, None]
    return out


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of per-item dicts into one batch: arrays along a new first axis, the rest as lists."""
    out: dict[str, Any] = {}
    for name in items[0]:
        values = [item[name] for item in items]
        out[name] = np.stack(values) if isinstance(values[0], np.ndarray) else values
    return out
