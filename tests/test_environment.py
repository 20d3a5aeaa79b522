"""The environment `make setup` builds: the trainer's imports work, and the peer packages the reference
tests run (peers.txt) are installed but kept off the trainer's path."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from examples.peer_env import PEER_MODULES, activate


def test_trainer_imports_do_not_see_the_peer_packages():
    # PEFT imports transformers for LoRA on nn.Linear heads (strategy C); transformers probes torchvision, and
    # the index's CUDA-built torchvision beside our CPU torch breaks that import: it must not be on the path.
    code = (
        "import importlib.util, peft\n"
        "from transformers import PreTrainedModel\n"
        "print([m for m in ('torchvision', 'depth_anything_3', 'moge', 'mini_dust3r') if importlib.util.find_spec(m)])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_peer_packages_are_installed_for_the_reference_tests():
    activate()
    missing = [m for m in PEER_MODULES if importlib.util.find_spec(m) is None]
    assert not missing, f"peers.txt packages missing from the peers folder: {missing}; run `make setup`"
