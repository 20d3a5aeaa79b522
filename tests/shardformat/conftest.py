"""One shared pair of builds for the views / recipes tests: the session's synthetic scene at 224² (the
DA3 / VGGT and DUSt3R-224 native size, a multiple of 14 and 16) and at 112² (the same, smaller: the resize
rule's reference and the peers' forward passes)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _build(root: Path, out: Path, size: int) -> Path:
    from dataengine.build import build_shards
    from dataengine.config import BuildConfig
    from dataengine.windows import WindowConfig

    if not (out / "manifest.json").exists():
        build_shards(
            BuildConfig(
                root=root,
                out=out,
                scenes=("synth_facade",),
                width=size,
                height=size,
                samples_per_shard=1,
                progress=False,
                windows=WindowConfig(frames=4, stride=4, val_fraction=0.3),
            )
        )
    return out


@pytest.fixture(scope="session")
def shards_224(synth_root, tmp_path_factory) -> Path:
    return _build(synth_root, tmp_path_factory.getbasetemp() / "reuse_shards_224", 224)


@pytest.fixture(scope="session")
def shards_112(synth_root, tmp_path_factory) -> Path:
    return _build(synth_root, tmp_path_factory.getbasetemp() / "reuse_shards_112", 112)
