"""The reproducible tar writer (dataengine.shards) and stock webdataset decoding."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import simplejpeg

from dataengine.shards import npy_bytes, sample_key, sample_members, write_tar
from shardformat import suffixes_by_key


def test_tar_writer_is_reproducible_and_stock_webdataset_decodes(tmp_path):
    import webdataset as wds

    rng = np.random.default_rng(6)
    jpgs = [simplejpeg.encode_jpeg(rng.integers(0, 255, (14, 14, 3), dtype=np.uint8)) for _ in range(2)]
    depth = rng.uniform(0, 5, (2, 14, 14)).astype(np.float32)
    cams = {"scene": "s", "frames": [{"K": np.eye(3).tolist()}] * 2}
    members = sample_members(sample_key("my_scene", 3), jpgs, depth, (depth > 1).astype(np.uint8), cams)
    write_tar(tmp_path / "a.tar", members)
    write_tar(tmp_path / "b.tar", members)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos][0] == "my_scene_00003.f0.jpg"
    assert all(i.mtime == 0 and i.uid == 0 and i.uname == "" and i.mode == 0o444 for i in infos)
    assert suffixes_by_key(tmp_path / "a.tar") == {
        "my_scene_00003": ["f0.jpg", "f1.jpg", "depth.npy", "mask.npy", "cameras.json"]
    }
    sample = next(iter(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False).decode("rgb8")))
    assert sample["__key__"] == "my_scene_00003"
    np.testing.assert_array_equal(sample["depth.npy"], depth)
    assert sample["f1.jpg"].shape == (14, 14, 3) and sample["cameras.json"] == cams
    assert npy_bytes(depth) == npy_bytes(depth.copy())
    with pytest.raises(ValueError, match="no dots"):
        sample_key("scene.v2", 0)
