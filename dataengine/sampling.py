"""Evaluation samples: which ETH3D scenes are held out, and which frames of a scene an evaluation sees.

Training windows (dataengine.windows) are short runs of consecutive frames. Published ETH3D protocols
instead look at frames drawn from the whole scene: the VGGT point-map evaluation at 10 random frames
per scene, the Depth Anything 3 pose evaluation at up to 100 (i.e. every frame of every ETH3D training
scene; ``da3`` reproduces its evaluator's draw exactly). ``sample_frames`` picks those frames; they are
written as one sample per scene into their own split (``test``) so that a training run, which reads
``train``, never sees them.
"""

from __future__ import annotations

import dataclasses
import random

SAMPLING_MODES = ("windows", "uniform", "random", "da3")
EVAL_SPLIT = "test"
# Depth Anything 3's evaluator (bench/evaluator.py, Evaluator._sample_frames): at most 100 frames per scene,
# drawn with Python's random.seed(42).
DA3_MAX_FRAMES = 100
DA3_SEED = 42


def da3_sample_indices(n_frames: int, max_frames: int = DA3_MAX_FRAMES) -> list[int]:
    """The frame indices Depth Anything 3's evaluator keeps of a scene with ``n_frames`` frames: all of them
    when ``n_frames <= max_frames`` (or ``max_frames <= 0``); otherwise ``random.seed(42)``, shuffle the list
    0..n-1, take the first ``max_frames``, sort. A private ``random.Random(42)`` runs the same Mersenne
    Twister draw as the module-level ``random.seed(42)`` without touching the global state."""
    if max_frames <= 0 or n_frames <= max_frames:
        return list(range(n_frames))
    order = list(range(n_frames))
    random.Random(DA3_SEED).shuffle(order)
    return sorted(order[:max_frames])


def sample_frames(n_frames: int, count: int, mode: str, seed: int = 0, scene: str = "") -> list[int]:
    """Sorted indices of ``min(count, n_frames)`` frames of a scene with ``n_frames`` frames.

    ``uniform``: spread evenly over the whole capture order, first and last frame included
    (index round(i·(n-1)/(count-1))). ``random``: a uniform random subset, seeded by (seed, scene) so
    that every scene gets its own draw and a rebuild gets the same one (independent of the Python
    hash seed and of the other scenes in the build). ``da3``: Depth Anything 3's draw
    (:func:`da3_sample_indices`, fixed seed 42; ``seed`` and ``scene`` are not used).
    """
    if mode not in ("uniform", "random", "da3"):
        raise ValueError(f"sampling mode must be 'uniform', 'random' or 'da3', got {mode!r}")
    if count < 1:
        raise ValueError(f"frames per evaluation sample must be >= 1, got {count}")
    if mode == "da3":
        return da3_sample_indices(n_frames, count)
    if n_frames <= count:
        return list(range(n_frames))
    if mode == "uniform":
        if count == 1:
            return [0]
        return [round(i * (n_frames - 1) / (count - 1)) for i in range(count)]
    return sorted(random.Random(f"eval-sample-{seed}-{scene}").sample(range(n_frames), count))


def restrict_to_sample(scene, count: int, mode: str, seed: int = 0):
    """The scene (dataengine.eth3d.Scene, frames in capture order) with only its sampled frames, so that
    a build renders just those (10 of 76 frames, not all 76 laser depth maps).

    ``da3`` does what Depth Anything 3's ETH3D benchmark does: it keeps the frames listed in
    dslr_calibration_jpg/images.txt, in that file's order (DA3's frame 0 is the first listed, and its pose
    rule depends on frame 0), drops the images it filters out of that scene
    (dataengine.scenes.DA3_ETH3D_FILTERED_IMAGES), then draws from the rest, as its evaluator does. Frames
    without that calibration line (COLMAP projects) keep their order."""
    frames = scene.frames
    if mode == "da3":
        from dataengine.scenes import da3_filtered

        frames = [f for f in frames if not da3_filtered(scene.name, f.name)]
        lines = [getattr(f, "jpg_calibration_line", None) for f in frames]
        if any(line is not None for line in lines):
            frames = sorted(
                (f for f, line in zip(frames, lines, strict=True) if line is not None),
                key=lambda f: f.jpg_calibration_line,
            )
    picked = sample_frames(len(frames), count, mode, seed, scene.name)
    return dataclasses.replace(scene, frames=[frames[i] for i in picked])
