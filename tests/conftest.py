"""Session-wide fixtures: one small synthetic ETH3D-format scene shared by the test modules."""

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
