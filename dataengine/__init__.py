"""Ahead-of-time ETH3D → WebDataset shard engine for multi-view 3D models."""

__version__ = "0.1.0"
