"""shardformat, the one reader of the shard format: grouping equal to webdataset's (engine-built shards and
a tar of edge cases), the strict checks our shards get on top, manifest reading, member decoding."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from shardformat import (
    FORMAT,
    SampleReader,
    ShardError,
    count_samples,
    index_tar,
    manifest_shards,
    npy_layout,
    read_json,
    read_manifest,
    record_suffixes,
    sample_suffixes,
    split_member_name,
)


def grouped(records: list[dict]) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: payload}) per sample, whatever holds the payloads (tar ranges or bytes)."""
    out = []
    for record in records:
        reader = SampleReader(record)
        try:
            out.append((record["__key__"], {s: bytes(reader.read(s)) for s in record_suffixes(record)}))
        finally:
            reader.close()
    return out


def webdataset_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    return grouped(list(wds.WebDataset(str(path), shardshuffle=False)))


def write_tar(path: Path, entries: list[tuple[str, bytes | str | None]]) -> Path:
    """Members in this order: bytes → regular file, None → directory, str → symlink to that target."""
    with tarfile.open(path, "w") as tar:
        for name, payload in entries:
            info = tarfile.TarInfo(name)
            if payload is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(payload, str):
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            else:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def test_engine_shards_group_as_webdataset_and_in_the_documented_order(shards):
    manifest = read_manifest(shards / "manifest.json")
    frames = manifest["options"]["frames"]
    paths = sorted(shards.glob("*.tar"))
    assert len(paths) >= 4
    for path in paths:
        ours = grouped(list(index_tar(path)))
        assert ours == webdataset_samples(path)  # keys, order, member names and every payload byte
        assert [list(members) for _, members in ours] == [sample_suffixes(frames)] * len(ours)
        assert count_samples(path) == len(ours) >= 1


EDGE_CASES = [
    ("__meta__", b"skipped by webdataset"),
    ("__meta__/x.txt", b"skipped tree"),
    ("k1.f0.JPG", b"suffix lower-cased"),
    ("k1.depth.tar.gz", b"suffix = everything after the basename's first dot"),
    ("dir.v2/k1.json", b"a dotted directory is part of the key"),
    ("dir.v2/", None),  # directories and links are not members
    ("dir.v2/k1.link", "k1.json"),
    ("a/s.txt", b"a/s"),
    ("b/s.txt", b"b/s: same basename, other key"),
    ("c/.hidden", b"webdataset's key: 'c/'"),
    ("e.", b"empty suffix"),
    ("k2.a", b"first k2"),
    ("m.a", b"m"),
    ("k2.b", b"k2 again, not adjacent"),
    ("noext", b"no key"),
    ("k3.x", b"last"),
]


def test_edge_cases_group_exactly_as_webdataset(tmp_path):
    path = write_tar(tmp_path / "edge.tar", EDGE_CASES)
    ours = grouped(list(index_tar(path, strict=False)))
    assert ours == webdataset_samples(path)
    assert [k for k, _ in ours] == ["k1", "dir.v2/k1", "a/s", "b/s", "c/", "e", "k2", "m", "k2", "k3"]
    assert ours[0][1] == {
        "f0.jpg": b"suffix lower-cased",
        "depth.tar.gz": b"suffix = everything after the basename's first dot",
    }
    assert split_member_name("x.y/z") is None and split_member_name("x/.h") == ("x/", "h")


def test_strict_refuses_what_webdataset_passes_over_naming_the_file(tmp_path):
    noext = write_tar(tmp_path / "noext.tar", [("k.a", b"1"), ("README", b"2")])
    with pytest.raises(ShardError, match=r"noext\.tar: member 'README' has no sample key"):
        list(index_tar(noext))
    again = write_tar(tmp_path / "again.tar", [("k.a", b"1"), ("m.a", b"2"), ("k.b", b"3")])
    with pytest.raises(ShardError, match=r"again\.tar: sample k appears twice"):
        list(index_tar(again))
    twice = write_tar(tmp_path / "twice.tar", [("k.a", b"1"), ("k.A", b"2")])
    with pytest.raises(ShardError, match=r"twice\.tar: sample k: member k\.A appears twice"):
        list(index_tar(twice, strict=False))
    with pytest.raises(ValueError, match="duplicate file name"):  # webdataset refuses it too
        list(wds.WebDataset(str(twice), shardshuffle=False))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar archive")
    with pytest.raises(ShardError, match=r"junk\.tar: not a readable tar"):
        count_samples(junk)


def test_manifest_lists_the_shards_as_built(shards):
    manifest = read_manifest(shards / "manifest.json")
    assert manifest["format"] == FORMAT
    for split in ("train", "val"):
        listed = manifest_shards(manifest, shards / "manifest.json", split)
        assert [s.name for s in listed] == sorted(p.name for p in shards.glob(f"{split}-*.tar"))
        for shard in listed:
            data = (shards / shard.name).read_bytes()
            assert shard.bytes == len(data) and shard.sha256 == hashlib.sha256(data).hexdigest()
            assert shard.samples == count_samples(shards / shard.name)
    assert manifest_shards(manifest, "m", "test") == []  # a split the build did not write


def test_bad_manifests_name_the_file_and_the_entry(tmp_path, shards):
    from trainer.data import list_shards

    good = json.loads((shards / "manifest.json").read_text())
    path = tmp_path / "manifest.json"
    path.write_text('{"format": "eth3d-vggt-shards/1",\n "splits": {,}}')
    with pytest.raises(ShardError, match=r"manifest\.json:2: invalid JSON"):
        read_manifest(path)
    path.write_text(json.dumps({**good, "format": "eth3d-vggt-shards/2"}))
    with pytest.raises(
        ShardError,
        match=r"manifest\.json: format 'eth3d-vggt-shards/2', this reader reads "
        r"'eth3d-vggt-shards/1'",
    ):
        read_manifest(path)
    del good["splits"]["train"]["shards"][1]["samples"]
    with pytest.raises(ShardError, match=r"manifest\.json: splits\.train\.shards\[1\]: missing field 'samples'"):
        manifest_shards(good, path, "train")
    # the trainer takes the counts from the manifest, not from the tar headers
    for tar in shards.glob("train-*.tar"):
        (tmp_path / tar.name).symlink_to(tar)
    claimed = json.loads((shards / "manifest.json").read_text())
    claimed["splits"]["train"]["shards"][0]["samples"] = 7
    path.write_text(json.dumps(claimed))
    assert [s.samples for s in list_shards(tmp_path, "train")][:2] == [7, 1]


def test_npy_and_json_members_decode_like_numpy(tmp_path):
    depth = (np.arange(2 * 3 * 5).reshape(2, 3, 5) / 7).astype(">f2")
    members = {}
    for name, array in (("depth.npy", depth), ("fortran.npy", np.asfortranarray(depth.astype("<f4")))):
        buf = io.BytesIO()
        np.save(buf, array)
        members[name] = buf.getvalue()
    members["cameras.json"] = b'{"format": "x",\n "frames": [}'
    path = write_tar(tmp_path / "train-00000.tar", [(f"s_00000.{n}", p) for n, p in members.items()])
    reader = SampleReader(next(index_tar(path)))
    try:
        layout = npy_layout(reader, "depth.npy")
        assert layout.shape == (2, 3, 5) and layout.dtype == np.dtype(">f2")
        frame = np.empty((3, 5), layout.dtype)
        reader.read_into("depth.npy", layout.start + 15 * 2, frame)  # frame 1 only, straight from the tar
        np.testing.assert_array_equal(frame, depth[1])
        with pytest.raises(ShardError, match=r"train-00000\.tar: sample s_00000: fortran\.npy: Fortran-order"):
            npy_layout(reader, "fortran.npy")
        with pytest.raises(ShardError, match=r"train-00000\.tar: sample s_00000: cameras\.json line 2"):
            read_json(reader, "cameras.json")
        with pytest.raises(ShardError, match=r"sample s_00000: missing member s_00000\.mask\.npy"):
            npy_layout(reader, "mask.npy")
    finally:
        reader.close()


# ---- cameras.json: one owner (shardformat.cameras) -------------------------------------------------
def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_cameras_record_round_trips_through_json_and_the_checks():
    from shardformat import ShardError
    from shardformat.cameras import (
        camera_arrays,
        frame_arrays,
        frame_camera,
        frame_coverages,
        parse_cameras,
        sample_cameras,
    )

    K = np.array([[100.0, 0.0, 55.5], [0.0, 90.0, 41.5], [0.0, 0.0, 1.0]])
    frames = [
        frame_camera(
            f"IMG_{i}.JPG",
            7 + i,
            1,
            K,
            _rotation(0.1 * i),
            np.array([0.5, -1.0, 2.0 + i]),
            [640, 480],
            0.25 * i,
            "laser" if i else "sparse",
        )
        for i in range(3)
    ]
    record = json.loads(json.dumps(sample_cameras("hall", "train", 4, "metres", (84, 112), frames)))
    assert list(record) == [
        "format",
        "scene",
        "split",
        "window",
        "depth_source",
        "units",
        "pixel_convention",
        "extrinsics_convention",
        "image_size",
        "frames",
    ]  # the written key order
    assert record["depth_source"] == "mixed" and record["image_size"] == [84, 112]
    cams = parse_cameras(record, "x.tar:hall_00004")
    assert (cams.height, cams.width, len(cams.frames)) == (84, 112, 3)
    K2, Rt = frame_arrays("w", 2, cams.frames[2])
    np.testing.assert_array_equal(K2, K)
    # world point → camera by the stored [R|t] equals R @ X + t computed by hand
    X = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(Rt[:, :3] @ X + Rt[:, 3], _rotation(0.2) @ X + [0.5, -1.0, 4.0], atol=1e-12)
    Ks, Rts = camera_arrays(cams, "w")
    assert Ks.shape == (3, 3, 3) and Rts.shape == (3, 3, 4)
    np.testing.assert_array_equal(Rts[1, :, :3], _rotation(0.1))
    with pytest.raises(ShardError, match="^w: 4 frames asked, the sample has only 3$"):
        camera_arrays(cams, "w", 4)
    assert frame_coverages(record) == [("IMG_0.JPG", 0.0), ("IMG_1.JPG", 0.25), ("IMG_2.JPG", 0.5)]
    assert frame_coverages({}) == []


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda r: r.update(format="other/1"), "cameras.json format 'other/1', expected"),
        (lambda r: r.update(frames=[]), "cameras.json has no 'frames' list or no [H, W] 'image_size'"),
        (lambda r: r.update(image_size=[84]), "cameras.json has no 'frames' list or no [H, W] 'image_size'"),
        (lambda r: r["frames"][0].pop("K"), "cameras.json frame 0: unreadable K/extrinsics"),
        (lambda r: r["frames"][0].update(K=[[1, 0], [0, 1]]), "K (2, 2) / extrinsics (3, 4), expected (3, 3) / (3, 4)"),
        (lambda r: r["frames"][0]["K"][0].__setitem__(0, float("nan")), "non-finite K or extrinsics"),
        (lambda r: r["frames"][0]["K"][2].__setitem__(2, 2.0), "is not a pinhole intrinsic matrix"),
        (lambda r: r["frames"][0]["extrinsics"][0].__setitem__(0, 1.1), "extrinsics rotation is not orthonormal"),
    ],
)
def test_cameras_record_faults_name_the_sample(change, words):
    from shardformat import ShardError
    from shardformat.cameras import frame_arrays, frame_camera, parse_cameras, sample_cameras

    K = np.array([[100.0, 0.0, 55.5], [0.0, 90.0, 41.5], [0.0, 0.0, 1.0]])
    frame = frame_camera("a.JPG", 0, 1, K, np.eye(3), np.zeros(3), [640, 480], 1.0, "laser")
    record = json.loads(json.dumps(sample_cameras("hall", "val", 0, "metres", (84, 112), [frame])))
    change(record)
    with pytest.raises(ShardError, match="^x.tar:hall_00000: ") as info:
        frame_arrays("x.tar:hall_00000", 0, parse_cameras(record, "x.tar:hall_00000").frames[0])
    assert words in str(info.value)
