"""Lean LoRA trainer for VGGT on pre-built multi-view shards."""

__version__ = "0.1.0"
