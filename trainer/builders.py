"""The building blocks of a run, each from its config section: model (+ LoRA), optimizer, loader,
precision, and the position a resumed run continues from. `python -m trainer eval|export` build
their models here too."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.checkpoints import Position, read_trainer_state, set_rng_state, state_position
from trainer.config import OptimConfig, TrainConfig
from trainer.data import Loader, make_loader
from trainer.distributed import Dist

log = logging.getLogger("trainer")

TRAIN_HEADS = ("camera", "depth")  # the point head is not supervised (official recipe)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(
    name: str,
    weights: str | None,
    heads: tuple[str, ...] = TRAIN_HEADS,
    activation_checkpointing: bool = False,
    dpt_checkpoint_frames: int = 1,
    weights_revision: str | None = None,
) -> nn.Module:
    """VGGT preset `name` ("vggt-1b" | "tiny") with pretrained `weights` (path, or hub id at
    `weights_revision`, default the pinned one) or random init."""
    from trainer.vggt import VGGT, VGGTConfig, load_pretrained

    config = VGGTConfig.preset(name).with_heads(heads)
    if weights:
        model = load_pretrained(weights, config=config, revision=weights_revision)
    else:
        log.warning("no --weights: %s starts from a random initialisation", name)
        model = VGGT(config)
    model.set_activation_checkpointing(activation_checkpointing, dpt_checkpoint_frames)
    return model.eval()


def freeze_modes(model: nn.Module) -> None:
    """Put top-level parts without trainable parameters in eval mode (no checkpoint recompute there)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.train()
    for child in base.children():
        if not any(p.requires_grad for p in child.parameters()):
            child.eval()


def build_peft_model(cfg: TrainConfig, ckpt: Path | None, device: torch.device) -> tuple[nn.Module, Any]:
    """Base weights, then LoRA (seed first: the same init on every rank), then the run's own adapter
    when resuming. Returns the PeftModel on `device` and its parameter report."""
    from trainer.lora import apply_strategy, load_adapter_weights, param_report

    model = build_model(
        cfg.model,
        cfg.weights,
        activation_checkpointing=cfg.activation_checkpointing,
        dpt_checkpoint_frames=cfg.dpt_checkpoint_frames,
        weights_revision=cfg.weights_revision,
    )
    peft_model = apply_strategy(model, cfg.lora)
    if ckpt is not None:
        load_adapter_weights(peft_model, ckpt)
    peft_model.to(device)
    freeze_modes(peft_model)
    return peft_model, param_report(peft_model, cfg.lora)


def build_optimizer(params: list[nn.Parameter], o: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, fused=device.type == "cuda")


def wrap_model(peft_model: nn.Module, cfg: TrainConfig, d: Dist) -> nn.Module:
    """What the loop calls: DDP when there are several processes, compiled when asked."""
    net = peft_model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(peft_model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def bf16_autocast(device_type: str, enabled: bool = True):
    """The one bf16 autocast context of the trainer (training, evaluation, the memory trace); nothing when
    not enabled. bf16 needs no GradScaler (fp16 would)."""
    return torch.autocast(device_type, dtype=torch.bfloat16) if enabled else nullcontext()


def autocast_for(precision: str, device: torch.device) -> tuple[bool, Callable[[], Any]]:
    """(uses bf16, a factory of the forward's autocast context). bf16 needs no GradScaler (fp16 would)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")

    def autocast():
        return bf16_autocast(device.type, use_bf16)

    return use_bf16, autocast


def build_train_loader(cfg: TrainConfig) -> Loader:
    data = cfg.data
    return make_loader(
        data.shards,
        data.train_split,
        data.batch_size,
        shuffle=True,
        num_workers=data.num_workers,
        seed=cfg.seed,
        shuffle_buffer=data.shuffle_buffer,
        frames=data.frames,
        pin_memory=data.pin_memory,
        prefetch_factor=data.prefetch_factor,
        decode_threads=data.decode_threads,
    )


def restore(ckpt: Path | None, optimizer: torch.optim.Optimizer, seed: int, d: Dist) -> Position:
    """The optimizer, RNG and data position of `ckpt`; without one, step 0 and per-rank seeds (dropout)."""
    if ckpt is None:
        seed_everything(seed + d.rank)
        return Position()
    # checkpoints.check_resume (in preflight) has refused another process count or other data already.
    state = read_trainer_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(torch.load(ckpt / f"rng_{d.rank}.pt", weights_only=False))
    pos = state_position(state)
    log.info("resumed from %s: step %d, epoch %d, %d batches into the epoch", ckpt, pos.step, pos.epoch, pos.consumed)
    return pos


def weights_revision_used(cfg: TrainConfig) -> str | None:
    """The hub revision the base weights were downloaded at (None: local file or random init)."""
    from trainer.vggt.loading import hub_revision, is_hub_id

    return hub_revision(cfg.weights, cfg.weights_revision) if cfg.weights and is_hub_id(cfg.weights) else None
