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
    out = subprocess.run(
        [sys.executable, "-m", package, "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in commands:
        assert f"  {command}" in out, f"`python -m {package} --help` lacks `{command}`:\n{out}"


def test_unknown_command_fails():
    proc = subprocess.run(
        [sys.executable, "-m", "dataengine", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "No such command" in proc.stderr
