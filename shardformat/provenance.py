"""The code version a manifest (engine) or a run directory (trainer) records."""

from __future__ import annotations

import subprocess
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def git_sha(mark_dirty: bool = False) -> str:
    """HEAD of the checkout this package runs from, "-dirty" appended when asked and the tree has changes;
    "unknown" outside a git checkout (an installed wheel) or without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_HERE, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return "unknown"
        sha = head.stdout.strip()
        if mark_dirty:
            status = subprocess.run(
                ["git", "status", "--porcelain"], cwd=_HERE, capture_output=True, text=True, timeout=30
            )
            sha += "-dirty" if status.stdout.strip() else ""
        return sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"
