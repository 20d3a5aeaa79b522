"""trainer.evaluation.runs: `eval`, `eval --protocol` and `export` rebuild the exact base a run was trained on.

The two regression tests are the drift bugs of issue 21: the protocols path built the base without the run's
`weights_revision`, and export built a random-init base without seeding it with the run's seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HUB_ID = "facebook/VGGT-1B"
REVISION = "0123456789abcdef0123456789abcdef01234567"


def make_run(run: Path, weights: str | None, seed: int, revision: str | None = None) -> Path:
    """A run directory as training leaves it: config.yaml and adapter/ (a tiny strategy-B adapter made on the
    random-init base of `seed`, recorded as trained on `weights` at `revision`)."""
    from trainer.builders import build_model, seed_everything
    from trainer.config import dump_config, load_config
    from trainer.lora import apply_strategy, save_adapter

    sets = [f"out={run}", "model=tiny", f"weights={weights or 'none'}", f"seed={seed}"]
    cfg = load_config(ROOT / "configs" / "demo.yaml", sets + ([f"weights_revision={revision}"] if revision else []))
    run.mkdir(parents=True)
    dump_config(cfg, run / "config.yaml")
    seed_everything(seed)  # as trainer.train does before building the base
    peft_model = apply_strategy(build_model("tiny", None), cfg.lora)
    info = {"model": "tiny", "weights": weights, "weights_revision": revision, "strategy": cfg.lora.strategy}
    save_adapter(peft_model, run / "adapter", info)
    return run


class Built(Exception):
    """Raised by the recording model builder: the test needs the arguments, not the model."""


def test_every_command_builds_the_base_at_the_runs_revision(shards, tmp_path, monkeypatch):
    """Regression (issue 21): `eval --protocol` built the base without the run's weights_revision, so a run
    trained at a pinned hub revision was scored on another base. Every path must ask for the same base."""
    import trainer.builders
    from trainer.evaluate import evaluate_run
    from trainer.export import adapted_model
    from trainer.protocols import evaluate_protocols_run

    run = make_run(tmp_path / "run", HUB_ID, seed=3, revision=REVISION)
    calls = []

    def record(name, weights, heads=None, activation_checkpointing=False, dpt_checkpoint_frames=1, **kw):
        calls.append((name, weights, kw.get("weights_revision")))
        raise Built

    monkeypatch.setattr(trainer.builders, "build_model", record)
    for command in (
        lambda: evaluate_run(shards, tmp_path / "eval", split="val", run=run),
        lambda: evaluate_protocols_run(shards, tmp_path / "protocols", split="val", run=run),
        lambda: adapted_model(run),
    ):
        with pytest.raises(Built):
            command()
    assert calls == [("tiny", HUB_ID, REVISION)] * 3


def test_export_of_a_random_init_run_merges_into_the_trained_on_base(tmp_path):
    """Regression (issue 21): export never seeded before building a random-init base, so the merged file was
    the adapter on another random base. It must be the base the run was trained on, whatever the RNG state."""
    from safetensors.torch import load_file

    from trainer.builders import build_model, seed_everything
    from trainer.export import export_merged

    run = make_run(tmp_path / "run", None, seed=7)
    seed_everything(7)
    trained_on = build_model("tiny", None).state_dict()
    torch.manual_seed(12345)  # whatever ran before the export in this process
    export_merged(run, tmp_path / "merged.safetensors")
    merged = load_file(str(tmp_path / "merged.safetensors"))
    assert sorted(merged) == sorted(trained_on)
    # LoRA B starts at zero, so merging the untrained adapter gives the base back exactly.
    differing = [k for k in trained_on if not torch.equal(merged[k], trained_on[k])]
    assert not differing, f"{len(differing)} tensors differ from the trained-on base, e.g. {differing[:3]}"
