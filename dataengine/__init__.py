"""Ahead-of-time ETH3D → WebDataset shard engine for multi-view 3D models."""

import zlib  # noqa: F401  (before any pycolmap import: see dataengine/zlib_first.py)

__version__ = "0.1.0"
