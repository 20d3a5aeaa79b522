"""The training loop: shards → VGGT + LoRA → losses → AdamW, with exact resume.

One GPU:   python -m trainer train --config configs/strategy_b.yaml --shards DIR
N GPUs:    torchrun --nproc_per_node=N -m trainer train --config configs/strategy_b.yaml --shards DIR
CPU (tiny model, tests and `make demo`): the same command with --model tiny.

Run directory (`--out`):
  config.yaml          resolved config + meta (git sha, versions, world size, parameter counts)
  train.log            the log lines; metrics.jsonl one JSON record per log/validation step
  tb/                  TensorBoard scalars
  checkpoints/step_N/  adapter_config.json + adapter_model.safetensors (PEFT) + vggt_adapter.json,
                       trainer_state.pt (optimizer, step, data position; the lr is a function of
                       the step), rng_<rank>.pt
  checkpoints/latest   name of the newest complete checkpoint
  adapter/             the final adapter (a copy of the last checkpoint's PEFT files)

Design notes (bugs of other trainers avoided, see docs/training.md):
* bf16 autocast without a GradScaler (a scaler is only needed for fp16);
* gradient accumulation over whole loader batches: no chunking, so no empty chunks at any batch size;
* resume loads the base weights from `weights` (they are frozen) and the adapter, optimizer,
  scheduler, RNG and data position from the run's own latest checkpoint;
* torchrun is optional; DDP only when WORLD_SIZE > 1.

The building blocks live next door: builders.py (model + LoRA, optimizer, loader, resume position),
preflight.py (cheap checks first), distributed.py, checkpoints.py, validation.py, runlog.py (logs and
window statistics). This file is the loop.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from shardformat.provenance import git_sha
from trainer.builders import (
    TRAIN_HEADS,
    autocast_for,
    build_model,
    build_optimizer,
    build_peft_model,
    build_train_loader,
    freeze_modes,
    restore,
    seed_everything,
    weights_revision_used,
    wrap_model,
)
from trainer.checkpoints import Position, checkpoint_step, latest_checkpoint, save_checkpoint, trainer_state
from trainer.config import LossConfig, OptimConfig, TrainConfig, dump_config
from trainer.data import to_device
from trainer.distributed import Dist, all_ranks_finite, barrier, init_distributed
from trainer.errors import UserError
from trainer.preflight import RunSetupError, preflight
from trainer.runlog import ScalarLog, StepStats, drop_records_after, progress_bar, run_logging
from trainer.validation import validate, validation_depth_metrics

__all__ = [
    "train",
    "train_step",
    "lr_factor",
    "RunResult",
    "StepResult",
    "NonFiniteLossError",
    "RunSetupError",
    "TRAIN_HEADS",
    "build_model",
    "freeze_modes",
    "seed_everything",
    "init_distributed",
    "validation_depth_metrics",
]

log = logging.getLogger("trainer")


class NonFiniteLossError(UserError, RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


@dataclass
class RunResult:
    run_dir: Path
    step: int
    skipped_steps: int
    losses: list[float]  # objective per optimizer step of this invocation (nan for skipped steps)
    val: dict[str, float]
    model: nn.Module | None = None  # the trained PeftModel (for notebooks and tests)


@dataclass
class StepResult:
    terms: dict[str, float]  # loss terms averaged over the micro-batches ({} or partial when not finite)
    grad_norm: float
    finite: bool  # False: the step was skipped (non-finite loss or gradient norm on some rank)
    wait: float  # seconds spent waiting for data
    epoch: int  # data position after the step's batches
    consumed: int
    keys: list[str]  # the last micro-batch's sample keys (for error messages)


def lr_factor(step: int, max_steps: int, warmup_frac: float, lr: float, min_lr: float) -> float:
    """Multiplier of the base lr at `step`: linear warm-up, then cosine down to min_lr."""
    warmup = int(round(warmup_frac * max_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    floor = min_lr / lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_step(
    net: nn.Module,
    batches: Iterator,
    *,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    optim_cfg: OptimConfig,
    loss_cfg: LossConfig,
    lr: float,
    dist_info: Dist,
    autocast: Callable[[], Any],
) -> StepResult:
    """One optimizer step over `optim_cfg.accum_steps` whole loader batches (no chunking, so no empty chunks).
    A non-finite loss or gradient on any rank skips the step on every rank; its batches are still
    consumed, so the data position does not depend on what happened."""
    from trainer.losses import compute_loss, prepare_batch

    wait, finite, terms = 0.0, True, {}
    for micro in range(optim_cfg.accum_steps):
        t_wait = time.perf_counter()
        epoch, consumed, batch = next(batches)
        batch = to_device(batch, dist_info.device)
        wait += time.perf_counter() - t_wait
        batch = prepare_batch(batch)
        if not finite:
            continue
        # DDP all-reduces on the last micro-batch only
        sync = micro == optim_cfg.accum_steps - 1 or dist_info.world == 1
        with nullcontext() if sync else net.no_sync():
            with autocast():
                preds = net(batch["images"])
            loss, micro_terms = compute_loss(preds, batch, loss_cfg)
            finite = all_ranks_finite(loss, dist_info)
            if finite:
                (loss / optim_cfg.accum_steps).backward()
        for name, value in micro_terms.items():
            terms[name] = terms.get(name, 0.0) + float(value) / optim_cfg.accum_steps
    grad_norm = torch.nn.utils.clip_grad_norm_(params, optim_cfg.grad_clip) if finite else torch.tensor(float("nan"))
    finite = finite and bool(torch.isfinite(grad_norm))
    if finite:
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(terms, float(grad_norm), finite, wait, epoch, consumed, batch["keys"])


def train(
    cfg: TrainConfig, resume: bool = False, stop_after: int | None = None, verify_shards: bool = False
) -> RunResult:
    """Train until cfg.max_steps (or `stop_after` steps of this call, then checkpoint and return).

    `verify_shards`: also compare every shard's sha256 with the manifest before starting."""
    d = init_distributed()
    run_dir = Path(cfg.out)
    ckpt, identity = preflight(cfg, resume, verify_shards, d.world)
    if resume and ckpt is None:
        print(f"--resume: {run_dir} has no checkpoint yet; starting from step 0", file=sys.stderr)
    if cfg.weights:  # the expensive check last: fetch (or find in the hub cache) before anything is written
        from trainer.vggt.loading import resolve_checkpoint

        resolve_checkpoint(cfg.weights)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            drop_records_after(run_dir / "metrics.jsonl", checkpoint_step(ckpt))
    barrier(d)
    try:
        with run_logging(run_dir, d.main):
            return _run(cfg, d, run_dir, ckpt, stop_after, identity)
    finally:
        if d.world > 1:
            # Free the DDP wrapper (kept alive by reference cycles) while the process group is still up (see
            # init_distributed for the other half of a clean gloo teardown).
            gc.collect()
        if d.owns_group:
            dist.destroy_process_group()


def _run(
    cfg: TrainConfig, d: Dist, run_dir: Path, ckpt: Path | None, stop_after: int | None, identity: dict[str, Any]
) -> RunResult:
    use_bf16, autocast = autocast_for(cfg.precision, d.device)
    seed_everything(cfg.seed)
    peft_model, report = build_peft_model(cfg, ckpt, d.device)
    for line in report.lines():
        log.info(line)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, cfg.optim, d.device)
    net = wrap_model(peft_model, cfg, d)
    pos = restore(ckpt, optimizer, cfg.seed, d)
    loader = build_train_loader(cfg)
    info = {
        "model": cfg.model,
        "weights": cfg.weights,
        "weights_revision": weights_revision_used(cfg),
        "strategy": cfg.lora.strategy,
        "targets": cfg.lora.targets,
        "git_sha": git_sha(mark_dirty=True),
    }
    if d.main:
        _write_run_config(cfg, run_dir, d, report, info, use_bf16, loader.batches_per_epoch(pos.epoch))

    o, batches = cfg.optim, loader.batches_from(pos.epoch, pos.consumed)
    stats, scalar_log = StepStats(cfg.data.batch_size * o.accum_steps * d.world), ScalarLog(run_dir, d.main)
    start_step, end_step = pos.step, cfg.max_steps if stop_after is None else min(cfg.max_steps, pos.step + stop_after)
    losses, val, nonfinite_in_a_row = [], {}, 0
    if pos.step >= cfg.max_steps:
        log.info("already at step %d of max_steps %d: nothing to do", pos.step, cfg.max_steps)
    progress = progress_bar(pos.step, cfg.max_steps, d.main)
    try:  # the progress bar ends its line before any error message
        while pos.step < end_step:
            t0 = time.perf_counter()
            lr = o.lr * lr_factor(pos.step, cfg.max_steps, o.warmup_frac, o.lr, o.min_lr)
            out = train_step(
                net,
                batches,
                optimizer=optimizer,
                params=params,
                optim_cfg=o,
                loss_cfg=cfg.loss,
                lr=lr,
                dist_info=d,
                autocast=autocast,
            )
            pos.step, pos.epoch, pos.consumed = pos.step + 1, out.epoch, out.consumed
            nonfinite_in_a_row = 0 if out.finite else nonfinite_in_a_row + 1
            if not out.finite:
                pos.skipped_steps += 1
                _on_skipped_step(out, pos.step, nonfinite_in_a_row, pos.skipped_steps, cfg, run_dir)
            losses.append(out.terms.get("objective", math.nan) if out.finite else math.nan)
            stats.add(out.terms, out.grad_norm, out.finite, time.perf_counter() - t0, out.wait)
            progress.update(1)
            if pos.step % cfg.log_every == 0 or pos.step == end_step:
                scalar_log.write(pos.step, _log_window(stats.scalars(lr, pos.skipped_steps, d), pos, cfg, progress))
            if (cfg.val_every and pos.step % cfg.val_every == 0) or pos.step == cfg.max_steps:
                val = validate(peft_model, cfg, d, autocast)
                scalar_log.write(pos.step, val)
            if (cfg.save_every and pos.step % cfg.save_every == 0) or pos.step == end_step:
                path = save_checkpoint(
                    run_dir, peft_model, trainer_state(pos, optimizer, d.world, identity), info, d, cfg.keep_checkpoints
                )
                log.info("checkpoint %s", path)
    finally:
        progress.close()
        scalar_log.close()
    if pos.step >= cfg.max_steps and d.main:
        _publish_adapter(run_dir, pos)
    barrier(d)
    if pos.step - start_step > 0 and d.main:
        log.info("%d step(s) this run", pos.step - start_step)
    return RunResult(run_dir, pos.step, pos.skipped_steps, losses, val, peft_model)


def _on_skipped_step(out: StepResult, step: int, in_a_row: int, total: int, cfg: TrainConfig, run_dir: Path) -> None:
    bad_loss = "objective" not in out.terms or not math.isfinite(out.terms["objective"])
    log.warning(
        "step %d: non-finite %s, step skipped (%d in a row, %d total)",
        step,
        "loss" if bad_loss else "gradient",
        in_a_row,
        total,
    )
    if in_a_row >= cfg.max_nonfinite_in_a_row:
        raise NonFiniteLossError(
            f"{in_a_row} consecutive steps had a non-finite loss or gradient (last: step {step}, samples "
            f"{out.keys}). Lower optim.lr, try precision=fp32, or check the shards with "
            f"`python -m dataengine inspect`; the last good checkpoint is in {run_dir / 'checkpoints'}"
        )


def _log_window(scalars: dict[str, float], pos: Position, cfg: TrainConfig, progress: Any) -> dict[str, float]:
    """The log line and progress-bar text of the steps since the last log line."""
    loss = scalars.get("train/objective", math.nan)
    progress.set_postfix(
        loss=f"{loss:.4f}", lr=f"{scalars['train/lr']:.2e}", wait=f"{scalars['perf/data_wait_pct']:.1f}%"
    )
    log.info(
        "step %d/%d  loss %.4f  lr %.2e  grad %.3f  %.2f samples/s  data-wait %.1f%%  epoch %d",
        pos.step,
        cfg.max_steps,
        loss,
        scalars["train/lr"],
        scalars.get("train/grad_norm", math.nan),
        scalars["perf/samples_per_s"],
        scalars["perf/data_wait_pct"],
        pos.epoch,
    )
    return scalars


def _write_run_config(
    cfg: TrainConfig, run_dir: Path, d: Dist, report: Any, info: dict[str, Any], use_bf16: bool, batches_per_epoch: int
) -> None:
    meta = {
        "git_sha": info["git_sha"],
        "torch": str(torch.__version__),
        "world_size": d.world,
        "device": str(d.device),
        "precision": "bf16" if use_bf16 else "fp32",
        "trainable_params": report.trainable,
        "total_params": report.total,
        "loss_resolved": asdict(cfg.loss),
        "batches_per_epoch": batches_per_epoch,
    }
    dump_config(cfg, run_dir / "config.yaml", {"meta": meta})
    log.info(
        "run %s: %s, %d process(es), %s, %d batches per epoch per process",
        run_dir,
        cfg.model,
        d.world,
        meta["precision"],
        batches_per_epoch,
    )


def _publish_adapter(run_dir: Path, pos: Position) -> None:
    """The finished run's adapter/: the last checkpoint's PEFT files (no optimizer or RNG state)."""
    final = latest_checkpoint(run_dir)
    if final is not None:
        shutil.rmtree(run_dir / "adapter", ignore_errors=True)
        shutil.copytree(final, run_dir / "adapter", ignore=shutil.ignore_patterns("*.pt"))
    log.info("done: step %d, %d skipped step(s); adapter in %s", pos.step, pos.skipped_steps, run_dir / "adapter")
