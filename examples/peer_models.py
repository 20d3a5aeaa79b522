"""The peer models at random initialisation in their smallest configurations, batch conversion to torch,
and the losses the examples train with: MoGe's own (it ships them), a documented minimal loss where the
peer ships none (Depth Anything 3 0.1.1 has no training code; mini-dust3r has no loss, so DUSt3R's
published Regr3D criterion is written here from mini-dust3r's own geometry functions).

Pass `weights=` (a safetensors file of the peer's published checkpoint) to start from real weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from examples.peer_env import import_torchvision


def to_torch(batch: Any) -> Any:
    """numpy arrays → torch tensors, recursively through dicts, lists and tuples; other values unchanged."""
    if isinstance(batch, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(batch))
    if isinstance(batch, dict):
        return {k: to_torch(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_torch(v) for v in batch)
    return batch


def _load_weights(model: torch.nn.Module, weights: str | Path | None) -> torch.nn.Module:
    if weights is not None:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(weights)))
    return model


# Depth Anything 3
def da3_model(config: str = "da3-small", weights: str | Path | None = None) -> torch.nn.Module:
    """`DepthAnything3Net` built from the package's own preset (da3-small: 34 M parameters)."""
    import_torchvision()
    import depth_anything_3
    from depth_anything_3.cfg import create_object, load_config

    path = Path(next(iter(depth_anything_3.__path__))) / "configs" / f"{config}.yaml"  # a namespace package
    return _load_weights(create_object(load_config(str(path))), weights)


def da3_depth_loss(pred_depth: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Minimal loss (DA3 0.1.1 ships none): mean absolute log-depth error over known pixels, after the
    per-sample median log ratio is taken out (scale-invariant, since a random or fine-tuned net's depth
    scale need not match the recipe's normalised frame)."""
    log_ratio = torch.log(pred_depth.clamp_min(1e-6)) - torch.log(depth.clamp_min(1e-6))
    losses = []
    for b in range(depth.shape[0]):
        r = log_ratio[b][valid[b]]
        losses.append((r - r.detach().median()).abs().mean())
    return torch.stack(losses).mean()


# MoGe-2
def moge_model(weights: str | Path | None = None, small: bool = True) -> torch.nn.Module:
    """MoGe-2 with microsoft/MoGe configs/train/v2.json's layout; small=True swaps the backbone to
    dinov2_vits14 and narrows the heads (45 M → a few M parameters in the heads) for a CPU step."""
    import_torchvision()
    from moge.model.v2 import MoGeModel

    backbone, layers, dim = ("dinov2_vits14", [2, 5, 8, 11], 384) if small else ("dinov2_vitl14", [5, 11, 17, 23], 1024)
    widths = [dim, 64, 32, 16, 8] if small else [1024, 256, 128, 64, 32]

    def stack(dim_out: int | None, blocks: list[int]) -> dict[str, Any]:
        return {
            "dim_in": widths,
            "dim_out": [None, None, None, None, dim_out],
            "dim_res_blocks": widths,
            "num_res_blocks": blocks,
            "res_block_in_norm": "none",
            "res_block_hidden_norm": "none",
            "resamplers": ["conv_transpose", "conv_transpose", "conv_transpose", "bilinear"],
        }

    model = MoGeModel(
        encoder={"backbone": backbone, "intermediate_layers": layers, "dim_out": dim},
        neck={**stack(None, [0, 2, 2, 2, 0]), "dim_in": [dim + 2, 2, 2, 2, 2]},
        points_head=stack(3, [0, 1, 1, 1, 0]),
        normal_head=stack(3, [0, 1, 1, 1, 0]),
        mask_head=stack(1, [0, 1, 1, 1, 0]),
        scale_head={"dims": [dim, dim, 1]},
        remap_output="exp",
    )
    return _load_weights(model, weights)


def moge_gt_points(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """GT point map as MoGe's train script makes it: utils3d's depth_map_to_point_map on the normalised K."""
    import utils3d

    return utils3d.pt.depth_map_to_point_map(batch["depth"], intrinsics=batch["intrinsics"])


def moge_loss(
    pred_points: torch.Tensor, batch: dict[str, torch.Tensor], align_resolution: int = 48
) -> tuple[torch.Tensor, torch.Tensor]:
    """MoGe's own affine-invariant global loss (label type B/C's first term; its config aligns at 48²) per
    image; returns (mean loss, recovered scale per image). A scale of 0 means the alignment failed: check
    the axes. Its alignment tries every known pixel as an anchor, so its cost grows ~ align_resolution⁴
    to ⁶: on a CPU 16 takes seconds per image, 48 minutes."""
    from moge.train.losses import affine_invariant_global_loss

    gt = moge_gt_points(batch)
    losses, scales = [], []
    for i in range(gt.shape[0]):
        loss, _, scale = affine_invariant_global_loss(pred_points[i], gt[i], align_resolution=align_resolution)
        losses.append(loss)
        scales.append(scale)
    return torch.stack(losses).mean(), torch.stack(scales)


# DUSt3R family
def dust3r_model(tiny: bool = True, weights: str | Path | None = None) -> torch.nn.Module:
    """`AsymmetricCroCo3DStereo`: the published 224-linear architecture (ViT-L / ViT-B, 532 M) or, with
    tiny=True, the same model at 2 encoder / 2 decoder blocks of width 192 / 128 for a CPU step."""
    import_torchvision()
    from mini_dust3r.model import AsymmetricCroCo3DStereo

    if tiny:
        sizes = dict(enc_embed_dim=192, enc_depth=2, enc_num_heads=3, dec_embed_dim=128, dec_depth=2, dec_num_heads=4)
    else:
        sizes = dict(
            enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12
        )
    model = AsymmetricCroCo3DStereo(
        output_mode="pts3d", head_type="linear", patch_embed_cls="PatchEmbedDust3R", img_size=(224, 224),
        pos_embed="RoPE100", **sizes,
    )  # fmt: skip
    return _load_weights(model, weights)


def dust3r_regr3d_loss(
    view1: dict[str, torch.Tensor], view2: dict[str, torch.Tensor], pred1: torch.Tensor, pred2_in_1: torch.Tensor
) -> torch.Tensor:
    """DUSt3R's Regr3D(L21, norm_mode='avg_dis') without the confidence term: both views' GT points go
    into view 1's camera, GT and prediction are each divided by their mean distance to that camera over
    both views' known pixels, and the loss is the mean Euclidean distance (naver/dust3r dust3r/losses.py)."""
    from mini_dust3r.utils.geometry import geotrf, inv, normalize_pointcloud

    in_cam1 = inv(view1["camera_pose"].double()).float()
    gt1, gt2 = geotrf(in_cam1, view1["pts3d"]), geotrf(in_cam1, view2["pts3d"])
    v1, v2 = view1["valid_mask"].clone(), view2["valid_mask"].clone()
    pr1, pr2 = normalize_pointcloud(pred1, pred2_in_1, "avg_dis", v1, v2)
    gt1, gt2 = normalize_pointcloud(gt1, gt2, "avg_dis", v1, v2)
    return (pr1 - gt1).norm(dim=-1)[v1].mean() + (pr2 - gt2).norm(dim=-1)[v2].mean()
