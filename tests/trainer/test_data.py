"""trainer.data on engine-built shards: the batch contract, determinism, exact resume, rank split."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.data import ShardError, list_shards, make_loader, to_device


def read_sample(shard: str) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_batch_contract_matches_the_tar_members(shards):
    loader = make_loader(shards, "train", batch_size=1, shuffle=False, num_workers=0)
    batch = next(iter(loader))
    infos = list_shards(shards, "train")
    assert sum(i.samples for i in infos) >= 3 and all(i.samples == 1 for i in infos)
    members = read_sample(infos[0].path)  # no shuffle, one rank: the first shard comes first
    cams = json.loads(members["cameras.json"])
    S, (H, W) = len(cams["frames"]), cams["image_size"]
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (1, S, 3, H, W)
    assert batch["depths"].dtype == torch.float32 and batch["depths"].shape == (1, S, H, W)
    assert batch["point_masks"].dtype == torch.bool
    assert batch["extrinsics"].shape == (1, S, 3, 4) and batch["intrinsics"].shape == (1, S, 3, 3)
    assert batch["keys"] == [cams["scene"] + "_" + batch["keys"][0].rsplit("_", 1)[1]]
    assert batch["scenes"] == [cams["scene"]] and batch["names"] == [[f["name"] for f in cams["frames"]]]
    # Independent decoders: PIL for the JPEG (same libjpeg family, tiny IDCT differences), np.load.
    pil = np.asarray(Image.open(io.BytesIO(members["f1.jpg"])).convert("RGB")).transpose(2, 0, 1)
    assert np.abs(batch["images"][0, 1].numpy().astype(int) - pil.astype(int)).mean() < 1.0
    depth = np.load(io.BytesIO(members["depth.npy"]))
    np.testing.assert_array_equal(batch["depths"][0].numpy(), depth)
    np.testing.assert_array_equal(batch["point_masks"][0].numpy(), depth > 0)
    np.testing.assert_allclose(batch["extrinsics"][0, 2].numpy(), np.array(cams["frames"][2]["extrinsics"]), rtol=1e-6)
    np.testing.assert_allclose(batch["intrinsics"][0, 3].numpy(), np.array(cams["frames"][3]["K"]), rtol=1e-6)
    on_device = to_device(batch, torch.device("cpu"))
    assert on_device["images"].dtype == torch.float32
    assert torch.equal(on_device["images"] * 255, batch["images"].float())


def test_frames_option_and_too_many_frames(shards):
    batch = next(iter(make_loader(shards, "train", 1, shuffle=False, frames=2)))
    assert batch["images"].shape[1] == 2 and batch["depths"].shape[1] == 2
    with pytest.raises(ShardError, match=r"train-00000\.tar: sample .* data\.frames=9"):
        next(iter(make_loader(shards, "train", 1, shuffle=False, frames=9)))


def keys_of(loader, epoch, skip=0):
    return [k for b in loader.epoch_batches(epoch, skip) for k in b["keys"]]


def test_order_is_deterministic_per_seed_and_epoch(shards):
    a = make_loader(shards, "train", 1, shuffle=True, seed=3)
    b = make_loader(shards, "train", 1, shuffle=True, seed=3)
    epoch0, epoch1 = keys_of(a, 0), keys_of(a, 1)
    assert epoch0 == keys_of(b, 0) and epoch1 == keys_of(b, 1)
    assert len(set(epoch0)) == len(epoch0) == sum(i.samples for i in list_shards(shards, "train"))
    assert sorted(epoch0) == sorted(epoch1)
    orders = {tuple(keys_of(make_loader(shards, "train", 1, shuffle=True, seed=s), 0)) for s in range(6)}
    assert len(orders) > 1  # the seed changes the order (3 samples: 6 permutations)


def test_resume_position_with_two_workers(shards):
    loader = make_loader(shards, "train", 1, shuffle=True, seed=1, num_workers=2)
    full = keys_of(loader, 0)
    assert len(full) == loader.batches_per_epoch(0) == 2  # 3 shards over 2 workers: 1 full batch each
    for skip in range(len(full) + 1):
        assert keys_of(loader, 0, skip) == full[skip:]
    in_process = make_loader(shards, "train", 1, shuffle=True, seed=1, num_workers=0)
    assert keys_of(in_process, 2, 1) == keys_of(in_process, 2)[1:]


@pytest.mark.parametrize("workers", [0, 2])
def test_endless_stream_matches_epochs_and_starts_the_next_epoch_early(shards, workers, monkeypatch):
    loader = make_loader(shards, "train", 1, shuffle=True, seed=1, num_workers=workers)
    n = loader.batches_per_epoch(0)
    expected = [(e, i, k) for e in range(3) for i, k in enumerate(keys_of(loader, e), start=1)][1:]
    events = []
    original = loader._open
    monkeypatch.setattr(loader, "_open", lambda epoch, skip: events.append(("open", epoch)) or original(epoch, skip))
    got = []
    for epoch, i, batch in loader.batches_from(0, 1):  # one batch into epoch 0, as after a resume
        events.append(("batch", epoch, i))
        got.append((epoch, i, batch["keys"][0]))
        if len(got) == len(expected):
            break
    assert got == expected
    next_opened, last_batch = events.index(("open", 1)), events.index(("batch", 0, n))
    # With workers, epoch 1's workers start while epoch 0's last batch is trained on; in-process,
    # the stream is shared, so the next epoch can only start after the last batch.
    assert (next_opened < last_batch) if workers else (next_opened > last_batch)


def test_ranks_get_disjoint_shards_and_equal_counts(shards, monkeypatch):
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = make_loader(shards, "train", 1, shuffle=True, seed=0)
        seen.append(keys_of(loader, 0))
    assert len(seen[0]) == len(seen[1]) >= 1
    assert not set(seen[0]) & set(seen[1])
    monkeypatch.setenv("RANK", "1")
    mismatched = make_loader(shards, "train", 1, shuffle=True, rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="split_by_node sees rank 1 of 2"):
        keys_of(mismatched, 0)


def test_too_few_shards_for_ranks_times_workers(shards):
    loader = make_loader(shards, "val", 1, shuffle=False, num_workers=2)
    n = len(list_shards(shards, "val"))
    with pytest.raises(ShardError, match=rf"{n} shards for 1 rank\(s\) x 2 worker\(s\)"):
        loader.batches_per_epoch(0)


def test_bad_input_names_the_file(tmp_path, shards):
    with pytest.raises(ShardError, match="no 'train-\\*.tar' shards"):
        list_shards(tmp_path, "train")
    broken = tmp_path / "broken"
    broken.mkdir()
    members = read_sample(list_shards(shards, "train")[0].path)
    key = "synthx_00000"
    with tarfile.open(broken / "train-00000.tar", "w") as tar:
        for ext, payload in members.items():
            if ext == "f1.jpg":
                continue  # a frame goes missing
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(
        ShardError, match=r"broken/train-00000\.tar: sample synthx_00000: missing member synthx_00000\.f1\.jpg"
    ):
        next(iter(make_loader(broken, "train", 1, shuffle=False)))
    (broken / "manifest.json").write_text('{"format": "eth3d-vggt-shards/1",\n "splits": [}')
    with pytest.raises(ShardError, match=r"manifest\.json:2: invalid JSON"):
        list_shards(broken, "train")
