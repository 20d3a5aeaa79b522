"""The trainer's one error convention. Every error caused by the user's input or environment (configs,
shards, weights, runs, destinations) derives from UserError: `python -m trainer` shows it as one
`Error: ...` line, no traceback (`--debug` or TRAINER_DEBUG=1 shows one). Everything else is a bug and
keeps its traceback. Each class keeps the builtin base it always had (ValueError / RuntimeError), so a
caller's `except ValueError` still catches it.

    ConfigError             trainer/config.py        a config file or override
    RunSetupError           here                     a run cannot start (output dir, weights path, resume state)
    PretrainedSourceError   trainer/vggt/loading.py  checkpoint not found / not fetched
    CheckpointMismatchError trainer/vggt/loading.py  checkpoint keys or shapes do not fit the model
    AdapterMismatchError    trainer/lora.py          adapter weights do not fit its config / the model
    ProtocolScopeError      trainer/protocols.py     a protocol run that would be in-sample
    ExportError             trainer/export.py        run, adapter or destination of export / push
    NonFiniteLossError      trainer/train.py         too many non-finite steps in a row

Not ours but shown the same way: shardformat's ShardError (the shard format's own error, shared with the
engine, which must not depend on the trainer) and OSError (a file the user named).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or environment; the message names the file / option and what to do."""


class RunSetupError(UserError, ValueError):
    """The run cannot start (shards, output directory, weights, resume state); the message says why."""
