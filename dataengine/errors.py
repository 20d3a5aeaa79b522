"""The engine's one user-facing error: bad input data, named in the message (file and line where known)."""

from __future__ import annotations

from pathlib import Path


class BadInputError(ValueError):
    """Malformed or inconsistent input data; the message names the file (and line)."""

    def __init__(self, message: str, path: Path | str | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)
