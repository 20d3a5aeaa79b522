"""The training loop on the tiny model (CPU): learning, exact resume, export, non-finite handling, CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from tests.tolerance import FORWARD_OPS, assert_within_rounding
from trainer.config import ConfigError, load_config
from trainer.train import NonFiniteLossError, lr_factor, train

ROOT = Path(__file__).resolve().parents[2]
TINY_WEIGHTS = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"


def tiny_config(shards: Path, out: Path, strategy: str = "b", *extra: str):
    return load_config(
        ROOT / "configs" / f"strategy_{strategy}.yaml",
        [
            "model=tiny",
            f"weights={TINY_WEIGHTS}",
            f"data.shards={shards}",
            f"out={out}",
            "data.frames=2",
            "data.num_workers=0",
            "optim.accum_steps=1",
            "val_every=0",
            "save_every=0",
            "log_every=5",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "learn"
    cfg = tiny_config(shards, out, "b", "max_steps=30", "lr=2e-3", "warmup_frac=0")
    return train(cfg)


def test_loss_decreases_over_30_steps(trained):
    losses = trained.losses
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    records = [json.loads(line) for line in (trained.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/objective" in r] == [5, 10, 15, 20, 25, 30]
    assert {"train/lr", "train/grad_norm", "perf/samples_per_s", "perf/data_wait_pct"} <= set(records[0])
    val = [r for r in records if "val/objective" in r]
    assert val and 0 < val[-1]["val/delta1"] <= 1 and val[-1]["val/abs_rel"] > 0
    assert list((trained.run_dir / "tb").glob("events.out.tfevents.*"))
    assert "step 30/30" in (trained.run_dir / "train.log").read_text()


def test_only_lora_trained_and_base_weights_unchanged(trained):
    base = load_file(str(TINY_WEIGHTS))
    trainable = {n for n, p in trained.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    checked = 0
    for name, tensor in trained.model.named_parameters():
        if ".lora_" in name:
            continue
        key = "model." + name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(tensor.detach(), base[key]), name
        checked += 1
    assert checked == 285  # every camera/aggregator/depth tensor of the fixture
    lora_b = [p for n, p in trained.model.named_parameters() if ".lora_B." in n]
    assert all(p.abs().max() > 0 for p in lora_b)  # and every adapter moved away from its zero init


def test_run_dir_layout(trained):
    run = trained.run_dir
    config = (run / "config.yaml").read_text()
    assert "git_sha:" in config and "trainable_params: 198176" in config
    adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(TINY_WEIGHTS) and adapter["r"] == 16
    info = json.loads((run / "adapter" / "vggt_adapter.json").read_text())
    assert info["model"] == "tiny" and info["strategy"] == "b" and info["step"] == 30
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_0000030" and (run / "checkpoints" / latest / "trainer_state.pt").exists()


def test_merged_export_equals_adapted_model(trained, tmp_path):
    from trainer.export import adapted_model, export_merged
    from trainer.vggt import load_pretrained

    result = export_merged(trained.run_dir, tmp_path / "merged.safetensors")
    merged = load_pretrained(tmp_path / "merged.safetensors", config="tiny", heads=("camera", "depth"))
    adapted = adapted_model(trained.run_dir)
    images = torch.rand(1, 2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = adapted(images), merged(images)
    for key in ("depth", "depth_conf", "pose_enc"):  # folded LoRA: another rounding of each adapted layer
        assert_within_rounding(got[key], expected[key], ops=FORWARD_OPS, what=key)
    assert (
        expected["depth"] - load_pretrained(TINY_WEIGHTS, config="tiny", heads=("camera", "depth"))(images)["depth"]
    ).abs().max() > 1e-4  # the merge carries the training
    assert result["strategy"] == "b" and result["step"] == "30"
    # The base's (untrained) point head is exported too: the file loads with the default heads, strictly.
    full = load_pretrained(tmp_path / "merged.safetensors", config="tiny")
    assert result["tensors"] == len(full.state_dict()) and not full.load_report.ignored
    base = load_pretrained(TINY_WEIGHTS, config="tiny")
    assert all(torch.equal(v, base.point_head.state_dict()[k]) for k, v in full.point_head.state_dict().items())
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "merged.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_resume_is_bit_identical(shards, tmp_path):
    extra = ("max_steps=10", "lr=1e-3", "save_every=3")
    straight = train(tiny_config(shards, tmp_path / "straight", "b", *extra))
    first = train(tiny_config(shards, tmp_path / "split", "b", *extra), stop_after=5)
    assert first.step == 5 and (tmp_path / "split" / "checkpoints" / "latest").read_text().strip() == "step_0000005"
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(shards, tmp_path / "split", "b", *extra))
    second = train(tiny_config(shards, tmp_path / "split", "b", *extra), resume=True)
    assert second.step == 10
    assert first.losses + second.losses == straight.losses
    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "split" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a = torch.load(
        tmp_path / "straight" / "checkpoints" / "step_0000010" / "trainer_state.pt", weights_only=False
    )
    state_b = torch.load(tmp_path / "split" / "checkpoints" / "step_0000010" / "trainer_state.pt", weights_only=False)
    assert (state_a["epoch"], state_a["consumed"]) == (state_b["epoch"], state_b["consumed"]) == (3, 1)
    for sa, sb in zip(state_a["optimizer"]["state"].values(), state_b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_non_finite_steps_are_skipped_then_abort(shards, tmp_path, monkeypatch):
    import trainer.losses

    real = trainer.losses.compute_loss
    calls = {"n": 0}

    def poisoned(predictions, batch, cfg=None):
        calls["n"] += 1
        total, terms = real(predictions, batch, cfg)
        if calls["n"] in bad:
            total = total * float("nan")
            terms = dict(terms, objective=total.detach())
        return total, terms

    monkeypatch.setattr(trainer.losses, "compute_loss", poisoned)
    # 2 micro-batches per step: call 3 poisons the 2nd half of step 2, call 5 the 1st half of step 3
    # (whose 2nd micro-batch is then consumed without a forward pass: call 6 is step 4's first).
    bad = {3, 5}
    result = train(
        tiny_config(shards, tmp_path / "nan", "a", "max_steps=5", "max_nonfinite_in_a_row=3", "optim.accum_steps=2")
    )
    assert result.skipped_steps == 2 and result.step == 5
    assert [math.isnan(x) for x in result.losses] == [False, True, True, False, False]
    assert "non-finite loss, step skipped (2 in a row, 2 total)" in (tmp_path / "nan" / "train.log").read_text()
    state = torch.load(tmp_path / "nan" / "checkpoints" / "step_0000005" / "trainer_state.pt", weights_only=False)
    assert state["consumed"] + 3 * state["epoch"] == 10 and state["skipped_steps"] == 2  # 5 steps x 2 batches
    from trainer.data import list_shards

    assert calls["n"] == 9 + sum(i.samples for i in list_shards(shards, "val"))  # 9 training + validation

    calls["n"], bad = 0, set(range(1, 100))
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps had a non-finite loss"):
        train(tiny_config(shards, tmp_path / "abort", "a", "max_steps=5", "max_nonfinite_in_a_row=3"))


def test_lr_schedule_by_hand():
    # 100 steps, 10 % warm-up, lr 1e-4 -> min 1e-6
    assert lr_factor(0, 100, 0.1, 1e-4, 1e-6) == pytest.approx(0.1)
    assert lr_factor(9, 100, 0.1, 1e-4, 1e-6) == pytest.approx(1.0)
    assert lr_factor(10, 100, 0.1, 1e-4, 1e-6) == pytest.approx(1.0)
    assert lr_factor(55, 100, 0.1, 1e-4, 1e-6) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(100, 100, 0.1, 1e-4, 1e-6) == pytest.approx(0.01)


def test_config_overrides_and_errors(tmp_path):
    from trainer.config import split_overrides

    assert split_overrides(["seed=5 lr=1e-4", "betas=[0.9, 0.99]"]) == ["seed=5", "lr=1e-4", "betas=[0.9, 0.99]"]
    cfg = load_config(
        ROOT / "configs" / "strategy_c.yaml",
        ["seed=5", "lr=1e-4", "data.frames=3", "betas=[0.8,0.9]", "loss.camera=1.5", "weights=none"],
    )
    assert (cfg.seed, cfg.optim.lr, cfg.data.frames, cfg.optim.betas) == (5, 1e-4, 3, (0.8, 0.9))
    assert cfg.loss.camera == 1.5 and cfg.weights is None and cfg.lora.strategy == "c"
    assert cfg.optim.lr == 1e-4 and isinstance(load_config(ROOT / "configs" / "strategy_a.yaml").optim.lr, float)
    with pytest.raises(ConfigError, match="unknown key 'lrr'"):
        load_config(None, ["lrr=1"])
    with pytest.raises(ConfigError, match="expected int, got 'two'"):
        load_config(None, ["max_steps=two"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\noptim:\n  lr: 1.0e-4\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:4: unknown key 'optim\.momentum'"):
        load_config(bad)


def test_cli_train_resume_params_export_push(shards, tmp_path, monkeypatch):
    from trainer.cli import main

    out = tmp_path / "cli"
    common = ["--shards", str(shards), "--model", "tiny", "--weights", str(TINY_WEIGHTS), "--out", str(out)]
    sets = ["--set", "data.frames=2 data.num_workers=0 val_every=0 save_every=0 log_every=1"]
    runner = CliRunner()
    first = runner.invoke(
        main, ["train", "--config", str(ROOT / "configs" / "strategy_a.yaml"), *common, "--max-steps", "2", *sets]
    )
    assert first.exit_code == 0, first.output
    again = runner.invoke(
        main, ["train", "--config", str(ROOT / "configs" / "strategy_a.yaml"), *common, "--max-steps", "2", *sets]
    )
    assert again.exit_code != 0 and "pass --resume" in again.output
    resumed = runner.invoke(main, ["train", *common, "--max-steps", "3", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "step 3:" in resumed.output and "lora:\n  strategy: a" in (out / "config.yaml").read_text()

    params = runner.invoke(main, ["params", "--config", str(ROOT / "configs" / "strategy_a.yaml"), "--model", "tiny"])
    assert params.exit_code == 0 and "LoRA on 30 modules (0 Linear, 30 Conv2d)" in params.output

    exported = runner.invoke(main, ["export", "--run", str(out), "--out", str(tmp_path / "m.safetensors")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "m.safetensors").exists()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    pushed = runner.invoke(main, ["push", "--run", str(out), "--repo-id", "someone/vggt-lora"])
    assert pushed.exit_code != 0 and "HF_HUB_OFFLINE is set" in pushed.output
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    pushed = runner.invoke(main, ["push", "--run", str(out), "--repo-id", "someone/vggt-lora"])
    assert pushed.exit_code != 0 and "no Hugging Face token" in pushed.output


def test_compile_trains_like_eager(shards, tmp_path, monkeypatch):
    # `compile: true` wraps the (DDP/PEFT) model in torch.compile. Inductor's C++ build takes minutes on
    # 2 cores, so the test traces with the aot_eager backend: Dynamo + AOTAutograd through LoRA, the
    # checkpointed blocks and the chunked DPT head. Dropout off: compiled RNG streams differ from eager.
    compiled = []
    original = torch.compile

    def compile_aot_eager(model, **kwargs):
        compiled.append(model)
        return original(model, backend="aot_eager", **kwargs)

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    runs = {}
    for flag in ("false", "true"):
        cfg = tiny_config(
            shards,
            tmp_path / flag,
            "b",
            "max_steps=3",
            "log_every=1",
            f"compile={flag}",
            "lora.dropout=0",
            "lr=2e-3",
            "warmup_frac=0",
        )
        runs[flag] = train(cfg).losses
    assert len(compiled) == 1
    assert runs["true"] == pytest.approx(runs["false"], rel=1e-4) and runs["true"][-1] < runs["true"][0]


def _cli_train(out: Path, shards: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trainer",
        "train",
        "--config",
        str(ROOT / "configs" / "strategy_b.yaml"),
        "--shards",
        str(shards),
        "--model",
        "tiny",
        "--weights",
        str(TINY_WEIGHTS),
        "--out",
        str(out),
        "--max-steps",
        "6",
        "--set",
        "data.frames=2 data.num_workers=0 val_every=0 save_every=2 log_every=1",
        "lr=1e-3",
        *more,
    ]


def _wait_for(predicate, proc: subprocess.Popen, what: str, limit_s: float = 300.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} after {limit_s} s"
        time.sleep(0.02)


def test_training_killed_mid_step_then_resumed_gives_the_same_bytes(shards, tmp_path):
    """SIGKILL between two checkpoints (a step after step 2's checkpoint was logged), then --resume:
    the adapter bytes and the loss records equal an uninterrupted run's; no temp files are left."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    straight = subprocess.run(_cli_train(tmp_path / "straight", shards), capture_output=True, text=True, env=env)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli_train(killed, shards), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def past_step_3() -> bool:
        metrics = killed / "metrics.jsonl"
        return metrics.exists() and '"step": 3,' in metrics.read_text()

    _wait_for(past_step_3, proc, "step 3")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists()
    resumed = subprocess.run(_cli_train(killed, shards, "--resume"), capture_output=True, text=True, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    name = "adapter_model.safetensors"
    assert (killed / "adapter" / name).read_bytes() == (tmp_path / "straight" / "adapter" / name).read_bytes()
    # PEFT writes target_modules from a set: its order follows the process's hash seed, not the run.
    configs = [
        json.loads((run / "adapter" / "adapter_config.json").read_text()) for run in (killed, tmp_path / "straight")
    ]
    for config in configs:
        config["target_modules"] = (
            sorted(config["target_modules"]) if isinstance(config["target_modules"], list) else config["target_modules"]
        )
    assert configs[0] == configs[1]

    def losses(run: Path) -> list[tuple]:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [
            (r["step"], sorted((k, v) for k, v in r.items() if "loss" in k or k.endswith("objective"))) for r in records
        ]

    assert losses(killed) == losses(tmp_path / "straight")  # the steps re-run after the kill are not duplicated
    assert [r[0] for r in losses(killed)] == [1, 2, 3, 4, 5, 6, 6]  # 6 twice: the train and the val record
    assert not [p for p in killed.rglob("*") if p.name.endswith(".tmp")]


# `python -m trainer export` with a SIGKILL in the middle of writing the merged file: safetensors' writer is
# wrapped to write the whole temp file, cut it in half (a write the kernel had not finished) and kill the process.
KILL_MID_EXPORT = """
import os, runpy, signal, sys
import safetensors.torch as st
real = st.save_file
def save_file(tensors, filename, metadata=None):
    real(tensors, filename, metadata=metadata)
    os.truncate(filename, os.path.getsize(filename) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
st.save_file = save_file
sys.argv = ["trainer", *sys.argv[1:]]
runpy.run_module("trainer", run_name="__main__")
"""


def test_export_killed_then_rerun_gives_the_same_bytes(trained, tmp_path):
    """An export killed while writing leaves only a hidden temp file (never a half merged.safetensors); the rerun
    removes it and writes the same bytes as an uninterrupted export."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["export", "--run", str(trained.run_dir)]
    export = [sys.executable, "-m", "trainer", *args]
    clean = subprocess.run(
        [*export, "--out", str(tmp_path / "clean.safetensors")], capture_output=True, text=True, env=env
    )
    assert clean.returncode == 0 and "adapter of step 30" in clean.stdout, clean.stderr[-2000:]
    target = tmp_path / "out" / "merged.safetensors"
    target.parent.mkdir()
    killed = subprocess.run(
        [sys.executable, "-c", KILL_MID_EXPORT, *args, "--out", str(target)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    left = list(target.parent.iterdir())
    assert [p.name.startswith(".merged.safetensors.") and p.name.endswith(".tmp") for p in left] == [True]
    assert 0 < left[0].stat().st_size < (tmp_path / "clean.safetensors").stat().st_size
    rerun = subprocess.run([*export, "--out", str(target)], capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert target.read_bytes() == (tmp_path / "clean.safetensors").read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == ["merged.safetensors"]
