"""Both packages run as modules and expose their commands (no network, no heavy imports needed)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "package, commands",
    [
        ("dataengine", ["synth", "build", "inspect", "verify", "download"]),
        ("trainer", ["train", "params", "eval", "export", "push"]),
    ],
)
def test_module_cli_lists_commands(package, commands):
    out = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, check=True).stdout
    for command in commands:
        assert f"  {command}" in out, f"`python -m {package} --help` lacks `{command}`:\n{out}"


def test_unknown_command_fails():
    proc = subprocess.run([sys.executable, "-m", "dataengine", "no-such-command"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "No such command" in proc.stderr


def test_missing_shards_are_reported_before_the_weights_download(tmp_path):
    """Cheap checks first: without shards the 5 GB hub checkpoint is never asked for; one `Error:` line.
    (Offline hub weights with good shards: tests/trainer/test_bad_inputs_trainer.py.)"""
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "train",
            "--config",
            str(repo / "configs" / "strategy_b.yaml"),
            "--shards",
            str(repo / "tests" / "assets"),
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Error: ShardError" in proc.stderr and "no 'train-*.tar' shards" in proc.stderr
    assert "VGGT-1B" not in proc.stderr and not (tmp_path / "run").exists()


def test_inspect_names_a_file_that_is_not_a_shard(tmp_path):
    bad = tmp_path / "train-00000.tar"
    bad.write_bytes(b"not a tar archive")
    proc = subprocess.run([sys.executable, "-m", "dataengine", "inspect", str(bad)], capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"Error: {bad}: not a readable shard" in proc.stderr
