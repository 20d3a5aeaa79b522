"""Recipes: a shard `Sample` in another model's own batch layout, key names and conventions.

numpy only; no peer package is imported (the tests run the peers' own code against these outputs).
Each recipe records the peer release it was checked against (`CHECKED_AGAINST`); docs/reuse.md lists
the layouts, the conventions and the traps each one handles.

    from shardformat import views
    from shardformat.recipes import for_model, export_moge
    for sample in views.read("shards/eth3d_224"):
        batch = for_model("da3", sample)          # {"x", "extrinsics", "intrinsics", "depth", "valid", ...}
        pairs = for_model("dust3r", sample)       # [(view1, view2), ...] DUSt3R view dicts
        moge = for_model("moge", sample)          # MoGe's training batch dict

The loader's fast path: compact=True returns the shards' own compact arrays (uint8 images, float32 depth
with NaN) and `finish` does the per-pixel float work on the device, giving the same tensors:

        batch = finish("moge", for_model("moge", sample, compact=True), device="cuda")
"""

from __future__ import annotations

from typing import Any

from shardformat.recipes.common import CHECKED_AGAINST, RecipeError, collate
from shardformat.recipes.da3 import da3_batch, da3_normalise_on_device
from shardformat.recipes.device import finish
from shardformat.recipes.dust3r import dust3r_pairs
from shardformat.recipes.moge import export_moge, moge_batch, moge_intrinsics, read_moge_depth, write_moge_depth
from shardformat.views import Sample

RECIPES = {"da3": da3_batch, "moge": moge_batch, "dust3r": dust3r_pairs}


def for_model(model: str, sample: Sample, **options: Any) -> Any:
    """`sample` in the layout of `model` ("da3" | "moge" | "dust3r"); options go to that recipe."""
    if model not in RECIPES:
        raise RecipeError(f"no recipe for model {model!r}: use one of {', '.join(RECIPES)}")
    return RECIPES[model](sample, **options)


__all__ = [
    "CHECKED_AGAINST",
    "RECIPES",
    "RecipeError",
    "collate",
    "da3_batch",
    "da3_normalise_on_device",
    "dust3r_pairs",
    "export_moge",
    "finish",
    "for_model",
    "moge_batch",
    "moge_intrinsics",
    "read_moge_depth",
    "write_moge_depth",
]
