"""What `trainer eval` and `trainer train` refuse or label before spending time (issue 22): options of the
other eval mode, in-sample protocol runs, the shards' units in every label, invalid repo ids, the loader
schedule in preflight, and the ✓/✗ marking of changes. Through the real CLI where a user meets it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.trainer.test_bad_inputs_trainer import cli  # the trainer CLI in a fresh, offline interpreter

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `Error:` line a refused command ends with (no traceback)."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A tiny strategy-B adapter with non-zero LoRA weights, recorded as trained on the tiny reference base."""
    from trainer.builders import build_model
    from trainer.config import LoraConfig
    from trainer.lora import apply_strategy, save_adapter

    torch.manual_seed(0)
    peft_model = apply_strategy(build_model("tiny", str(TINY)), LoraConfig(rank=4, dropout=0.0))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("scope_adapter") / "adapter"
    save_adapter(peft_model, out, {"model": "tiny", "weights": str(TINY), "strategy": "b", "step": 3})
    return out


@pytest.fixture(scope="module")
def colmap_unit_shards(shards, tmp_path_factory) -> Path:
    """The same shards, recorded in COLMAP's arbitrary units (what `build --format colmap` writes without
    --metric-scale): the trainer reads the units from manifest.json only."""
    out = tmp_path_factory.mktemp("colmap_units") / "shards"
    shutil.copytree(shards, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for scene in manifest["per_scene"].values():
        scene["units"] = "arbitrary (COLMAP)"
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# ------------------------------------------------------------------------------- ✓ / ✗ marking (item 6)


def test_change_marks_equal_better_and_worse():
    from trainer.evaluate import _format_change
    from trainer.evaluation.report import change_cell as _change
    from trainer.evaluation.report import format_change

    # Lower is better (errors) and higher is better (AUC, inlier ratios), each: equal, better, worse.
    assert _change(0.5, 0.5, higher_better=False) == "±0.0%"
    assert _change(0.5, 0.4, higher_better=False) == "-20.0% ✓"
    assert _change(0.5, 0.6, higher_better=False) == "+20.0% ✗"
    assert _change(0.8, 0.8, higher_better=True) == "±0.0%"
    assert _change(0.8, 0.9, higher_better=True) == "+12.5% ✓"
    assert _change(0.8, 0.7, higher_better=True) == "-12.5% ✗"
    # A difference below the shown precision (float noise of an adapter that changed nothing) is no regression.
    assert _change(0.5, 0.5 * (1 + 1e-7), higher_better=False) == "±0.0%"
    assert format_change(-1e-7, higher_is_better=True) == "±0.0%"
    assert _change(None, 0.5, True) == _change(0.0, 0.5, True) == "–"
    # The window report uses the same rule, by metric name.
    assert _format_change("abs_rel", 1e-6) == _format_change("auc@30", -1e-6) == "±0.0%"
    assert _format_change("abs_rel", -0.1) == "-10.0% ✓" and _format_change("delta1", -0.1) == "-10.0% ✗"
    assert _format_change("auc@30", 0.02) == "+2.0% ✓" and _format_change("rot_err_deg", 0.02) == "+2.0% ✗"


# --------------------------------------------------------------- options of the other eval mode (item 5)


def test_eval_refuses_options_of_the_other_mode(shards, tmp_path):
    out = tmp_path / "out"
    proc = cli(
        "eval", "--protocol", "all", "--shards", shards, "--alignment", "median", "--batch-size", "2", "--out", out
    )
    line = error_line(proc)
    assert proc.returncode == 2 and "--alignment, --batch-size applies to the window report only" in line
    proc = cli("eval", "--shards", shards, "--pointmap-alignment", "ransac", "--in-sample", "--out", out)
    line = error_line(proc)
    assert proc.returncode == 2 and "--pointmap-alignment, --in-sample applies to --protocol runs only" in line
    assert not out.exists()


# ------------------------------------------------------------- in-sample protocol runs and units (item 1)


def test_protocol_run_on_the_adapters_training_split(shards, adapter, tmp_path):
    out = tmp_path / "refused"
    args = [
        "eval",
        "--protocol",
        "eth3d-pose",
        "--shards",
        shards,
        "--split",
        "train",
        "--adapter",
        adapter,
        "--device",
        "cpu",
        "--max-batches",
        "1",
        "--max-pictures",
        "0",
    ]
    line = error_line(cli(*args, "--out", out))
    assert "--split train is the split the adapter was trained on" in line and "--in-sample" in line
    assert not out.exists()  # refused before any model was built or anything written

    marked = tmp_path / "marked"
    proc = cli(*args, "--out", marked, "--in-sample")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("IN-SAMPLE:")
    metrics = json.loads((marked / "metrics.json").read_text())
    assert metrics["in_sample"] is True and metrics["published"] == {}
    report = (marked / "report.md").read_text()
    assert report.splitlines()[2].startswith("> **IN-SAMPLE")
    assert "26.30" not in report and "Published: not shown (in-sample run)." in report  # DA3's AUC@3 is 26.3 %


def test_arbitrary_units_in_every_label(colmap_unit_shards, adapter, tmp_path, monkeypatch):
    out = tmp_path / "protocols"
    proc = cli(
        "eval",
        "--protocol",
        "eth3d-pointmap,eth3d-pose",
        "--shards",
        colmap_unit_shards,
        "--split",
        "val",
        "--adapter",
        adapter,
        "--device",
        "cpu",
        "--max-batches",
        "1",
        "--max-pictures",
        "0",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["units"].startswith("arbitrary (COLMAP) (point maps)")
    assert metrics["published"]["eth3d-pointmap"]["values"] == {}  # published figures are in metres
    assert metrics["published"]["eth3d-pose"]["values"]["pose/da3/auc@30"] == 0.808  # AUC is scale-free
    assert metrics["in_sample"] is False
    report = (out / "report.md").read_text()
    assert "metres" not in report.replace("not metres", "").replace("(in metres;", "")
    assert "point maps in arbitrary (COLMAP)" in report and "0.8730" not in report  # VGGT's published accuracy

    window = tmp_path / "window"
    proc = cli(
        "eval",
        "--shards",
        colmap_unit_shards,
        "--adapter",
        adapter,
        "--device",
        "cpu",
        "--max-batches",
        "1",
        "--max-pictures",
        "0",
        "--out",
        window,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((window / "metrics.json").read_text())["depth_units"].startswith("arbitrary (COLMAP) (")
    report = (window / "report.md").read_text()
    assert "metres" not in report.replace("not metres", "") and "here arbitrary (COLMAP)" in report

    # The PNG labels: colour bars and titles carry the unit symbol.
    import matplotlib.axes
    import matplotlib.colorbar
    import numpy as np

    from trainer.evaluation.pictures import render_pointclouds

    labels: list[str] = []
    monkeypatch.setattr(matplotlib.colorbar.Colorbar, "set_label", lambda self, text, **kw: labels.append(text))
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, text, **kw: labels.append(text))
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(200, 3))
    clouds = {"base": {"gt": gt, "depth_camera": gt + 0.01}}
    assert render_pointclouds(tmp_path / "cloud.png", "t", clouds, ("base",), unit="units")
    assert "distance to nearest GT point [units] (grey: GT)" in labels
    assert any(t.endswith(" units") and "mean NN error" in t for t in labels)
    assert not any("[m]" in t or t.endswith(" m") for t in labels)


# ------------------------------------------------------------------------- invalid repo ids (item 4)


@pytest.mark.parametrize("repo_id", ["not/a/valid//repo", "facebook/VGGT-1B extra", "org/na..me", "org--x/model"])
def test_invalid_repo_id_is_named_not_offline(repo_id, monkeypatch):
    from trainer.vggt.loading import PretrainedSourceError, resolve_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network: an invalid id must not reach the hub
    with pytest.raises(PretrainedSourceError) as info:
        resolve_checkpoint(repo_id)
    assert info.value.reason == "invalid_id" and "nor a valid Hugging Face repo id" in str(info.value)
    assert "offline" not in str(info.value)


def test_invalid_repo_id_cli(shards, tmp_path):
    out = tmp_path / "run"
    line = error_line(
        cli(
            "train",
            "--config",
            ROOT / "configs" / "strategy_b.yaml",
            "--shards",
            shards,
            "--model",
            "tiny",
            "--weights",
            "org/na..me",
            "--out",
            out,
        )
    )
    assert "'org/na..me' is neither a local file nor a valid Hugging Face repo id" in line and "offline" not in line
    assert not out.exists()
    line = error_line(
        cli(
            "eval",
            "--protocol",
            "eth3d-pose",
            "--shards",
            shards,
            "--split",
            "val",
            "--weights",
            "facebook/VGGT-1B extra",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--out",
            tmp_path / "eval",
        )
    )
    assert "'facebook/VGGT-1B extra' is neither a local file nor a valid Hugging Face repo id" in line
    assert "offline" not in line


# ----------------------------------------------------------------- cheap checks before the model (item 3)


def test_worker_schedule_is_checked_before_the_weights(shards, tmp_path):
    """More loader workers than shards: refused in preflight, before the hub is asked for weights (offline,
    a hub id fails at once; before the fix the run reached the download, and with a local checkpoint built
    the full model first)."""
    out = tmp_path / "run"
    line = error_line(
        cli(
            "train",
            "--config",
            ROOT / "configs" / "strategy_b.yaml",
            "--shards",
            shards,
            "--weights",
            "facebook/VGGT-1B",
            "--out",
            out,
            "--set",
            "data.num_workers=16",
        )
    )
    assert "every worker needs at least one shard" in line and str(shards) in line and "offline" not in line
    assert not out.exists()


def test_preflight_comes_before_any_model(shards, adapter, tmp_path, monkeypatch):
    """In-process and timing-independent: the model builders must never be reached."""
    import trainer.builders
    import trainer.evaluate
    import trainer.train
    from trainer.config import load_config
    from trainer.data import ShardError

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the cheap checks")

    monkeypatch.setattr(trainer.train, "build_peft_model", no_model)
    monkeypatch.setattr(trainer.builders, "build_model", no_model)
    monkeypatch.setattr("trainer.vggt.loading.resolve_checkpoint", no_model)
    cfg = load_config(
        ROOT / "configs" / "strategy_b.yaml",
        [f"data.shards={shards}", f"out={tmp_path / 'run'}", "model=tiny", f"weights={TINY}", "data.num_workers=16"],
    )
    with pytest.raises(ShardError, match="every worker needs at least one shard"):
        trainer.train.train(cfg)
    big_batch = load_config(
        ROOT / "configs" / "strategy_b.yaml",
        [f"data.shards={shards}", f"out={tmp_path / 'run'}", "model=tiny", "data.num_workers=0", "data.batch_size=64"],
    )
    with pytest.raises(ShardError, match="fewer than data.batch_size=64"):
        trainer.train.train(big_batch)
    long_windows = load_config(
        ROOT / "configs" / "strategy_b.yaml",
        [f"data.shards={shards}", f"out={tmp_path / 'run'}", "model=tiny", "data.num_workers=0", "data.frames=6"],
    )
    with pytest.raises(ShardError, match="data.frames=6 but the 'train' samples have only 4 frames"):
        trainer.train.train(long_windows)
    # eval: a batch larger than the split, before the model.
    with pytest.raises(ShardError, match="fewer than --batch-size 64"):
        trainer.evaluate.evaluate_run(shards, tmp_path / "eval", adapter=adapter, batch_size=64, model_name="tiny")
    assert not (tmp_path / "run").exists() and not (tmp_path / "eval").exists()


# ------------------------------------------------------------- eval-base / eval-heldout options (item 2)


def _commands(text: str) -> list[str]:
    """Shell commands of `make -n` output or a bash block, continuation lines joined, whitespace normalised."""
    return [" ".join(c.split()) for c in text.replace("\\\n", " ").splitlines() if c.strip()]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_eval_targets_take_the_model_and_the_recipe_is_the_targets():
    def dry_run(*args: str) -> list[str]:
        proc = subprocess.run(
            ["make", "-n", "--no-print-directory", "PY=python", *args], capture_output=True, text=True, cwd=ROOT
        )
        assert proc.returncode == 0, proc.stderr
        return [c for c in _commands(proc.stdout) if c.startswith("python -m ")]

    evals = dry_run(
        "eval-base",
        "MODEL=tiny",
        "DEVICE=cpu",
        "WEIGHTS=w.safetensors",
        "HELDOUT_SHARDS=H",
        "SHARDS=S",
        "BASE_EVAL_OUT=O",
        "EVAL_FRAMES=5",
    )
    assert len(evals) == 3
    for command, out in zip(evals, ("O/pointmap_mvd", "O/pose", "O/in_domain_val"), strict=True):
        assert "--weights w.safetensors --model tiny --device cpu" in command and command.endswith(f"--out {out}")
    assert "--shards H/random5" in evals[0] and "--shards H/all_frames" in evals[1]
    extra = dry_run("eval-heldout", "RUN=r", "EVAL_MODEL_ARGS=--max-pictures 0")
    assert all("--run r --max-pictures 0" in c for c in extra) and len(extra) == 3

    # docs/evaluation.md's synthetic recipe is exactly what `make demo-heldout` runs.
    demo = dry_run("demo-heldout", "DEMO_HELDOUT=build/demo_heldout")
    doc = (ROOT / "docs" / "evaluation.md").read_text()
    block = doc.split("It runs, step by step")[1].split("```bash")[1].split("```")[0]
    recipe = _commands(block.replace("$D", "build/demo_heldout"))
    python_steps = [c for c in recipe if c.startswith("python -m ")]
    assert python_steps and all(step in demo for step in python_steps), (python_steps, demo)
    make_steps = [c for c in recipe if c.startswith("make ")]
    assert len(make_steps) == 2
    for step in make_steps:  # the recipe's make lines run the same evaluations as the target
        evaluations = dry_run(*step.split()[1:])
        assert len(evaluations) == 3 and all(c in demo for c in evaluations)
    assert len(demo) == len(python_steps) + 6  # + eval-heldout's and eval-base's three evaluations each
