"""Eval-mode forwards: one model on one batch, or both models (base, adapter) on the same batch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

LABELS = ("base", "adapter")  # the two models of a comparison, in report order
WINDOW_OUTPUTS = ("depth", "depth_conf", "pose_enc")
ALL_OUTPUTS = (*WINDOW_OUTPUTS, "world_points", "world_points_conf")


def eval_autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled (the heads run in fp32 inside the model); nothing on CPU."""
    from trainer.builders import bf16_autocast

    return bf16_autocast(device.type, enabled and device.type == "cuda")


@torch.no_grad()
def predict(
    model: torch.nn.Module, images: torch.Tensor, autocast_bf16: bool = True, outputs: tuple[str, ...] = WINDOW_OUTPUTS
) -> dict[str, torch.Tensor]:
    """Eval-mode forward; returns the `outputs` the model produced, in float32 (the training mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with eval_autocast(images.device, autocast_bf16):
            out = model(images)
    finally:
        model.train(was_training)
    return {k: out[k].float() for k in outputs if k in out}


def predict_models(
    base_model: torch.nn.Module | None,
    adapted_model: torch.nn.Module | None,
    images: torch.Tensor,
    autocast_bf16: bool = True,
    outputs: tuple[str, ...] = WINDOW_OUTPUTS,
) -> dict[str, dict[str, torch.Tensor]]:
    """Predictions by label: "adapter" (when there is an adapted model) and "base" (`base_model`, or the
    adapted model with its adapter disabled when `base_model` is None: one model in memory)."""
    predictions = {}
    if adapted_model is not None:
        predictions["adapter"] = predict(adapted_model, images, autocast_bf16, outputs)
    if base_model is None:
        with adapted_model.disable_adapter():
            predictions["base"] = predict(adapted_model, images, autocast_bf16, outputs)
    else:
        predictions["base"] = predict(base_model, images, autocast_bf16, outputs)
    return predictions


def model_device(model: torch.nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
