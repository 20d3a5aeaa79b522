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
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainer.checkpoints import STATE_FILE, latest_checkpoint
from trainer.config import TrainConfig, dump_config
from trainer.data import Loader, ShardError, make_loader, to_device
from trainer.lora import apply_strategy, load_adapter_weights, param_report, save_adapter

log = logging.getLogger("trainer")

TRAIN_HEADS = ("camera", "depth")  # the point head is not supervised (official recipe)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


# ------------------------------------------------------------------------------------------ setup


def build_model(
    name: str, weights: str | None, heads: tuple[str, ...] = TRAIN_HEADS, activation_checkpointing: bool = False,
    dpt_checkpoint_frames: int = 1, weights_revision: str | None = None,
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


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """DDP when launched by torchrun with WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(rank, world, local_rank, device, owns)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(step: int, max_steps: int, warmup_frac: float, lr: float, min_lr: float) -> float:
    """Multiplier of the base lr at `step`: linear warm-up, then cosine down to min_lr."""
    warmup = int(round(warmup_frac * max_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
    floor = min_lr / lr
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def git_sha() -> str:
    try:
        here = Path(__file__).resolve().parent
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def freeze_modes(model: nn.Module) -> None:
    """Put top-level parts without trainable parameters in eval mode (no checkpoint recompute there)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.train()
    for child in base.children():
        if not any(p.requires_grad for p in child.parameters()):
            child.eval()


# ------------------------------------------------------------------------------------------ logging


@contextmanager
def run_logging(run_dir: Path, main: bool) -> Iterator[None]:
    handlers: list[logging.Handler] = []
    if main:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
        for handler in (logging.FileHandler(run_dir / "train.log"), logging.StreamHandler(sys.stdout)):
            handler.setFormatter(fmt)
            handlers.append(handler)
            log.addHandler(handler)
    old_level, log.propagate = log.level, False
    log.setLevel(logging.INFO if main else logging.WARNING)
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(old_level)
        log.propagate = True


class Metrics:
    """TensorBoard scalars + metrics.jsonl, rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.jsonl = (run_dir / "metrics.jsonl").open("a") if enabled else None
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self.tb.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()


# ------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(run_dir: Path, peft_model: nn.Module, state: dict[str, Any], info: dict[str, Any], d: Dist, keep: int) -> Path:
    """Adapter + trainer state (rank 0) and every rank's RNG; written to a temp dir, then renamed."""
    ckpt_root = run_dir / "checkpoints"
    name = f"step_{state['step']:07d}"
    tmp, final = ckpt_root / (name + ".tmp"), ckpt_root / name
    if d.main:
        shutil.rmtree(tmp, ignore_errors=True)
        save_adapter(peft_model, tmp, {**info, "step": state["step"]})
        torch.save(state, tmp / STATE_FILE)
    barrier(d)
    torch.save(rng_state(), tmp / f"rng_{d.rank}.pt")
    barrier(d)
    if d.main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        pointer_tmp = ckpt_root / "latest.tmp"
        pointer_tmp.write_text(name + "\n")
        pointer_tmp.replace(ckpt_root / "latest")
        steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
        for old in steps[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    barrier(d)
    return final


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


# ------------------------------------------------------------------------------------------ evaluation


def validation_depth_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Sums over windows of the frame-averaged AbsRel and δ<1.25, as predicted (normalised frame) and
    with one median scale per window (trainer.metrics' `sequence` alignment), plus the window count.

    pred, gt, mask [B,S,H,W]; the same metric code as `python -m trainer eval`.
    """
    from trainer.metrics import align_depth, depth_metrics

    out = dict.fromkeys(("abs_rel", "delta1", "abs_rel_med", "delta1_med", "n"), 0.0)
    for p, g, m in zip(pred.float(), gt.float(), mask.bool()):
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
def evaluate(model: nn.Module, loader: Loader, loss_cfg: Any, device: torch.device, autocast: Any, max_batches: int | None) -> dict[str, float]:
    from trainer.losses import compute_loss, prepare_batch

    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    batches = 0
    depth = {k: 0.0 for k in ("abs_rel", "delta1", "abs_rel_med", "delta1_med", "n")}
    for batch in loader.epoch_batches(0):
        if max_batches is not None and batches >= max_batches:
            break
        batch = prepare_batch(to_device(batch, device))
        with autocast():
            preds = model(batch["images"])
        _, terms = compute_loss(preds, batch, loss_cfg)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        for name, value in validation_depth_metrics(preds["depth"][..., 0], batch["depths"],
                                                    batch["point_masks"]).items():
            depth[name] += value
        batches += 1
    if was_training:
        freeze_modes(model)
    result = {f"val/{k}": v / max(batches, 1) for k, v in sums.items()}
    n = max(depth.pop("n"), 1.0)
    result.update({f"val/{k}": v / n for k, v in depth.items()})
    return result


# ------------------------------------------------------------------------------------------ training


@dataclass
class RunResult:
    run_dir: Path
    step: int
    skipped_steps: int
    losses: list[float]  # objective per optimizer step of this invocation (nan for skipped steps)
    val: dict[str, float]
    model: nn.Module | None = None  # the trained PeftModel (for notebooks and tests)


class RunSetupError(ValueError):
    """The run cannot start (shards, output directory, weights, resume state); the message says why."""


def _check_out_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunSetupError(f"{run_dir}: --out is a file, not a run directory; choose another --out")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunSetupError(f"{existing}: not writable, so the run directory {run_dir} cannot be written; "
                            "choose another --out")


def _check_weights(weights: str | None) -> None:
    """A local checkpoint path must exist (hub ids are fetched later, after every cheap check)."""
    from trainer.vggt.loading import _CHECKPOINT_SUFFIXES, _REPO_ID_PATTERN

    if not weights:
        return
    path = Path(weights).expanduser()
    if path.is_file():
        return
    if path.exists() or path.suffix in _CHECKPOINT_SUFFIXES or not _REPO_ID_PATTERN.match(str(weights)):
        raise RunSetupError(f"{weights}: --weights is not a checkpoint file (expected a local .pt/.pth/.safetensors "
                            "file or a Hugging Face repo id such as facebook/VGGT-1B); pass --weights PATH "
                            "(make train WEIGHTS=PATH)")


def check_resume_data(ckpt: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume on other data: the saved data position counts batches of the saved dataset."""
    saved = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False).get("data")
    if saved is None:
        log.warning("%s records no data identity (older trainer); resuming on %s unchecked", ckpt, identity["shards"])
        return
    # The manifest (sha256s of every shard) identifies the data; a dataset moved elsewhere is the same data.
    key = "manifest_sha256" if saved.get("manifest_sha256") or identity.get("manifest_sha256") else "shards"
    if saved.get(key) != identity.get(key):
        what = "its manifest.json differs" if key == "manifest_sha256" else "another directory"
        raise RunSetupError(
            f"{ckpt / STATE_FILE}: the run was trained on {saved.get('shards')} but --resume got "
            f"{identity['shards']} ({what}); resume with the run's --shards, or start a new --out")


def preflight(cfg: TrainConfig, resume: bool, verify_shards: bool = False) -> tuple[Path | None, dict[str, Any]]:
    """Every cheap check before anything is written or downloaded: output directory, shards, weights
    path, resume state. Returns the checkpoint to resume from and the data identity."""
    from trainer.data import check_dataset, data_identity

    run_dir = Path(cfg.out)
    _check_out_dir(run_dir)
    if not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume or choose another --out")
    check_dataset(cfg.data.shards, cfg.data.train_split, verify_sha256=verify_shards)
    _check_weights(cfg.weights)
    identity = data_identity(cfg.data.shards)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        check_resume_data(ckpt, identity)
    return ckpt, identity


def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None,
          verify_shards: bool = False) -> RunResult:
    """Train until cfg.max_steps (or `stop_after` steps of this call, then checkpoint and return).

    `verify_shards`: also compare every shard's sha256 with the manifest before starting."""
    d = init_distributed()
    run_dir = Path(cfg.out)
    ckpt, identity = preflight(cfg, resume, verify_shards)
    if resume and ckpt is None:
        print(f"--resume: {run_dir} has no checkpoint yet; starting from step 0", file=sys.stderr)
    if cfg.weights:  # the expensive check last: fetch (or find in the hub cache) before anything is written
        from trainer.vggt.loading import resolve_checkpoint

        resolve_checkpoint(cfg.weights)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            _drop_metrics_after(run_dir / "metrics.jsonl", _checkpoint_step(ckpt))
    barrier(d)
    try:
        with run_logging(run_dir, d.main):
            return _train(cfg, d, run_dir, ckpt, stop_after, identity)
    finally:
        if d.world > 1:
            # Free the DDP wrapper (kept alive by reference cycles) while the process group is still up: a
            # gloo group torn down at interpreter exit under a live reducer aborts the process.
            gc.collect()
        if d.owns_group:
            dist.destroy_process_group()


def _checkpoint_step(ckpt: Path | None) -> int:
    return int(ckpt.name.removeprefix("step_")) if ckpt is not None else 0


def _drop_metrics_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their records written before the
    interruption (they would be duplicates), atomically."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


def _train(cfg: TrainConfig, d: Dist, run_dir: Path, ckpt: Path | None, stop_after: int | None,
           identity: dict[str, Any]) -> RunResult:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from trainer.losses import compute_loss, prepare_batch

    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and d.device.type == "cuda")

    def autocast():
        return torch.autocast(d.device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    loss_cfg = cfg.loss

    # Model: base weights first, then LoRA (same init on every rank), then the run's own adapter.
    seed_everything(cfg.seed)
    model = build_model(cfg.model, cfg.weights, activation_checkpointing=cfg.activation_checkpointing,
                        dpt_checkpoint_frames=cfg.dpt_checkpoint_frames,
                        weights_revision=cfg.weights_revision)
    peft_model = apply_strategy(model, cfg.lora)
    if ckpt is not None:
        load_adapter_weights(peft_model, ckpt)
    peft_model.to(d.device)
    freeze_modes(peft_model)
    report = param_report(peft_model, cfg.lora)
    for line in report.lines():
        log.info(line)

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay,
        fused=d.device.type == "cuda",
    )
    o = cfg.optim

    def lr_at(step_index: int) -> float:  # a pure function of the step: nothing to save or restore
        return o.lr * lr_factor(step_index, cfg.max_steps, o.warmup_frac, o.lr, o.min_lr)

    net: nn.Module = DDP(peft_model, device_ids=[d.local_rank] if d.device.type == "cuda" else None) if d.world > 1 else peft_model
    if cfg.compile:
        net = torch.compile(net)

    step, epoch, consumed, skipped_total = 0, 0, 0, 0
    if ckpt is not None:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
        if state["world_size"] != d.world:
            raise RuntimeError(f"{ckpt}: saved with {state['world_size']} processes, resumed with {d.world}; "
                               "the data position is per rank, so resume with the same process count")
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, consumed = state["step"], state["epoch"], state["consumed"]
        skipped_total = state["skipped_steps"]
        set_rng_state(torch.load(ckpt / f"rng_{d.rank}.pt", weights_only=False))
        log.info("resumed from %s: step %d, epoch %d, %d batches into the epoch", ckpt, step, epoch, consumed)
    else:
        seed_everything(cfg.seed + d.rank)  # per-rank dropout masks

    data = cfg.data
    loader = make_loader(data.shards, data.train_split, data.batch_size, shuffle=True, num_workers=data.num_workers,
                         seed=cfg.seed, shuffle_buffer=data.shuffle_buffer, frames=data.frames,
                         pin_memory=data.pin_memory, prefetch_factor=data.prefetch_factor,
                         decode_threads=data.decode_threads)
    info = {"model": cfg.model, "weights": cfg.weights, "weights_revision": _hub_revision(cfg),
            "strategy": cfg.lora.strategy,
            "targets": cfg.lora.targets, "git_sha": git_sha()}
    if d.main:
        meta = {"git_sha": info["git_sha"], "torch": str(torch.__version__), "world_size": d.world,
                "device": str(d.device), "precision": "bf16" if use_bf16 else "fp32",
                "trainable_params": report.trainable, "total_params": report.total,
                "loss_resolved": to_dict_loss(loss_cfg), "batches_per_epoch": loader.batches_per_epoch(epoch)}
        dump_config(cfg, run_dir / "config.yaml", {"meta": meta})
        log.info("run %s: %s, %d process(es), %s, %d batches per epoch per process", run_dir, cfg.model, d.world,
                 meta["precision"], meta["batches_per_epoch"])

    metrics = Metrics(run_dir, d.main)
    stream = loader.batches_from(epoch, consumed)
    samples_per_step = data.batch_size * o.accum_steps * d.world
    nonfinite_in_a_row, losses, val = 0, [], {}
    window: dict[str, float] = {}
    window_n, window_time, window_wait = 0, 0.0, 0.0
    start_step = step
    end_step = cfg.max_steps if stop_after is None else min(cfg.max_steps, step + stop_after)
    progress = _progress(step, cfg.max_steps, d.main)
    if step >= cfg.max_steps:
        log.info("already at step %d of max_steps %d: nothing to do", step, cfg.max_steps)
    try:  # the progress bar ends its line before any error message
        while step < end_step:
            t0 = time.perf_counter()
            wait, finite, terms_sum = 0.0, True, {}
            for micro in range(o.accum_steps):
                t_wait = time.perf_counter()
                epoch, consumed, batch = next(stream)
                batch = to_device(batch, d.device)
                wait += time.perf_counter() - t_wait
                batch = prepare_batch(batch)
                if not finite:
                    continue  # the step is already lost; still consume its batches (fixed data position)
                sync = micro == o.accum_steps - 1 or d.world == 1
                with (nullcontext() if sync else net.no_sync()):
                    with autocast():
                        preds = net(batch["images"])
                    loss, terms = compute_loss(preds, batch, loss_cfg)
                    finite = _all_ranks_finite(loss, d)
                    if finite:
                        (loss / o.accum_steps).backward()
                for name, value in terms.items():
                    terms_sum[name] = terms_sum.get(name, 0.0) + float(value) / o.accum_steps
            grad_norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip) if finite else torch.tensor(float("nan"))
            finite = finite and bool(torch.isfinite(grad_norm))
            lr = lr_at(step)
            if finite:
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                nonfinite_in_a_row = 0
            else:
                skipped_total += 1
                nonfinite_in_a_row += 1
                bad_loss = "objective" not in terms_sum or not math.isfinite(terms_sum["objective"])
                log.warning("step %d: non-finite %s, step skipped (%d in a row, %d total)", step + 1,
                            "loss" if bad_loss else "gradient", nonfinite_in_a_row, skipped_total)
                if nonfinite_in_a_row >= cfg.max_nonfinite_in_a_row:
                    raise NonFiniteLossError(
                        f"{nonfinite_in_a_row} consecutive steps had a non-finite loss or gradient "
                        f"(last: step {step + 1}, samples {batch['keys']}). Lower optim.lr, try precision=fp32, or check the shards with "
                        f"`python -m dataengine inspect`; the last good checkpoint is in {run_dir / 'checkpoints'}"
                    )
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(terms_sum.get("objective", float("nan")) if finite else float("nan"))

            step_time = time.perf_counter() - t0
            window_n, window_time, window_wait = window_n + 1, window_time + step_time, window_wait + wait
            if finite:
                for name, value in terms_sum.items():
                    window[name] = window.get(name, 0.0) + value
                window["grad_norm"] = window.get("grad_norm", 0.0) + float(grad_norm)
                window["_finite"] = window.get("_finite", 0) + 1
            progress.update(1)
            if step % cfg.log_every == 0 or step == end_step:
                scalars = _log_scalars(window, window_n, window_time, window_wait, samples_per_step,
                                       lr, skipped_total, d)
                progress.set_postfix(loss=f"{scalars.get('train/objective', float('nan')):.4f}",
                                     lr=f"{scalars['train/lr']:.2e}", wait=f"{scalars['perf/data_wait_pct']:.1f}%")
                log.info("step %d/%d  loss %.4f  lr %.2e  grad %.3f  %.2f samples/s  data-wait %.1f%%  epoch %d",
                         step, cfg.max_steps, scalars.get("train/objective", float("nan")), scalars["train/lr"],
                         scalars.get("train/grad_norm", float("nan")), scalars["perf/samples_per_s"],
                         scalars["perf/data_wait_pct"], epoch)
                metrics.write(step, scalars)
                window, window_n, window_time, window_wait = {}, 0, 0.0, 0.0
            if (cfg.val_every and step % cfg.val_every == 0) or step == cfg.max_steps:
                val = _validate(peft_model, cfg, loss_cfg, d, autocast)
                metrics.write(step, val)
            if (cfg.save_every and step % cfg.save_every == 0) or step == end_step:
                state = {"step": step, "epoch": epoch, "consumed": consumed, "skipped_steps": skipped_total,
                         "world_size": d.world, "optimizer": optimizer.state_dict(), "data": identity}
                path = save_checkpoint(run_dir, peft_model, state, info, d, cfg.keep_checkpoints)
                log.info("checkpoint %s", path)
    finally:
        progress.close()
        metrics.close()
    if step >= cfg.max_steps and d.main:
        final = latest_checkpoint(run_dir)
        if final is not None:
            shutil.rmtree(run_dir / "adapter", ignore_errors=True)
            shutil.copytree(final, run_dir / "adapter", ignore=shutil.ignore_patterns("*.pt"))
        log.info("done: step %d, %d skipped step(s); adapter in %s", step, skipped_total, run_dir / "adapter")
    barrier(d)
    if step - start_step > 0 and d.main:
        log.info("%d step(s) this run", step - start_step)
    return RunResult(run_dir, step, skipped_total, losses, val, peft_model)


def _hub_revision(cfg: TrainConfig) -> str | None:
    """The hub revision the base weights were downloaded at (None: local file or random init)."""
    from trainer.vggt.loading import hub_revision, is_hub_id

    return hub_revision(cfg.weights, cfg.weights_revision) if cfg.weights and is_hub_id(cfg.weights) else None


def to_dict_loss(loss_cfg: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(loss_cfg)


def _all_ranks_finite(loss: torch.Tensor, d: Dist) -> bool:
    """Every rank must skip together, or DDP's gradient all-reduce would hang."""
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    if d.world > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _log_scalars(window: dict[str, float], n: int, seconds: float, wait: float, samples_per_step: int,
                 lr: float, skipped: int, d: Dist) -> dict[str, float]:
    finite = window.pop("_finite", 0)
    names = sorted(window)
    values = torch.tensor([window[k] for k in names] + [finite, seconds, wait], dtype=torch.float64)
    if d.world > 1:  # average the loss terms over ranks; time and wait over ranks too
        dist.all_reduce(values)
        values /= d.world
    *terms, finite, seconds, wait = values.tolist()
    scalars = {f"train/{k}": v / finite for k, v in zip(names, terms)} if finite else {}
    scalars.update({
        "train/lr": lr,
        "train/skipped_steps": float(skipped),
        "perf/step_time_s": seconds / max(n, 1),
        "perf/samples_per_s": samples_per_step * n / max(seconds, 1e-9),
        "perf/data_wait_pct": 100.0 * wait / max(seconds, 1e-9),
    })
    if d.device.type == "cuda":
        scalars["perf/peak_mem_gb"] = torch.cuda.max_memory_allocated(d.device) / 1e9
    return scalars


def _validate(peft_model: nn.Module, cfg: TrainConfig, loss_cfg: Any, d: Dist, autocast: Any) -> dict[str, float]:
    """Validation on rank 0 over the whole val split (the other ranks wait)."""
    result: dict[str, float] = {}
    if d.main:
        data = cfg.data
        try:
            loader = make_loader(data.shards, data.val_split, 1, shuffle=False, num_workers=0,
                                 frames=data.frames, rank=0, world_size=1, split_across_ranks=False)
        except ShardError as exc:  # a dataset without a val split still trains
            log.warning("validation skipped: %s", exc)
            loader = None
        if loader is not None:
            result = evaluate(peft_model, loader, loss_cfg, d.device, autocast, cfg.val_batches)
            log.info("validation: " + "  ".join(f"{k[4:]} {v:.4f}" for k, v in sorted(result.items())))
    barrier(d)
    return result


def _progress(step: int, total: int, main: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=step, disable=not main, dynamic_ncols=True, desc="train", file=sys.stderr,
                mininterval=1.0)
