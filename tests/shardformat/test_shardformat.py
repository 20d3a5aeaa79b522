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
from tests.trainer.test_data import engine_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory, request) -> Path:
    return engine_shards(tmp_path_factory, request)


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
