"""trainer.data's reader on hand-made tars: tar index vs webdataset, pread-into-batch vs np.load,
threads and shared memory, truncation and header errors, worker buffer reuse."""

from __future__ import annotations

import io
import json
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch
import webdataset as wds

from trainer.data import (
    BUFFER_KEY,
    SHARD_FORMAT,
    ReleaseTracker,
    ShardError,
    SharedBuffers,
    decode_batch,
    decode_sample,
    index_tar_samples,
    make_loader,
)

S, H, W = 3, 28, 42


def sample_members(index: int, depth_dtype: str = "<f4") -> dict[str, bytes]:
    rng = np.random.default_rng(index)
    members = {}
    for i in range(S):
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        members[f"f{i}.jpg"] = simplejpeg.encode_jpeg(rgb, quality=95, colorsubsampling="420")
    depth = rng.uniform(0.5, 9.0, (S, H, W)).astype(depth_dtype)
    depth[:, :4] = 0  # no supervision
    depth[0, 5, 5] = 0  # a single hole
    # The format's mask is > 0 exactly where depth > 0 (values 1/2 here: anything > 0 supervises);
    # off-format values (NaN, a mask disagreeing with depth) are refused: test_bad_inputs_trainer.py.
    mask = np.where(depth > 0, rng.integers(1, 3, (S, H, W)), 0).astype(np.uint8)
    for name, array in (("depth.npy", depth), ("mask.npy", mask)):
        buf = io.BytesIO()
        np.save(buf, array)
        members[name] = buf.getvalue()
    frames = [
        {
            "name": f"IMG_{index}_{i}.JPG",
            "K": [[30.0 + i, 0, 21], [0, 31, 14], [0, 0, 1]],
            "extrinsics": [[1, 0, 0, i], [0, 1, 0, index], [0, 0, 1, 0.5]],
        }
        for i in range(S)
    ]
    members["cameras.json"] = json.dumps(
        {"format": SHARD_FORMAT, "scene": "hand", "image_size": [H, W], "frames": frames}
    ).encode()
    return members


def write_tar(path: Path, samples: dict[str, dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, members in samples.items():
            for name, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def reference(members: dict[str, bytes]) -> dict[str, np.ndarray]:
    """Independent decode: simplejpeg per frame, np.load, the documented mask rule."""
    depth = np.load(io.BytesIO(members["depth.npy"])).astype(np.float32)
    mask = np.load(io.BytesIO(members["mask.npy"]))
    cams = json.loads(members["cameras.json"])
    return {
        "images": np.stack([simplejpeg.decode_jpeg(members[f"f{i}.jpg"]) for i in range(S)]),
        "depths": depth,
        "point_masks": (mask > 0) & (depth > 0),
        "extrinsics": np.array([f["extrinsics"] for f in cams["frames"]], np.float32),
        "intrinsics": np.array([f["K"] for f in cams["frames"]], np.float32),
    }


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> tuple[Path, dict]:
    samples = {
        "hand_00000": sample_members(0),
        "hand_00001": sample_members(1, "<f2"),
        "hand_00002": sample_members(2, ">f4"),
    }
    return write_tar(tmp_path_factory.mktemp("reader") / "train-00000.tar", samples), samples


def test_index_groups_like_webdataset_and_batches_match_np_load(shard):
    path, samples = shard
    records = list(index_tar_samples([{"url": str(path)}]))
    raw = list(wds.DataPipeline(wds.SimpleShardList([str(path)]), wds.tarfile_to_samples()))
    assert [r["__key__"] for r in records] == [r["__key__"] for r in raw] == list(samples)
    assert all(
        set(a) - {"__url__"} == set(b) - {"__url__", "__local_path__"} for a, b in zip(records, raw, strict=True)
    )
    batch = decode_batch(records, None)
    assert batch["images"].shape == (3, S, 3, H, W) and batch["images"].dtype == torch.uint8
    for b, (key, members) in enumerate(samples.items()):
        ref = reference(members)
        assert batch["keys"][b] == key and batch["names"][b][2] == f"IMG_{b}_2.JPG"
        np.testing.assert_array_equal(batch["images"][b].permute(0, 2, 3, 1).numpy(), ref["images"])
        for name in ("depths", "point_masks", "extrinsics", "intrinsics"):
            np.testing.assert_array_equal(batch[name][b].numpy(), ref[name])
        from_bytes = decode_sample(raw[b], 2)  # wds raw bytes take the same path
        np.testing.assert_array_equal(from_bytes["depths"], ref["depths"][:2])
        np.testing.assert_array_equal(from_bytes["images"], ref["images"][:2])
    assert not batch["point_masks"][0, 0, 5, 5] and not batch["point_masks"][:, :, :4].any()


def test_threads_and_shared_memory_give_the_same_batch(shard):
    path, _ = shard
    records = list(index_tar_samples([{"url": str(path)}]))
    plain = decode_batch(records, None)
    with ThreadPoolExecutor(3) as pool:
        threaded = decode_batch(records, None, pool, torch.UntypedStorage._new_shared)
    assert threaded["images"].is_shared() and not plain["images"].is_shared()
    for name in ("images", "depths", "point_masks", "extrinsics", "intrinsics"):
        np.testing.assert_array_equal(plain[name].numpy(), threaded[name].numpy(), err_msg=name)  # NaN == NaN


def test_truncated_tar_and_bad_npy_header_name_the_file(tmp_path, shard):
    path, samples = shard
    data = path.read_bytes()
    cut = tmp_path / "train-00000.tar"
    cut.write_bytes(data[: data.index(b"hand_00001.depth.npy") + 2000])  # inside sample 1's depth
    with pytest.raises(ShardError, match=r"train-00000\.tar: member hand_00001\.depth\.npy is truncated"):
        list(index_tar_samples([{"url": str(cut)}]))
    bad = dict(samples["hand_00000"])
    buf = io.BytesIO()
    np.save(buf, np.zeros((S, H, W + 1), np.float32))
    bad["depth.npy"] = buf.getvalue()
    wrong = write_tar(tmp_path / "train-00001.tar", {"hand_00000": bad})
    with pytest.raises(ShardError, match=r"train-00001\.tar: sample hand_00000: depth \(3, 28, 43\)"):
        decode_batch(list(index_tar_samples([{"url": str(wrong)}])), None)
    junk = tmp_path / "train-00002.tar"
    with tarfile.open(path) as tar:
        second = tar.getmembers()[1].offset
    junk.write_bytes(data[:second] + b"x" * 512 + data[second + 512 :])  # a damaged second header
    with pytest.raises(ShardError, match=rf"train-00002\.tar: unreadable tar header at byte {second}"):
        list(index_tar_samples([{"url": str(junk)}]))


def test_worker_buffer_is_reused_only_after_the_batch_is_gone():
    flags = torch.zeros((1, 2), dtype=torch.int32).share_memory_()
    buffers, tracker = SharedBuffers(flags[0], 0), ReleaseTracker(flags)
    first = buffers.take(64)  # worker side
    assert buffers.last == (0, 0) and first.is_shared() and flags.tolist() == [[1, 0]]
    # main side: the batch arrives as its own mapping of the segment (a separate storage)
    batch = tracker.received({"images": torch.zeros(64, dtype=torch.uint8), "keys": ["k"], BUFFER_KEY: (0, 0)})
    assert BUFFER_KEY not in batch and flags.tolist() == [[1, 0]]
    second = buffers.take(64)
    assert buffers.last == (0, 1) and second.data_ptr() != first.data_ptr()
    fresh = buffers.take(64)  # both slots busy: a new segment, no slot
    assert buffers.last is None and fresh.data_ptr() not in (first.data_ptr(), second.data_ptr())
    view = batch["images"][8:]  # a view keeps the slot busy
    del batch
    tracker.poll()
    assert flags.tolist() == [[1, 1]]
    del view
    tracker.poll()
    assert flags.tolist() == [[0, 1]]
    assert buffers.take(64).data_ptr() == first.data_ptr() and buffers.last == (0, 0)  # reused, not new


def test_two_workers_held_batches_stay_intact(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    for s in range(4):
        write_tar(root / f"train-{s:05d}.tar", {f"hand_{s}{j:04d}": sample_members(10 * s + j) for j in range(3)})
    in_process = {k: b for b in make_loader(root, "train", 1, shuffle=True, seed=2) for k in b["keys"]}
    loader = make_loader(root, "train", 1, shuffle=True, seed=2, num_workers=2, prefetch_factor=1)
    held = list(loader.epoch_batches(0))  # every batch kept alive: no buffer may be reused
    dropped = [(b["keys"][0], b["images"].sum().item()) for b in loader.epoch_batches(0)]
    assert [b["keys"][0] for b in held] == [k for k, _ in dropped] and len(held) == 12
    for batch in held:
        ref = in_process[batch["keys"][0]]
        assert torch.equal(batch["images"], ref["images"])
        np.testing.assert_array_equal(batch["depths"].numpy(), ref["depths"].numpy())
    assert all(total == in_process[k]["images"].sum().item() for k, total in dropped)
