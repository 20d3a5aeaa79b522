"""trainer.config: typed sections, file:line errors, `base:` overlays, self-contained run configs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.config import ConfigError, LossConfig, TrainConfig, config_from_run, dump_config, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
RESOLVED_BEFORE = ROOT / "tests" / "assets" / "resolved_configs_f2287ea.json"


def as_plain(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, as in the JSON reference


@pytest.mark.parametrize("name", ["strategy_a", "strategy_b", "strategy_c", "demo"])
def test_overlays_resolve_to_the_values_of_the_standalone_files(name):
    # The reference was dumped by load_config at f2287ea, when every file was standalone (54-58 lines).
    expected = json.loads(RESOLVED_BEFORE.read_text())["configs"][name]
    resolved = as_plain(load_config(CONFIGS / f"{name}.yaml"))
    assert resolved.pop("weights_revision") is None  # new key: None = the pinned default revision
    assert resolved == expected
    assert "base" in yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())  # they really are overlays


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, line, key",
    [
        ("seed: 1\nsed: 2\n", 2, "sed"),
        ("seed: 1\ndata:\n  batch_size: 1\n  batchsize: 2\n", 4, "data.batchsize"),
        ("lora:\n  rank: 4\n  rnak: 4\n", 3, "lora.rnak"),
        ("optim:\n  lr: 1.0e-4\n  momentum: 0.9\n", 3, "optim.momentum"),
        ("seed: 0\n\nloss:\n  camera: 1.0\n  camra: 1.0\n", 5, "loss.camra"),
    ],
)
def test_unknown_key_in_every_section_names_file_and_line(tmp_path, text, line, key):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=rf"^{path}:{line}: unknown key '{key}'"):
        load_config(path)


def test_unknown_loss_key_suggests_the_known_one(tmp_path):
    path = write(tmp_path, "bad.yaml", "loss:\n  depth_graad: 1.0\n")
    with pytest.raises(ConfigError, match=r"did you mean 'loss\.depth_grad'\?"):
        load_config(path)


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("optim:\n  lr: fast\n", 2, "optim.lr: expected float, got 'fast'"),
        ("max_steps: 2.5\n", 1, "max_steps: expected int, got 2.5"),
        ("loss:\n  camera: [1, 2]\n", 2, "loss.camera: expected float"),
        ("loss:\n  camera_loss_type: {a: 1}\n", 2, "loss.camera_loss_type: expected a string"),
        ("data:\n  pin_memory: maybe\n", 2, "data.pin_memory: expected true/false"),
        ("lora:\n  targets: 3\n", 2, "lora.targets: expected a list"),
        ("optim:\n  betas: [0.9]\n", 2, "optim.betas: expected 2 values"),
        ("seed: 0\nloss: 3\n", 2, "'loss' must be a mapping"),
    ],
)
def test_wrong_types_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and message in str(info.value)


def test_loss_section_is_typed_and_values_are_converted(tmp_path):
    path = write(tmp_path, "ok.yaml", "loss:\n  camera: 1\n  point_conf: 5e-1\n  depth_gradient_loss: none\n")
    cfg = load_config(path, ["loss.weight_focal=0.25", "depth_alpha=0.3"])
    assert isinstance(cfg.loss, LossConfig)
    assert (cfg.loss.camera, cfg.loss.point_conf, cfg.loss.weight_focal, cfg.loss.depth_alpha) == (1.0, 0.5, 0.25, 0.3)
    assert cfg.loss.depth_gradient_loss == "none" and cfg.loss.uses_points
    with pytest.raises(ConfigError, match="loss.camera_loss_type must be l1|l2"):
        load_config(None, ["loss.camera_loss_type=l3"])
    with pytest.raises(ConfigError, match="gradient_loss must be one of"):
        load_config(None, ["loss.point_gradient_loss=curvature"])


@pytest.mark.parametrize(
    "item, message",
    [
        ("loss.camra=1", "--set 'loss.camra=1': unknown key 'loss.camra' (did you mean 'loss.camera'?)"),
        ("data.shard=x", "--set 'data.shard=x': unknown key 'data.shard' (did you mean 'data.shards'?)"),
        ("loss.camera=high", "--set 'loss.camera=high': expected float, got 'high'"),
        ("lr", "--set 'lr': expected key=value"),
        ("lora.targets=[a", "--set 'lora.targets=[a': expected a YAML list such as [a, b], got '[a'"),
    ],
)
def test_override_errors_name_the_override(item, message):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "strategy_b.yaml", [item])
    assert str(info.value).startswith(message)


def test_cli_rejects_a_misspelt_loss_key_in_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "train",
            "--config",
            str(CONFIGS / "strategy_b.yaml"),
            "--shards",
            str(ROOT / "tests" / "assets"),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "loss.camra=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    expected = "Error: ConfigError: --set 'loss.camra=1': unknown key 'loss.camra'"
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "run").exists()  # nothing started


# ---------------------------------------------------------------------------------------- overlays


def test_overlay_merges_sections_key_by_key_and_replaces_lists(tmp_path):
    write(tmp_path, "base.yaml", "seed: 3\nlora:\n  rank: 8\n  targets: ['a\\..*', 'b\\..*']\noptim:\n  lr: 1.0e-4\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    overlay = write(sub, "over.yaml", "base: ../base.yaml\nlora:\n  targets: ['c\\..*']\noptim:\n  min_lr: 0\n")
    cfg = load_config(overlay)
    assert (cfg.seed, cfg.lora.rank, cfg.lora.targets) == (3, 8, [r"c\..*"])
    assert (cfg.optim.lr, cfg.optim.min_lr) == (1e-4, 0.0)
    assert load_config(overlay, ["seed=4"]).seed == 4  # overrides still come last


def test_overlay_errors_name_the_file_that_holds_the_key(tmp_path):
    base = write(tmp_path, "base.yaml", "seed: 0\n\ndata:\n  batch_size: 1\n  workers: 2\n")
    overlay = write(tmp_path, "over.yaml", "base: base.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=rf"^{base}:5: unknown key 'data\.workers'"):
        load_config(overlay)

    write(tmp_path, "base.yaml", "seed: 0\noptim:\n  lr: 1.0e-4\n")
    write(tmp_path, "over.yaml", "base: base.yaml\n# a comment\noptim:\n  lr: quick\n")
    with pytest.raises(ConfigError, match=rf"^{overlay}:4: optim\.lr: expected float, got 'quick'"):
        load_config(overlay)

    write(tmp_path, "over.yaml", "seed: 1\nbase: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=rf"^{overlay}:2: base file {tmp_path / 'nowhere.yaml'} does not exist"):
        load_config(overlay)

    write(tmp_path, "over.yaml", "base: [base.yaml]\n")
    with pytest.raises(ConfigError, match=rf"^{overlay}:1: base must name a YAML file"):
        load_config(overlay)

    write(tmp_path, "base.yaml", "base: over.yaml\nseed: 0\n")
    write(tmp_path, "over.yaml", "base: base.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=rf"^{base}:1: base 'over.yaml' includes itself"):
        load_config(overlay)


def test_overlay_replacing_a_section_with_a_scalar_names_the_overlay(tmp_path):
    write(tmp_path, "base.yaml", "loss:\n  camera: 1.0\n  bogus: 2\n")
    overlay = write(tmp_path, "over.yaml", "base: base.yaml\nloss: off\n")
    with pytest.raises(ConfigError, match=rf"^{overlay}:2: 'loss' must be a mapping"):
        load_config(overlay)


def test_run_config_is_self_contained_and_resumes_without_the_base(tmp_path):
    cfg = load_config(CONFIGS / "strategy_c.yaml", ["loss.point_reg=0.5"])
    run = tmp_path / "elsewhere" / "run"
    run.mkdir(parents=True)
    dump_config(cfg, run / "config.yaml", {"meta": {"git_sha": "x"}})
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert "base" not in saved and saved["loss"]["point_reg"] == 0.5 and len(saved["loss"]) == 20
    assert config_from_run(run) == cfg
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("  rank: 16", "  rank: 16\n  rnak: 1"))
    with pytest.raises(ConfigError, match=rf"^{run / 'config.yaml'}:\d+: unknown key 'lora\.rnak'"):
        config_from_run(run)


def test_dpt_checkpoint_frames_has_one_owner():
    from trainer.builders import build_model
    from trainer.vggt import VGGTConfig

    assert "dpt_checkpoint_frames" not in {f.name for f in dataclasses.fields(VGGTConfig)}
    model = build_model("tiny", None, activation_checkpointing=True, dpt_checkpoint_frames=3)
    assert model.depth_head.checkpoint_frames == 3
    model.set_activation_checkpointing(False)
    assert model.depth_head.checkpoint_frames is None
    with pytest.raises(ValueError, match="dpt_checkpoint_frames must be >= 1"):
        model.set_activation_checkpointing(True, 0)


def test_model_presets_are_named_once():
    """trainer.config.MODEL_PRESETS (the CLI's --model choices and the config check) is what VGGTConfig builds."""
    from trainer.config import MODEL_PRESETS, ConfigError, load_config
    from trainer.vggt import VGGTConfig

    for name in MODEL_PRESETS:
        VGGTConfig.preset(name)
    with pytest.raises(ValueError, match=r"choose one of \['tiny', 'vggt-1b'\]"):
        VGGTConfig.preset("vggt-2b")
    assert sorted(MODEL_PRESETS) == ["tiny", "vggt-1b"]
    with pytest.raises(ConfigError, match="model must be 'vggt-1b' or 'tiny', got 'vggt-2b'"):
        load_config(CONFIGS / "strategy_b.yaml", ["model=vggt-2b"])
