"""Capture-order windows and leak-free train/val splits.

Frames are sorted by image name (capture order). The split is decided on FRAMES first and windows
are cut inside each split, so no frame appears in both and no window straddles the boundary (the
existing fork shuffled overlapping windows and then split, which leaks frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WINDOW_MODES = ("sequential", "covisible")


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
    mode: str = "sequential"  # sequential: name order; covisible: frames sharing 3-D points

    def __post_init__(self):
        if self.mode not in WINDOW_MODES:
            raise ValueError(f"windows mode must be one of {WINDOW_MODES}, got {self.mode!r}")


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
    for split, frames in zip(("train", "val"), split_frames(scene, n_frames, cfg), strict=True):
        for start in window_starts(len(frames), cfg.frames, cfg.stride):
            out[split].append([frames[start + i] for i in range(cfg.frames)])
    return out


# ---- covisible windows (unordered photo collections) ---------------------------------------------
def frame_covisibility(observed: list[np.ndarray], chunk: int = 4096) -> np.ndarray:
    """(n, n) int64 shared 3-D points between frames from each frame's observed point indices
    (diagonal: the frame's own count), accumulated over chunks of points (bounded memory)."""
    n = len(observed)
    n_points = max((int(o.max()) + 1 for o in observed if len(o)), default=0)
    cov = np.zeros((n, n), dtype=np.float64)
    for lo in range(0, n_points, chunk):
        inc = np.zeros((n, min(chunk, n_points - lo)), dtype=np.float32)
        for i, o in enumerate(observed):
            sel = o[(o >= lo) & (o < lo + chunk)]
            inc[i, sel - lo] = 1.0
        cov += inc @ inc.T
    return np.rint(cov).astype(np.int64)


def _greedy_windows(members: list[int], cov: np.ndarray, frames: int, count: int, cap: int) -> list[list[int]]:
    """`count` windows over `members`: each starts at the least-used frame (ties: lowest index) and
    grows by the frame sharing the most points with the window so far; a frame that would make
    the window share more than `cap` frames with an earlier window is passed over while others
    remain. Deterministic (no randomness, index tie-breaks)."""
    used = {m: 0 for m in members}
    windows: list[list[int]] = []
    for _ in range(count):
        seed = min(members, key=lambda m: (used[m], m))
        win = [seed]
        while len(win) < frames:
            score = {c: int(cov[c, win].sum()) for c in members if c not in win}
            ranked = sorted(score, key=lambda c: (-score[c], used[c], c))
            pick = next(
                (c for c in ranked if all(len(set(win) & set(w)) + (c in w) <= cap for w in windows)), ranked[0]
            )
            win.append(pick)
        for m in win:
            used[m] += 1
        windows.append(win)
    return windows


def covisible_windows(scene: str, cov: np.ndarray, cfg: WindowConfig) -> dict[str, list[list[int]]]:
    """Split first (as `split_frames`), then inside each split as many windows as the sequential
    mode would cut, built from frames that see the same 3-D points (`_greedy_windows`, at most
    frames - stride frames shared between two windows where possible)."""
    out: dict[str, list[list[int]]] = {"train": [], "val": []}
    cap = max(cfg.frames - cfg.stride, 0)
    for split, members in zip(("train", "val"), split_frames(scene, len(cov), cfg), strict=True):
        count = len(window_starts(len(members), cfg.frames, cfg.stride))
        if count:
            out[split] = _greedy_windows(list(members), cov, cfg.frames, count, cap)
    return out


def window_overlap(windows: list[list[int]], cov: np.ndarray, kind: str = "min") -> float:
    """Mean over windows of the mean pairwise overlap (0..1): shared / min(seen_a, seen_b)
    ("min"), or shared / (seen_a + seen_b - shared) ("jaccard")."""
    scores = []
    for w in windows:
        pairs = [(a, b) for i, a in enumerate(w) for b in w[i + 1 :]]
        if kind == "jaccard":
            vals = [cov[a, b] / max(cov[a, a] + cov[b, b] - cov[a, b], 1) for a, b in pairs]
        else:
            vals = [cov[a, b] / max(min(cov[a, a], cov[b, b]), 1) for a, b in pairs]
        if vals:
            scores.append(float(np.mean(vals)))
    return float(np.mean(scores)) if scores else 0.0


# ---- rigs (several cameras firing together) -------------------------------------------------------
def rig_windows(
    scene: str, members: list[tuple[str, str]], cfg: WindowConfig, cov: np.ndarray | None = None
) -> dict[str, list[list[int]]]:
    """Windows of a rig capture. `members[i]` = (stream, rig frame) of frame i (frames in name order;
    stream = the camera, rig frame = the shot the cameras took together). The split is decided on RIG
    FRAMES — the last fraction of them, with every camera's image, is val — so no val image has a
    simultaneous rig mate in train; sequential windows are cut inside one camera's stream (they never
    straddle two cameras), covisible windows among the split's images (`_greedy_windows`)."""
    order: dict[str, int] = {}
    for _, key in members:
        order.setdefault(key, len(order))
    out: dict[str, list[list[int]]] = {"train": [], "val": []}
    for split, keys in zip(("train", "val"), split_frames(scene, len(order), cfg), strict=True):
        inside = [i for i, (_, key) in enumerate(members) if order[key] in keys]
        streams: dict[str, list[int]] = {}
        for i in inside:
            streams.setdefault(members[i][0], []).append(i)
        count = sum(len(window_starts(len(idx), cfg.frames, cfg.stride)) for idx in streams.values())
        if cov is not None:
            if count:
                out[split] = _greedy_windows(inside, cov, cfg.frames, count, max(cfg.frames - cfg.stride, 0))
            continue
        for stream in sorted(streams):
            idx = streams[stream]
            for start in window_starts(len(idx), cfg.frames, cfg.stride):
                out[split].append(idx[start : start + cfg.frames])
    return out
