"""What both reports share: per-sample batch metadata, metrics.json (strict JSON), value and change
formatting, and writing the report files. Each report's own text stays with its evaluation."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

NO_VALUE = "–"


def meta(batch: Mapping[str, Any], name: str, item: int, default: Any) -> Any:
    """Batch item `item`'s entry of the per-sample list `name` (keys, scenes, names), else `default`."""
    values = batch.get(name)
    return values[item] if values is not None and len(values) > item else default


def safe_name(text: str) -> str:
    """`text` usable in a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))


def json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def jsonable(obj: Any) -> Any:
    """Plain JSON values: tensors and numpy scalars as lists / numbers, non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        return jsonable(obj.tolist())
    if isinstance(obj, np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, float):
        return json_float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_results(out_dir: Path, metrics: Mapping[str, Any], report_lines: list[str]) -> None:
    """metrics.json (strict JSON: no NaN) and report.md in `out_dir`."""
    (out_dir / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=1, allow_nan=False) + "\n")
    write_report(out_dir / "report.md", report_lines)


def write_report(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def format_value(value: float | None, scale: float = 1.0, digits: int = 4, suffix: str = "") -> str:
    """`value` x `scale` with `digits` decimals and `suffix`; '–' when there is none (or it is not finite)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return NO_VALUE
    return f"{scale * value:.{digits}f}{suffix}"


def relative_change(base: float | None, adapter: float | None) -> float | None:
    """(adapter - base) / |base|; None when undefined."""
    if base is None or adapter is None or base == 0 or not math.isfinite(base) or not math.isfinite(adapter):
        return None
    return (adapter - base) / abs(base)


def format_change(change: float | None, higher_is_better: bool) -> str:
    """A relative change as shown in the reports: '+1.2% ✓' (better), '-3.0% ✗' (worse), '±0.0%' (no
    change at the precision shown: neither mark, so a float-noise difference is never a regression)."""
    if change is None or not math.isfinite(change):
        return NO_VALUE
    shown = round(100 * change, 1)
    if shown == 0:
        return "±0.0%"
    better = shown > 0 if higher_is_better else shown < 0
    return f"{shown:+.1f}% {'✓' if better else '✗'}"


def change_cell(base: float | None, adapter: float | None, higher_better: bool) -> str:
    """The change column of a base-vs-adapter table."""
    return format_change(relative_change(base, adapter), higher_better)
