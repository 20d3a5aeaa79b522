"""Session-wide fixtures shared by the test modules: one small synthetic ETH3D-format scene and the shards
the data engine builds from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# numba's on-disk cache defaults to the package folder; keep it out of the source tree.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba_cache"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """An ETH3D root holding one 12-image synthetic scene (`synth_facade`, scale 0.1)."""
    from dataengine.synth import generate_scene

    root = tmp_path_factory.mktemp("synth_eth3d")
    generate_scene(root, scene="synth_facade", images=12, scale=0.1, seed=0)
    return root


SHARD_SIZE = 56  # a multiple of the 14-px patch; small keeps the CPU training tests fast


@pytest.fixture(scope="session")
def engine_shards(tmp_path_factory, synth_root) -> Path:
    """Shards built by the data engine from `synth_root`: 56², 4-frame windows, 1 sample per shard (built
    once per session for the trainer and shard-format tests)."""
    from dataengine.build import build_shards
    from dataengine.config import BuildConfig
    from dataengine.windows import WindowConfig

    out = tmp_path_factory.mktemp("engine_shards")
    build_shards(
        BuildConfig(
            root=synth_root,
            out=out,
            scenes=("synth_facade",),
            width=SHARD_SIZE,
            height=SHARD_SIZE,
            samples_per_shard=1,
            progress=False,
            windows=WindowConfig(frames=4, stride=2, val_fraction=0.3),
        )
    )
    return out


@pytest.fixture(scope="session")
def shards(engine_shards) -> Path:
    return engine_shards
