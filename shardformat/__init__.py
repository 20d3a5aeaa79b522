"""A reader for the shard format `eth3d-vggt-shards/1` (shards/README.md).

The one place that names the members and reads the format: the data engine (writer, `verify`,
`inspect`) and the trainer's loader both use it, and never import each other. numpy only; JPEG
decoding stays with the callers.

- names: the format tag, member names, the sample-key rules, shard file names
- cameras: cameras.json, the per-sample camera record (built by the engine, checked by every reader)
- tarindex: samples of a tar from its 512-byte headers, grouped exactly as webdataset groups them
- manifest: manifest.json as `dataengine build` writes it
- members: payload access (pread) and .npy/.json member decoding
- depth_range: the depth values a shard may hold (one rule for writer, verify and trainer)
"""

from shardformat.cameras import (
    SampleCameras,
    frame_arrays,
    frame_camera,
    frame_coverages,
    parse_cameras,
    sample_cameras,
)
from shardformat.depth_range import MAX_DEPTH, depth_range_problem
from shardformat.manifest import ManifestShard, manifest_shards, read_manifest
from shardformat.members import NpyLayout, SampleReader, npy_layout, read_json
from shardformat.names import (
    CAMERAS,
    DEPTH,
    FORMAT,
    KEY_RE,
    MASK,
    SHARD_RE,
    ShardError,
    frame_member,
    sample_suffixes,
    shard_name,
    split_member_name,
)
from shardformat.tarindex import TarRange, count_samples, index_tar, record_suffixes, suffixes_by_key

__all__ = [
    "CAMERAS",
    "DEPTH",
    "FORMAT",
    "KEY_RE",
    "MASK",
    "MAX_DEPTH",
    "SHARD_RE",
    "ManifestShard",
    "SampleCameras",
    "NpyLayout",
    "SampleReader",
    "ShardError",
    "TarRange",
    "camera_arrays",
    "count_samples",
    "depth_range_problem",
    "frame_arrays",
    "frame_camera",
    "frame_coverages",
    "frame_member",
    "index_tar",
    "manifest_shards",
    "npy_layout",
    "parse_cameras",
    "read_json",
    "read_manifest",
    "record_suffixes",
    "sample_cameras",
    "sample_suffixes",
    "shard_name",
    "split_member_name",
    "suffixes_by_key",
]
