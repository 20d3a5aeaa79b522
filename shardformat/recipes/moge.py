"""MoGe-2 (`moge.model.v2`, `moge.train.dataloader` / `losses`), checked against dlr-moge 2.0.0.

Its training batch: image (B, 3, H, W) in [0, 1]; depth (B, H, W) with **NaN = unknown** (0 would mark
every pixel valid) and +inf = sky (never: ETH3D's "no ground truth" is unknown, not sky);
depth_mask_fin = known pixels ("only_known"), depth_mask_inf = False; normal (B, H, W, 3) from the
depth; intrinsics **normalised**: (0, 0) is the image's top-left corner and (1, 1) its bottom-right, so
cx_n = (cx + 0.5)/W and fx_n = fx/W (cx/W moves the points); label_type "B" for dense laser or MVS
depth, "C" for sparse; is_metric from the shards' units. Camera axes are OpenCV's, as in the shards.

`export_moge(samples, out_dir)` writes MoGe's on-disk training format (one folder per frame with
image.jpg, depth.png, meta.json; `.index.txt`) for training with MoGe's own scripts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from shardformat.recipes.common import CHECKED_AGAINST, RecipeError, to_unit_float
from shardformat.views import Sample, pixel_rays, points_planes

DENSE_SOURCES = ("laser", "mvs")


def moge_intrinsics(K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel K (OpenCV centres) → MoGe's normalised K: fx/W, fy/H, (cx + 0.5)/W, (cy + 0.5)/H."""
    h, w = size
    out = np.array(K, dtype=np.float64, copy=True)
    out[..., 0, :] /= w
    out[..., 1, :] /= h
    out[..., 0, 2] += 0.5 / w
    out[..., 1, 2] += 0.5 / h
    return out


def normal_map(points: np.ndarray | list[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """(H, W, 3) camera points, or their [x, y, z] planes (NaN = unknown) → float32 unit normals (H, W, 3),
    NaN on the border and where a pixel or one of its four neighbours has no depth (central differences,
    never across a hole). (v-difference) × (u-difference) faces the camera for any surface a camera sees in
    OpenCV axes. The float32 operations are those of `shardformat.recipes.device.normal_map`. `out`: a
    float32 (H, W, 3) array to write into (a batch's slot, no stacking copy)."""
    planes = [points[..., k] for k in range(3)] if isinstance(points, np.ndarray) else points
    p = [np.asarray(c, dtype=np.float32) for c in planes]
    du = [c[1:-1, 2:] - c[1:-1, :-2] for c in p]
    dv = [c[2:, 1:-1] - c[:-2, 1:-1] for c in p]
    n = [
        dv[1] * du[2] - dv[2] * du[1],
        dv[2] * du[0] - dv[0] * du[2],
        dv[0] * du[1] - dv[1] * du[0],
    ]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
        norm[np.isnan(p[2][1:-1, 1:-1])] = np.nan  # a pixel without depth has no normal either
        out = np.empty((*p[0].shape, 3), dtype=np.float32) if out is None else out
        out[[0, -1]] = np.nan
        out[:, [0, -1]] = np.nan
        for k in range(3):
            np.divide(n[k], norm, out=out[1:-1, 1:-1, k])
    return out


def label_type(sample: Sample, i: int) -> str:
    return "B" if sample.depth_source and sample.depth_source[i] in DENSE_SOURCES else "C"


def moge_batch(
    sample: Sample, frames: Iterable[int] | None = None, normals: bool = True, compact: bool = False
) -> dict[str, Any]:
    """The frames of `sample` (all by default) as one MoGe training batch (module docstring). normals=False
    leaves out `normal` (only its normal_map loss, weight 0.1 for label types A/B, reads it). compact=True
    leaves every per-pixel step to `shardformat.recipes.device.finish("moge", batch, device)`: image uint8
    (B, H, W, 3), depth the sample's own, no masks or normal, the pixel rays `rays_x` / `rays_y` for the
    normals; the finished batch equals this one."""
    idx = list(range(len(sample))) if frames is None else list(frames)
    every = idx == list(range(len(sample)))  # the sample's own arrays, no copy
    depth = sample.depth if every else sample.depth[idx]
    images = sample.images if every else sample.images[idx]
    batch = {
        "image": images,
        "depth": depth,
        "intrinsics": moge_intrinsics(sample.K[idx], sample.size).astype(np.float32),
        "label_type": [label_type(sample, i) for i in idx],
        "is_metric": [sample.is_metric] * len(idx),
        "info": [{"dataset": sample.scene, "filename": f"{sample.key}/{i}"} for i in idx],
        "checked_against": CHECKED_AGAINST["moge"],
    }
    rays = pixel_rays(sample.K[idx], sample.size) if normals else None
    if compact:
        return batch | ({"rays_x": rays[0], "rays_y": rays[1]} if normals else {})
    known = np.isfinite(depth)
    batch |= {"image": to_unit_float(images), "depth_mask_fin": known, "depth_mask_inf": np.zeros_like(known)}
    if normals:
        batch["normal"] = np.empty((*depth.shape, 3), dtype=np.float32)
        for b in range(len(idx)):
            normal_map(points_planes(depth[b], rays[0][b], rays[1][b]), out=batch["normal"][b])
    return batch


# MoGe's depth PNG: 16-bit, 0 = unknown, 65535 = +inf, 1..65534 = log depth between the `near` and `far`
# text fields (the range of the finite values).
def write_moge_depth(path: str | Path | io.BytesIO, depth: np.ndarray, max_range: float = 1e5) -> None:
    """Encode `depth` (NaN = unknown, +inf = sky) as MoGe's depth PNG. 0 or negative values are refused:
    0 means "unknown" in the shards and would be written as the nearest depth."""
    from PIL import Image, PngImagePlugin

    depth = np.asarray(depth, dtype=np.float32)
    finite = np.isfinite(depth)
    if (depth[finite] <= 0).any():
        raise RecipeError(
            f"{path}: {int((depth[finite] <= 0).sum())} depth values <= 0; unknown depth must be NaN "
            "(views.read gives NaN for the shards' 0), not 0"
        )
    if np.isneginf(depth).any():
        raise RecipeError(f"{path}: -inf depth; unknown depth must be NaN")
    if not finite.any():
        raise RecipeError(f"{path}: no known depth to write")
    near = max(float(depth[finite].min()), 1e-5)
    far = max(near * 1.1, min(float(depth[finite].max()), near * max_range))
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.log(np.clip(np.where(finite, depth, near), near, far) / near) / np.log(far / near)
    code = (1 + np.round(np.clip(t, 0, 1) * 65533)).astype(np.uint16)
    code[np.isnan(depth)] = 0
    code[np.isposinf(depth)] = 65535
    info = PngImagePlugin.PngInfo()
    info.add_text("near", repr(near))
    info.add_text("far", repr(far))
    Image.fromarray(code).save(path, format="PNG", pnginfo=info, compress_level=7)


def read_moge_depth(path: str | Path | io.BytesIO) -> np.ndarray:
    """MoGe's depth PNG → float32 depth (NaN = unknown, +inf = sky)."""
    from PIL import Image

    with Image.open(path) as image:
        near, far = float(image.info["near"]), float(image.info["far"])
        code = np.array(image)
    t = (code.astype(np.float64) - 1) / 65533
    depth = (near ** (1 - t) * far**t).astype(np.float32)
    depth[code == 0] = np.nan
    depth[code == 65535] = np.inf
    return depth


def export_moge(samples: Sample | Iterable[Sample], out_dir: str | Path, quality: int = 95) -> Path:
    """Write MoGe's on-disk training format: out_dir/<key>_<frame>/{image.jpg, depth.png, meta.json} per
    frame with known depth, out_dir/.index.txt listing them, and out_dir/dataset.json, the entry for
    MoGe's training config (label_type, depth_unit only for metric shards, finite_depth_mask "only_known"
    since "no ground truth" is unknown, not sky). Returns out_dir."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names, labels, metric = [], set(), set()
    for sample in [samples] if isinstance(samples, Sample) else samples:
        K = moge_intrinsics(sample.K, sample.size)
        for i in range(len(sample)):
            if not sample.valid[i].any():
                continue  # MoGe's loader treats an instance without depth as a failure
            name = f"{sample.key}_{i:02d}"
            folder = out / name
            folder.mkdir(exist_ok=True)
            Image.fromarray(sample.images[i]).save(folder / "image.jpg", quality=quality)
            write_moge_depth(folder / "depth.png", sample.depth[i])
            (folder / "meta.json").write_text(json.dumps({"intrinsics": K[i].tolist()}))
            names.append(name)
            labels.add(label_type(sample, i))
            metric.add(sample.is_metric)
    if not names:
        raise RecipeError(f"{out}: no frame with known depth to export")
    (out / ".index.txt").write_text("\n".join(names) + "\n")
    entry: dict[str, Any] = {
        "name": out.name,
        "path": str(out),
        "label_type": "C" if "C" in labels else "B",
        "finite_depth_mask": "only_known",
        "weight": 1.0,
    }
    if metric == {True}:
        entry["depth_unit"] = 1.0
    (out / "dataset.json").write_text(json.dumps(entry, indent=2) + "\n")
    return out
