"""Periodic validation inside a training run: the loss terms and depth metrics on the val split.

(`trainer/evaluate.py` is the full evaluation command: metrics per window, both models, pictures.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainer.builders import freeze_modes
from trainer.config import TrainConfig
from trainer.data import Loader, ShardError, make_loader, to_device
from trainer.distributed import Dist, barrier

log = logging.getLogger("trainer")

DEPTH_SUMS = ("abs_rel", "delta1", "abs_rel_med", "delta1_med", "n")  # what validation_depth_metrics sums


def validation_depth_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Sums over windows of the frame-averaged AbsRel and δ<1.25, as predicted (normalised frame) and
    with one median scale per window (trainer.metrics' `sequence` alignment), plus the window count.

    pred, gt, mask [B,S,H,W]; the same metric code as `python -m trainer eval`.
    """
    from trainer.metrics import align_depth, depth_metrics

    out = dict.fromkeys(DEPTH_SUMS, 0.0)
    for p, g, m in zip(pred.float(), gt.float(), mask.bool(), strict=True):
        m = m & (g > 0) & torch.isfinite(p) & (p > 0)
        if not bool(m.any()):
            continue
        for suffix, alignment in (("", "none"), ("_med", "sequence")):
            metrics = depth_metrics(align_depth(p, g, m, alignment)[0], g, m)
            out["abs_rel" + suffix] += float(metrics["abs_rel"].nanmean())
            out["delta1" + suffix] += float(metrics["delta1"].nanmean())
        out["n"] += 1
    return out


@torch.no_grad()
def validation_scores(
    model: nn.Module,
    loader: Loader,
    loss_cfg: Any,
    device: torch.device,
    autocast: Callable[[], Any],
    max_batches: int | None,
) -> dict[str, float]:
    """Loss terms averaged over batches and depth metrics averaged over windows, as `val/...` scalars."""
    from trainer.losses import compute_loss, prepare_batch

    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    batches = 0
    depth = dict.fromkeys(DEPTH_SUMS, 0.0)
    for batch in loader.epoch_batches(0):
        if max_batches is not None and batches >= max_batches:
            break
        batch = prepare_batch(to_device(batch, device))
        with autocast():
            preds = model(batch["images"])
        _, terms = compute_loss(preds, batch, loss_cfg)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        for name, value in validation_depth_metrics(
            preds["depth"][..., 0], batch["depths"], batch["point_masks"]
        ).items():
            depth[name] += value
        batches += 1
    if was_training:
        freeze_modes(model)
    result = {f"val/{k}": v / max(batches, 1) for k, v in sums.items()}
    n = max(depth.pop("n"), 1.0)
    result.update({f"val/{k}": v / n for k, v in depth.items()})
    return result


def validate(peft_model: nn.Module, cfg: TrainConfig, d: Dist, autocast: Callable[[], Any]) -> dict[str, float]:
    """Validation on rank 0 over the whole val split (the other ranks wait); {} without a val split."""
    result: dict[str, float] = {}
    if d.main:
        data = cfg.data
        try:
            loader = make_loader(
                data.shards,
                data.val_split,
                1,
                shuffle=False,
                num_workers=0,
                frames=data.frames,
                rank=0,
                world_size=1,
                split_across_ranks=False,
            )
        except ShardError as exc:  # a dataset without a val split still trains
            log.warning("validation skipped: %s", exc)
            loader = None
        if loader is not None:
            result = validation_scores(peft_model, loader, cfg.loss, d.device, autocast, cfg.val_batches)
            log.info("validation: " + "  ".join(f"{k[4:]} {v:.4f}" for k, v in sorted(result.items())))
    barrier(d)
    return result
