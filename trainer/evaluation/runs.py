"""A run or adapter directory -> the exact base model + adapter it was trained on.

The one place that answers "which adapter does this run offer" and "which base was it trained on"
(preset, weights, hub revision, seed of a random init): `trainer eval` (both modes) and
`trainer export` build their models here, so they cannot disagree about the base.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.config import MODEL_PRESETS

DEFAULT_MODEL = MODEL_PRESETS[0]


def find_adapter(run: str | Path | None = None, adapter: str | Path | None = None) -> Path:
    """The adapter to use: `adapter` as given (checked to be a PEFT adapter directory), else the run's
    final `adapter/`, else its latest checkpoint (`checkpoints/latest`)."""
    from trainer.checkpoints import run_adapter_dir
    from trainer.lora import check_adapter_dir

    if (run is None) == (adapter is None):
        raise ValueError("give exactly one of --run (a training run directory) or --adapter (a PEFT adapter directory)")
    if adapter is not None:
        return Path(adapter)
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run directory")
    adapter_dir = run_adapter_dir(run)
    if adapter_dir is None:
        raise FileNotFoundError(
            f"{run}: neither {run / 'adapter'} nor {run / 'checkpoints' / 'latest'} exists; "
            "has the run saved an adapter yet?"
        )
    return check_adapter_dir(adapter_dir)


@dataclass
class TrainedOn:
    """The model an adapter was trained on (and the adapter itself; None: the base alone)."""

    model: str
    weights: str | None
    weights_revision: str | None  # the hub revision of `weights` (None: local file, random init or not recorded)
    seed: int  # a random-init base is only the trained-on one when built right after seeding with this
    adapter_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)  # the adapter's vggt_adapter.json
    train_split: str = "train"  # the trainer's default; a run's config says its own

    def base_weights_label(self) -> str:
        return self.weights or f"random init (seed {self.seed})"


def trained_on(
    run: str | Path | None = None,
    adapter: str | Path | None = None,
    weights: str | None = None,
    model_name: str | None = None,
) -> TrainedOn:
    """What a run / adapter was trained on; `weights` and `model_name` override the recorded ones (another
    copy of the checkpoint, say). Neither run nor adapter: the base alone (seed 0)."""
    from trainer.lora import read_adapter_info

    adapter_dir, info, seed, train_split = None, {}, 0, "train"
    if run is not None or adapter is not None:
        adapter_dir = find_adapter(run, adapter)
        info = read_adapter_info(adapter_dir)
        if run is not None:
            from trainer.config import config_from_run

            run_cfg = config_from_run(Path(run))
            seed = run_cfg.seed
            train_split = run_cfg.data.train_split
            info.setdefault("model", run_cfg.model)
            info.setdefault("weights", run_cfg.weights)
            info.setdefault("weights_revision", run_cfg.weights_revision)
    recorded = info.get("weights")
    chosen = weights if weights is not None else recorded
    return TrainedOn(
        model=model_name or info.get("model") or DEFAULT_MODEL,
        weights=chosen,
        # The recorded revision belongs to the recorded weights only.
        weights_revision=info.get("weights_revision") if chosen == recorded else None,
        seed=seed,
        adapter_dir=adapter_dir,
        info=info,
        train_split=train_split,
    )


def build_base(spec: TrainedOn, heads: tuple[str, ...] | None = None) -> torch.nn.Module:
    """The base model of `spec`, seeded first as training was (so a random init is the trained-on one)."""
    from trainer.builders import TRAIN_HEADS, build_model, seed_everything

    seed_everything(spec.seed)
    return build_model(spec.model, spec.weights, heads=heads or TRAIN_HEADS, weights_revision=spec.weights_revision)


def build_adapted(spec: TrainedOn, heads: tuple[str, ...] | None = None) -> torch.nn.Module:
    """The base of `spec` with its adapter attached (a PeftModel; the plain base when it has no adapter)."""
    from trainer.lora import load_adapter

    base = build_base(spec, heads)
    return base if spec.adapter_dir is None else load_adapter(base, spec.adapter_dir)
