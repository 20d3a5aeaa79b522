"""Where a run directory keeps its checkpoints, and which adapter a run offers (train, export, eval).

    checkpoints/step_N/   PEFT adapter files + trainer_state.pt (+ rng_<rank>.pt)
    checkpoints/latest    name of the newest complete checkpoint (written after its rename)
    adapter/              the final adapter (PEFT files of the last checkpoint)

A checkpoint is written to `step_N.tmp/` and renamed only when every rank's files are in, so a kill
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.distributed import Dist, barrier

STATE_FILE = "trainer_state.pt"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


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
