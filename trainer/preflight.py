"""Every cheap check of a training run before anything is written or downloaded: output directory,
shards, weights path, resume state. A failed check is a RunSetupError whose message says what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainer.checkpoints import check_resume, latest_checkpoint
from trainer.config import TrainConfig
from trainer.errors import RunSetupError

__all__ = ["RunSetupError", "check_loader_schedule", "check_out_dir", "check_weights", "preflight"]


def check_out_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunSetupError(f"{run_dir}: --out is a file, not a run directory; choose another --out")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunSetupError(
            f"{existing}: not writable, so the run directory {run_dir} cannot be written; choose another --out"
        )


def check_weights(weights: str | None) -> None:
    """A local checkpoint path must exist (hub ids are fetched later, after every cheap check)."""
    from trainer.vggt.loading import invalid_repo_id, is_hub_id

    if not weights:
        return
    path = Path(weights).expanduser()
    if path.is_file():
        return
    invalid = invalid_repo_id(weights)
    if invalid is not None:
        raise RunSetupError(f"--weights {invalid}")
    if not is_hub_id(weights):
        raise RunSetupError(
            f"{weights}: --weights is not a checkpoint file (expected a local .pt/.pth/.safetensors "
            "file or a Hugging Face repo id such as facebook/VGGT-1B); pass --weights PATH "
            "(make train WEIGHTS=PATH)"
        )


def check_loader_schedule(cfg: TrainConfig, world: int = 1) -> None:
    """The shard schedule of the first epoch from the shard headers alone: every (rank, worker) gets a
    shard and at least one batch. The loader repeats this per epoch; here it fails before any model is
    built or downloaded (it used to fail only after the full-size model was built)."""
    from trainer.data import ShardError, list_shards
    from trainer.data.schedule import batches_per_worker

    data = cfg.data
    shards = list_shards(data.shards, data.train_split)
    workers = max(data.num_workers, 1)
    try:
        per_worker = batches_per_worker(shards, world, workers, data.batch_size, cfg.seed, 0, shuffle=True)
    except ShardError as exc:
        raise ShardError(f"{data.shards} ('{data.train_split}' split): {exc}") from None
    manifest = Path(data.shards) / "manifest.json"
    if data.frames and manifest.is_file():
        split = (json.loads(manifest.read_text()).get("splits") or {}).get(data.train_split) or {}
        have = split.get("frames_per_sample") if isinstance(split, dict) else None
        if isinstance(have, int) and have < data.frames:
            raise ShardError(
                f"{manifest}: data.frames={data.frames} but the '{data.train_split}' samples have only {have} "
                "frames; lower data.frames or rebuild with more --frames"
            )
    if per_worker == 0:
        raise ShardError(
            f"{data.shards}: with {world} process(es) x {workers} worker(s) a worker's '{data.train_split}' shards "
            f"hold fewer than data.batch_size={data.batch_size} samples; lower data.batch_size or data.num_workers "
            "(or rebuild with smaller shards)"
        )


def preflight(
    cfg: TrainConfig, resume: bool, verify_shards: bool = False, world: int = 1
) -> tuple[Path | None, dict[str, Any]]:
    """Returns the checkpoint to resume from (None: start at step 0) and the data identity."""
    from trainer.data import check_dataset, data_identity

    run_dir = Path(cfg.out)
    check_out_dir(run_dir)
    if not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume or choose another --out")
    check_dataset(cfg.data.shards, cfg.data.train_split, verify_sha256=verify_shards)
    check_loader_schedule(cfg, world)
    check_weights(cfg.weights)
    identity = data_identity(cfg.data.shards)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        check_resume(ckpt, identity, world)
    return ckpt, identity
