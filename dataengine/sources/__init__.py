"""Capture formats the engine builds from, chosen once from `--format` (the CLI reads its choices here).

A new format is one new module in this package implementing `Source` (sources/base.py), plus its line in
`SOURCES`; dataengine.build never names a format. Modules are imported on first use, so `--help` and the
other commands do not load every format's readers.
"""

from __future__ import annotations

import importlib

from dataengine.sources.base import Source

# --format value → "module:class"; the first is the default.
SOURCES = {
    "eth3d": "dataengine.sources.eth3d:Eth3dSource",
    "colmap": "dataengine.sources.colmap:ColmapSource",
}
FORMATS = tuple(SOURCES)


def get_source(fmt: str) -> Source:
    """The Source of --format `fmt` (a ValueError naming the formats for an unknown one)."""
    if fmt not in SOURCES:
        raise ValueError(f"--format must be {' or '.join(FORMATS)}, got {fmt!r}")
    module, cls = SOURCES[fmt].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["FORMATS", "SOURCES", "Source", "get_source"]
