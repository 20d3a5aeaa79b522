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


def check_multiple(model: str, size: tuple[int, int], patch: int, example: str) -> None:
    h, w = size
    if h % patch or w % patch:
        raise RecipeError(
            f"{model}: image size {w}x{h} is not a multiple of its patch size {patch}; build the shards at a "
            f"size it takes (e.g. `dataengine build --size {example}`), or views.resize() to one"
        )


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) → float32 (..., 3, H, W) in [0, 1], computed as torchvision's ToTensor does."""
    out = images.astype(np.float32) / np.float32(255)
    return np.ascontiguousarray(np.moveaxis(out, -1, -3))


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of per-item dicts into one batch: arrays along a new first axis, the rest as lists."""
    out: dict[str, Any] = {}
    for name in items[0]:
        values = [item[name] for item in items]
        out[name] = np.stack(values) if isinstance(values[0], np.ndarray) else values
    return out
