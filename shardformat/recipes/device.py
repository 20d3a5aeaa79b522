"""Device-side finishing of the compact recipes (`compact=True`): the per-pixel float work, in torch.

A compact recipe returns what the shards hold (uint8 images, float32 depth with NaN = unknown, cameras,
the pixel rays) and no per-pixel float array, so a loader adds next to nothing to the read; `finish`
then builds the peer's own tensors on the device (a GPU in real use): images to float, masks, depth
scaling, MoGe's normals, DUSt3R's world pts3d. Each tensor is computed with the same float32 operations,
in the same order, as the full CPU path (`compact=False`): on a CPU device the two are bit for bit equal
(tests/shardformat/test_recipes_peers.py); a GPU rounds each operation the same way (IEEE float32) unless
a fused multiply-add enters, so expect at most a few float32 ulps there.

    batch = finish("da3", for_model("da3", sample, compact=True), device="cuda")
    pairs = for_model("dust3r", sample, compact=True)
    view1 = finish("dust3r", collate([p[0] for p in pairs]), device="cuda")

torch is imported only when a finishing function runs (the recipes themselves stay numpy only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shardformat.recipes.common import IMAGENET_MEAN, IMAGENET_STD

RAYS = ("rays_x", "rays_y")  # compact-only keys: the pixel rays, (…, W) and (…, H) float32


def to_device(value: Any, device: Any = None) -> Any:
    """numpy arrays → torch tensors on `device`, recursively through dicts, lists and tuples; tensors are
    moved; other values stay as they are."""
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).to(device)
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def images_to_float(images: Any, mean: Any = None, std: Any = None) -> Any:
    """uint8 (…, H, W, 3) → float32 (…, 3, H, W): x/255, then (x − mean)/std per channel if given
    (torchvision's ToTensor and Normalize; the CPU path's tables hold the same float32 values)."""
    x = images.movedim(-1, -3).float().div(255)
    if mean is None:
        return x
    mean = x.new_tensor(np.asarray(mean, np.float32).tolist())[:, None, None]
    std = x.new_tensor(np.asarray(std, np.float32).tolist())[:, None, None]
    return x.sub(mean).div(std)


def points(depth: Any, rays_x: Any, rays_y: Any, pose: Any = None) -> Any:
    """float32 (…, H, W, 3): depth (…, H, W) unprojected along the pixel rays and moved by the float32
    4×4 `pose` (…, 4, 4) (None = camera frame): `shardformat.views.points_f32`'s operations."""
    return _stack(_planes(depth, rays_x, rays_y, pose))


def _planes(depth: Any, rays_x: Any, rays_y: Any, pose: Any = None) -> list[Any]:
    if pose is None:
        return [rays_x[..., None, :] * depth, rays_y[..., :, None] * depth, depth.clone()]
    R, t = pose[..., :3, :3], pose[..., :3, 3]
    planes = []
    for k in range(3):
        column = R[..., k, 1, None] * rays_y + R[..., k, 2, None]
        ray = (R[..., k, 0, None] * rays_x)[..., None, :] + column[..., :, None]
        planes.append(ray * depth + t[..., k, None, None])
    return planes


def _stack(planes: list[Any]) -> Any:
    import torch

    return torch.stack(planes, dim=-1)


def normal_map(planes: list[Any]) -> Any:
    """[x, y, z] camera-point planes (…, H, W) → unit normals (…, H, W, 3): `moge.normal_map`'s operations
    (NaN on the border and next to unknown depth)."""
    import torch

    du = [c[..., 1:-1, 2:] - c[..., 1:-1, :-2] for c in planes]
    dv = [c[..., 2:, 1:-1] - c[..., :-2, 1:-1] for c in planes]
    n = [dv[1] * du[2] - dv[2] * du[1], dv[2] * du[0] - dv[0] * du[2], dv[0] * du[1] - dv[1] * du[0]]
    # float32 sqrt through float64: correctly rounded on any device (torch's CPU float32 sqrt is off by an
    # ulp for some values here, numpy's is exact), so the normals equal the CPU path's bit for bit
    norm = torch.sqrt((n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).double()).float()
    norm = torch.where(torch.isnan(planes[2][..., 1:-1, 1:-1]), torch.nan, norm)
    out = torch.full((*planes[0].shape, 3), torch.nan, dtype=torch.float32, device=planes[0].device)
    out[..., 1:-1, 1:-1, :] = torch.stack([c / norm for c in n], dim=-1)
    return out


def da3_finish(batch: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """A compact DA3 batch → `for_model("da3", sample)`'s batch as tensors on `device`."""
    import torch

    out = to_device(batch, device)
    depth = out["depth"] * torch.tensor(np.float32(1 / batch["scale"]), device=out["depth"].device)
    out["x"] = images_to_float(out["x"], IMAGENET_MEAN, IMAGENET_STD)
    out["valid"] = torch.isfinite(out["depth"])
    out["depth"] = torch.fmax(depth, torch.zeros((), dtype=depth.dtype, device=depth.device))  # NaN → 0
    return out


def moge_finish(batch: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """A compact MoGe batch → `for_model("moge", sample)`'s batch as tensors on `device` (with `normal`
    when the compact batch carries the rays, i.e. normals=True)."""
    import torch

    out = to_device(batch, device)
    out["image"] = images_to_float(out["image"])
    out["depth_mask_fin"] = torch.isfinite(out["depth"])
    out["depth_mask_inf"] = torch.zeros_like(out["depth_mask_fin"])
    if "rays_x" in out:
        out["normal"] = normal_map(_planes(out["depth"], out.pop("rays_x"), out.pop("rays_y")))
    return out


def dust3r_finish(view: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """A compact DUSt3R view, or a `collate`d batch of them → the view dict of `for_model("dust3r", ...)`
    as tensors on `device`: img in [-1, 1], depthmap (0 = unknown), valid_mask, world pts3d."""
    import torch

    out = to_device(view, device)
    depth = out.pop("depth")
    out["img"] = images_to_float(out["img"], np.full(3, 0.5, np.float32), np.full(3, 0.5, np.float32))
    out["valid_mask"] = torch.isfinite(depth)
    out["depthmap"] = torch.fmax(depth, torch.zeros((), dtype=depth.dtype, device=depth.device))
    out["pts3d"] = points(out["depthmap"], out.pop("rays_x"), out.pop("rays_y"), out["camera_pose"])
    return out


FINISH = {"da3": da3_finish, "moge": moge_finish, "dust3r": dust3r_finish}


def finish(model: str, compact: Any, device: Any = None) -> Any:
    """`compact` (a compact recipe's output; for "dust3r" a view, a collated batch of views or the list of
    pairs) finished on `device` into the peer's tensors. A list of DUSt3R pairs finishes each frame's view
    once, however many pairs share it."""
    if model == "dust3r" and isinstance(compact, list):
        done: dict[int, dict[str, Any]] = {}
        for pair in compact:
            for view in pair:
                if id(view) not in done:
                    done[id(view)] = dust3r_finish(view, device)
        return [(done[id(a)], done[id(b)]) for a, b in compact]
    if model not in FINISH:
        raise ValueError(f"no finishing for model {model!r}: use one of {', '.join(FINISH)}")
    return FINISH[model](compact, device)
