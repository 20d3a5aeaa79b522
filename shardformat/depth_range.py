"""The depth range rule of the format, in the shard's units (metres, or the COLMAP model's own units):
the writer (`dataengine build`), `dataengine verify` and the trainer's decoder apply this one rule.

A stored depth is 0 (no supervision) or finite and in (0, MAX_DEPTH]. The bound is absolute, so a
frame can be checked alone, and loose enough for any real capture in large units (a COLMAP model
built with `--metric-scale 2000` has depths ~16,500) while a corrupt value (1e30, 3e38) is caught.
Why 1e6: training normalises depth by a per-sample scale in float32; a batch of 24 frames of 518x518
pixels at 1e6 gives sums of squares ~6e18, far below float32's 3.4e38 (and bfloat16 shares float32's
range). float16 depth members cannot hold more than 65504 (the writer refuses to cast beyond it).
"""

from __future__ import annotations

import numpy as np

MAX_DEPTH = 1e6
FLOAT16_MAX = float(np.finfo(np.float16).max)


def depth_range_problem(depth: np.ndarray) -> str | None:
    """None when every value obeys the rule; else what breaks it (counts, min and max), in words."""
    depth = np.asarray(depth)
    finite = np.isfinite(depth)
    if not finite.all():
        return f"{int((~finite).sum())} non-finite values (NaN/inf)"
    if depth.size and (depth.min() < 0 or depth.max() > MAX_DEPTH):
        count = int(((depth < 0) | (depth > MAX_DEPTH)).sum())
        return (
            f"{count} values outside 0..{MAX_DEPTH:g} (the format's depth bound, in the shard's units; "
            f"min {float(depth.min()):.3g}, max {float(depth.max()):.3g})"
        )
    return None
