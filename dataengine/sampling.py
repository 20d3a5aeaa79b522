"""Evaluation samples: which ETH3D scenes are held out, and which frames of a scene an evaluation sees.

Training windows (dataengine.windows) are short runs of consecutive frames. Published ETH3D protocols
instead look at frames drawn from the whole scene: the VGGT point-map evaluation at 10 random frames
per scene, the Depth Anything 3 pose evaluation at up to 100 (i.e. every frame of every ETH3D training
scene). ``sample_frames`` picks those frames; they are written as one sample per scene into their own
split (``test``) so that a training run, which reads ``train``, never sees them.
"""

from __future__ import annotations

import dataclasses
import random

SAMPLING_MODES = ("windows", "uniform", "random")
EVAL_SPLIT = "test"


def sample_frames(n_frames: int, count: int, mode: str, seed: int = 0, scene: str = "") -> list[int]:
    """Sorted indices of ``min(count, n_frames)`` frames of a scene with ``n_frames`` frames.

    ``uniform``: spread evenly over the whole capture order, first and last frame included
    (index round(i·(n-1)/(count-1))). ``random``: a uniform random subset, seeded by (seed, scene) so
    that every scene gets its own draw and a rebuild gets the same one (independent of the Python
    hash seed and of the other scenes in the build).
    """
    if mode not in ("uniform", "random"):
        raise ValueError(f"sampling mode must be 'uniform' or 'random', got {mode!r}")
    if count < 1:
        raise ValueError(f"frames per evaluation sample must be >= 1, got {count}")
    if n_frames <= count:
        return list(range(n_frames))
    if mode == "uniform":
        if count == 1:
            return [0]
        return [round(i * (n_frames - 1) / (count - 1)) for i in range(count)]
    return sorted(random.Random(f"eval-sample-{seed}-{scene}").sample(range(n_frames), count))


def restrict_to_sample(scene, count: int, mode: str, seed: int = 0):
    """The scene (dataengine.eth3d.Scene, frames in capture order) with only its sampled frames, so that
    a build renders just those (10 of 76 frames, not all 76 laser depth maps)."""
    picked = sample_frames(len(scene.frames), count, mode, seed, scene.name)
    return dataclasses.replace(scene, frames=[scene.frames[i] for i in picked])
