"""One error convention (issue 21): every user-facing error derives from its package's UserError, the CLI
group catches that base once, and `--debug` / <PKG>_DEBUG=1 shows the traceback in both CLIs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_every_trainer_error_is_a_user_error_and_keeps_its_builtin_base():
    from trainer.config import ConfigError
    from trainer.errors import RunSetupError, UserError
    from trainer.export import ExportError
    from trainer.lora import AdapterMismatchError
    from trainer.preflight import RunSetupError as PreflightRunSetupError
    from trainer.protocols import ProtocolScopeError
    from trainer.train import NonFiniteLossError
    from trainer.vggt.loading import CheckpointMismatchError, PretrainedSourceError

    builtin = {
        ConfigError: ValueError,
        RunSetupError: ValueError,
        AdapterMismatchError: ValueError,
        ProtocolScopeError: ValueError,
        ExportError: RuntimeError,
        NonFiniteLossError: RuntimeError,
        PretrainedSourceError: RuntimeError,
        CheckpointMismatchError: RuntimeError,
    }
    for cls, base in builtin.items():
        assert issubclass(cls, UserError) and issubclass(cls, base), cls  # `except ValueError` callers still work
    assert PreflightRunSetupError is RunSetupError


def test_engine_errors_share_one_base_that_is_a_value_error():
    from dataengine.errors import BadInputError, UserError

    assert issubclass(BadInputError, UserError) and issubclass(UserError, ValueError)


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    full_env.pop("TRAINER_DEBUG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=full_env, cwd=ROOT)


@pytest.mark.parametrize(
    ("switch", "env", "traceback"),
    [
        ((), {}, False),
        ((), {"TRAINER_DEBUG": "0"}, False),
        (("--debug",), {}, True),
        ((), {"TRAINER_DEBUG": "1"}, True),
    ],
)
def test_trainer_debug_switch(switch, env, traceback):
    """A bad config override: one `Error:` line naming the key, or with the switch the traceback of it."""
    proc = run("trainer", *switch, "params", "--config", "configs/strategy_b.yaml", "--set", "loss.camra=1", env=env)
    assert proc.returncode != 0
    assert ("Traceback" in proc.stderr) == traceback, proc.stderr[-2000:]
    if not traceback:
        lines = proc.stderr.strip().splitlines()
        assert lines == [lines[0]] and lines[0].startswith("Error: ConfigError: --set 'loss.camra=1'"), lines
    else:
        assert "ConfigError" in proc.stderr.strip().splitlines()[-1]
