"""The trainer's user-facing errors: bad input or environment (configs, shards, weights, runs, files).
`python -m trainer` shows any of them as one `Error: ...` line without a traceback (TRAINER_DEBUG=1 or
--debug shows it); everything else is a bug and keeps its traceback."""

from __future__ import annotations


class RunSetupError(ValueError):
    """The run cannot start (shards, output directory, weights, resume state); the message says why."""
