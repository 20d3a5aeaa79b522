"""Frame windows and train/val splits (dataengine.windows)."""

from __future__ import annotations

import math

from dataengine.windows import WindowConfig, scene_windows, split_frames, window_starts


def test_windows_cover_tail_and_splits_are_frame_disjoint():
    assert window_starts(20, 8, 4) == [0, 4, 8, 12]
    assert window_starts(23, 8, 4) == [0, 4, 8, 12, 15]
    assert window_starts(7, 8, 4) == []
    cfg = WindowConfig()
    for n in [8, 15, 16, 23, 26, 44, 45, 76]:
        train, val = split_frames("s", n, cfg)
        assert set(train).isdisjoint(val) and len(train) + len(val) == n
        if len(val):
            assert val == range(n - len(val), n) and len(val) >= max(math.ceil(0.15 * n), 8)
        wins = scene_windows("s", n, cfg)
        for w in wins["train"]:
            assert set(w) <= set(train) and w == list(range(w[0], w[0] + 8))
        for w in wins["val"]:
            assert set(w) <= set(val)
        used = {i for s in wins for w in wins[s] for i in w}
        assert used == set(range(n)) or n < 16  # every frame used once both splits exist
    assert split_frames("s", 76, cfg) == (range(64), range(64, 76))
    scene_cfg = WindowConfig(val_scenes=("office",))
    assert split_frames("office", 26, scene_cfg) == (range(0), range(26))
    assert split_frames("facade", 76, scene_cfg) == (range(76), range(0))
