"""Step-memory tracing (trainer/memory.py): the fake-tensor trace equals the same accounting of a real run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.config import load_config
from trainer.memory import LiveTensorBytes, estimate_step_memory

ROOT = Path(__file__).resolve().parents[2]


def test_live_bytes_counts_storages_once_and_releases_them():
    tracker = LiveTensorBytes()
    existing = torch.zeros(10)
    tracker.ignore([existing])
    with tracker:
        a = torch.ones(1000)  # 4000 bytes
        view = a[:10].view(2, 5)  # same storage: nothing new
        b = torch.ones(250, dtype=torch.float64)  # 2000 bytes
        existing.add_(1)  # in place on an ignored storage
        alias = existing[2:]
        assert tracker.current == 6000 and tracker.peak == 6000
        del a, view
        assert tracker.current == 2000  # the storage died with its last view
        c = b.float()  # 1000 bytes
        assert tracker.current == 3000 and tracker.peak == 6000
    del b, c, alias
    assert tracker.current == 0


@pytest.fixture(scope="module")
def traces():
    """Strategy B on the tiny model, 2 frames of 56²: {(checkpointing, fake): StepMemory}."""
    out = {}
    for checkpointing in (True, False):
        cfg = load_config(
            ROOT / "configs" / "strategy_b.yaml", ["model=tiny", f"activation_checkpointing={checkpointing}"]
        )
        for fake in (True, False):
            out[checkpointing, fake] = estimate_step_memory(cfg, frames=2, size=56, fake=fake)
    return out


@pytest.mark.parametrize("checkpointing", [True, False])
def test_fake_trace_matches_a_real_step(traces, checkpointing):
    fake, real = traces[checkpointing, True], traces[checkpointing, False]
    assert fake.weights == real.weights and fake.trainable == real.trainable == 198_176
    assert fake.persistent_state == real.persistent_state
    for field in ("kept_after_forward", "step_peak", "total"):  # CPU attention kernels may differ by a few KB
        assert getattr(fake, field) == pytest.approx(getattr(real, field), rel=2e-3), field
    assert fake.loss_working_set == real.loss_working_set > 0

    from trainer.lora import param_counts_on_meta

    counts = param_counts_on_meta("tiny", load_config(ROOT / "configs" / "strategy_b.yaml").lora)
    assert 0 <= fake.weights - 4 * counts.total < 1024  # fp32 parameters + a few bytes of buffers
    # AdamW keeps two fp32 moments per trainable parameter (+ a step counter per tensor).
    assert 8 * fake.trainable <= fake.persistent_state < 8 * fake.trainable * 1.05


def test_checkpointing_drops_what_the_forward_keeps(traces):
    on, off = traces[True, True], traces[False, True]
    kept_on, kept_off = (r.kept_after_forward - r.persistent_state for r in (on, off))
    assert kept_on < 0.25 * kept_off
    assert on.total < off.total
    assert on.total == on.weights + max(on.step_peak, on.kept_after_forward + on.loss_working_set)


def test_memory_cli():
    from click.testing import CliRunner

    from trainer.cli import main

    runner = CliRunner()
    ok = runner.invoke(
        main,
        [
            "memory",
            "--config",
            str(ROOT / "configs/strategy_a.yaml"),
            "--model",
            "tiny",
            "--frames",
            "2",
            "--size",
            "28",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "strategy a, batch 1 x 2 frames x 28²" in ok.output and "peak tensor memory" in ok.output
    bad = runner.invoke(main, ["memory", "--config", str(ROOT / "configs/strategy_a.yaml"), "--size", "50"])
    assert bad.exit_code != 0 and "not a multiple of the patch size 14" in bad.output


def test_dpt_checkpoint_chunk_reaches_the_model_and_costs_memory(traces):
    from trainer.config import ConfigError

    one = traces[True, True]
    cfg = load_config(ROOT / "configs" / "strategy_b.yaml", ["model=tiny", "dpt_checkpoint_frames=2"])
    both = estimate_step_memory(cfg, frames=2, size=56)  # both frames of the head recomputed together
    assert both.step_peak > one.step_peak and both.kept_after_forward == one.kept_after_forward
    with pytest.raises(ConfigError, match="dpt_checkpoint_frames must be >= 1"):
        load_config(ROOT / "configs" / "strategy_b.yaml", ["dpt_checkpoint_frames=0"])
