"""Run the real `python -m dataengine` CLI in this interpreter with one injected file-system fault.

    python tests/fault_cli.py ARGS...      (the dataengine arguments)

The fault is chosen by environment variables (tests only; the engine knows nothing of it):
    FAULT=enospc   a write to the FAULT_NTH-th file (1-based) whose basename matches FAULT_MATCH
                   fails with OSError(ENOSPC) once FAULT_AFTER bytes went into it (a full disk);
    FAULT=kill     the same point SIGKILLs the process (a kill -9 in the middle of a write);
    FAULT=eacces   opening for writing, or creating a directory, under FAULT_PREFIX fails with
                   PermissionError (a read-only folder even for root, who ignores mode bits).
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import io
import os
import signal
import sys
import threading
from pathlib import Path

FAULT = os.environ.get("FAULT", "")
MATCH = os.environ.get("FAULT_MATCH", "*")
AFTER = int(os.environ.get("FAULT_AFTER", "0"))
NTH = int(os.environ.get("FAULT_NTH", "1"))
PREFIX = os.environ.get("FAULT_PREFIX", "/nonexistent-prefix")

_real_open = builtins.open
_real_mkdir = os.mkdir
_lock = threading.Lock()
_matched = 0


class _FaultyFile:
    """Delegates to the real file; write() faults after AFTER bytes."""

    def __init__(self, fh, path: str):
        self._fh, self._path, self._written = fh, path, 0

    def write(self, data):
        if self._written + len(data) > AFTER:
            keep = max(AFTER - self._written, 0)
            if keep:
                self._fh.write(bytes(data)[:keep])
                self._fh.flush()
            if FAULT == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # write(2) names no file
        self._written += len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __iter__(self):
        return iter(self._fh)


def _writing(mode: str) -> bool:
    return any(c in mode for c in "wax+")


def faulty_open(file, mode="r", *args, **kwargs):
    global _matched
    if isinstance(file, (str, bytes, os.PathLike)) and _writing(mode):
        path = os.fsdecode(os.fspath(file))
        if FAULT == "eacces" and os.path.abspath(path).startswith(PREFIX):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        if FAULT in ("enospc", "kill") and fnmatch.fnmatch(os.path.basename(path), MATCH):
            with _lock:
                _matched += 1
                hit = _matched == NTH
            if hit:
                return _FaultyFile(_real_open(file, mode, *args, **kwargs), path)
    return _real_open(file, mode, *args, **kwargs)


def faulty_mkdir(path, *args, **kwargs):
    if FAULT == "eacces" and os.path.abspath(os.fsdecode(os.fspath(path))).startswith(PREFIX):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(os.fspath(path)))
    return _real_mkdir(path, *args, **kwargs)


if __name__ == "__main__":
    builtins.open = io.open = faulty_open
    os.mkdir = faulty_mkdir
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from dataengine.cli import main

    sys.argv = ["python -m dataengine", *sys.argv[1:]]
    main()
