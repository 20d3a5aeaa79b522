"""Where a run directory keeps its checkpoints, and which adapter a run offers (train, export, eval);
the one owner of `trainer_state.pt` (the position training stands at: write, read, the resume checks).

    checkpoints/step_N/   PEFT adapter files + trainer_state.pt (+ rng_<rank>.pt)
    checkpoints/latest    name of the newest complete checkpoint (written after its rename)
    adapter/              the final adapter (PEFT files of the last checkpoint)

A checkpoint is written to `step_N.tmp/` and renamed only when every rank's files are in, so a kill
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.distributed import Dist, barrier
from trainer.errors import RunSetupError

log = logging.getLogger("trainer")

STATE_FILE = "trainer_state.pt"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass
class Position:
    """Where training stands: optimizer steps done, the data position (epoch, batches consumed in it),
    steps skipped for a non-finite loss. The lr is a pure function of `step`: nothing else to save."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0
    skipped_steps: int = 0


def trainer_state(
    pos: Position, optimizer: torch.optim.Optimizer, world: int, identity: dict[str, Any]
) -> dict[str, Any]:
    """The content of a checkpoint's trainer_state.pt: the position, the optimizer, the process count and
    the data identity (trainer.data.data_identity) the data position refers to."""
    return {
        "step": pos.step,
        "epoch": pos.epoch,
        "consumed": pos.consumed,
        "skipped_steps": pos.skipped_steps,
        "world_size": world,
        "optimizer": optimizer.state_dict(),
        "data": identity,
    }


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.pt (written by this trainer: it holds the optimizer's state, a pickle)."""
    return torch.load(Path(ckpt) / STATE_FILE, map_location="cpu", weights_only=False)


def state_position(state: dict[str, Any]) -> Position:
    return Position(state["step"], state["epoch"], state["consumed"], state["skipped_steps"])


def check_resume(ckpt: Path, identity: dict[str, Any], world: int = 1) -> None:
    """Refuse to resume on other data or another process count: the saved data position counts batches
    of the saved dataset, per rank."""
    state = read_trainer_state(ckpt)
    if state.get("world_size", world) != world:
        raise RunSetupError(
            f"{ckpt / STATE_FILE}: saved with {state['world_size']} process(es), resumed with {world}; "
            "the data position is per rank, so resume with the same process count "
            f"(torchrun --nproc_per_node={state['world_size']}), or start a new --out"
        )
    saved = state.get("data")
    if saved is None:
        log.warning("%s records no data identity (older trainer); resuming on %s unchecked", ckpt, identity["shards"])
        return
    # The manifest (sha256s of every shard) identifies the data; a dataset moved elsewhere is the same data.
    key = "manifest_sha256" if saved.get("manifest_sha256") or identity.get("manifest_sha256") else "shards"
    if saved.get(key) != identity.get(key):
        what = "its manifest.json differs" if key == "manifest_sha256" else "another directory"
        raise RunSetupError(
            f"{ckpt / STATE_FILE}: the run was trained on {saved.get('shards')} but --resume got "
            f"{identity['shards']} ({what}); resume with the run's --shards, or start a new --out"
        )


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `checkpoints/latest` names, or None when the run has not saved one yet."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{pointer} names {path.name}, which has no {STATE_FILE}")
    return path


def run_adapter_dir(run_dir: str | Path) -> Path | None:
    """The adapter a run offers: its final `adapter/`, else its latest checkpoint; None if it has neither."""
    final = Path(run_dir) / "adapter"
    if all((final / name).exists() for name in ADAPTER_FILES):
        return final
    return latest_checkpoint(run_dir)


def checkpoint_step(ckpt: Path | None) -> int:
    """The optimizer step a checkpoint directory (`step_0000040`) was saved at; 0 for None."""
    return int(ckpt.name.removeprefix("step_")) if ckpt is not None else 0


def save_checkpoint(
    run_dir: Path, peft_model: Any, state: dict[str, Any], info: dict[str, Any], d: Dist, keep: int
) -> Path:
    """Adapter + trainer state (rank 0) and every rank's RNG; written to a temp dir, then renamed, then
    `latest` pointed at it; only the newest `keep` checkpoints stay (keep <= 0: all)."""
    from trainer.lora import save_adapter

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
