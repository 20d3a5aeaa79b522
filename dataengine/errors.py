"""The engine's user-facing errors. UserError is the base of every error caused by the user's input or
environment; `python -m dataengine` shows it as one `Error: ...` line (`--debug` / DATAENGINE_DEBUG=1 shows
the traceback). It is a ValueError, so callers that catch ValueError keep working."""

from __future__ import annotations

from pathlib import Path


class UserError(ValueError):
    """Bad input or environment; the message names the file (and line) and what to do."""


class BadInputError(UserError):
    """Malformed or inconsistent input data; the message names the file (and line)."""

    def __init__(self, message: str, path: Path | str | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
