"""Capture-order windows and leak-free train/val splits.

Frames are sorted by image name (capture order). The split is decided on FRAMES first and windows
are cut inside each split, so no frame appears in both and no window straddles the boundary (the
existing fork shuffled overlapping windows and then split, which leaks frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowConfig:
    frames: int = 8
    stride: int = 4
    val_fraction: float = 0.15
    val_scenes: tuple[str, ...] = ()  # non-empty → scene-disjoint split, val_fraction ignored
    # "windows" = training windows (above); "uniform" / "random" = one evaluation sample of `frames`
    # frames per scene in the `test` split (dataengine.sampling); `seed` drives "random".
    sampling: str = "windows"
    seed: int = 0


def split_names(cfg: WindowConfig) -> tuple[str, ...]:
    """The splits a build writes."""
    from dataengine.sampling import EVAL_SPLIT

    return ("train", "val") if cfg.sampling == "windows" else (EVAL_SPLIT,)


def window_starts(n_frames: int, frames: int, stride: int) -> list[int]:
    """Starts every `stride` frames, plus one window aligned to the end so no tail frame is lost."""
    if frames < 1 or stride < 1:
        raise ValueError(f"frames and stride must be >= 1, got {frames}, {stride}")
    if n_frames < frames:
        return []
    starts = list(range(0, n_frames - frames + 1, stride))
    if starts[-1] != n_frames - frames:
        starts.append(n_frames - frames)
    return starts


def split_frames(scene: str, n_frames: int, cfg: WindowConfig) -> tuple[range, range]:
    """(train frame range, val frame range) of one scene.

    Frame-disjoint mode: the last ceil(val_fraction * n) frames form val, enlarged to one window
    (`frames`) when the fraction would give fewer, and only if train keeps at least one window.
    """
    if cfg.val_scenes:
        return (range(0), range(n_frames)) if scene in cfg.val_scenes else (range(n_frames), range(0))
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.val_fraction == 0.0:
        return range(n_frames), range(0)
    n_val = max(math.ceil(cfg.val_fraction * n_frames), cfg.frames)
    if n_frames - n_val < cfg.frames:
        return range(n_frames), range(0)  # too small to give both splits a window: all train
    return range(n_frames - n_val), range(n_frames - n_val, n_frames)


def scene_windows(scene: str, n_frames: int, cfg: WindowConfig) -> dict[str, list[list[int]]]:
    """Split name → list of windows (lists of frame indices into the scene's sorted frames)."""
    if cfg.sampling != "windows":
        from dataengine.sampling import EVAL_SPLIT, sample_frames

        picked = sample_frames(n_frames, cfg.frames, cfg.sampling, cfg.seed, scene)
        return {EVAL_SPLIT: [picked] if picked else []}
    out: dict[str, list[list[int]]] = {"train": [], "val": []}
    for split, frames in zip(("train", "val"), split_frames(scene, n_frames, cfg)):
        for start in window_starts(len(frames), cfg.frames, cfg.stride):
            out[split].append([frames[start + i] for i in range(cfg.frames)])
    return out
