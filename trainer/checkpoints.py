"""Where a run directory keeps its checkpoints, and which adapter a run offers (train, export, eval).

    checkpoints/step_N/   PEFT adapter files + trainer_state.pt (+ rng_<rank>.pt)
    checkpoints/latest    name of the newest complete checkpoint (written after its rename)
    adapter/              the final adapter (PEFT files of the last checkpoint)
"""

from __future__ import annotations

from pathlib import Path

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
