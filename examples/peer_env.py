"""Importing the peer models' packages (peers.txt) on a CPU-only torch.

`make setup` installs peers.txt into `<venv>/peers`, a folder that is NOT on the interpreter's path:
`activate()` puts it there for the peer tests and examples. Installed into site-packages, torchvision's
CUDA-built wheel beside our CPU torch would break every `import transformers` (which PEFT does for LoRA on
the camera head, strategy C) with "operator torchvision::nms does not exist" — the trainer must never see it.

torchvision is a dependency of all three peers, which use only its pure-Python transforms. The
torchvision wheels on the package index are built against CUDA torch: beside the CPU torch this
project installs, their compiled extension `_C.so` cannot load (it links libtorch_cuda). torchvision
supports that state (`torchvision.extension._has_ops()` is then False and every compiled operator
raises its own "Couldn't load custom C++ ops" error when called), except that torchvision 0.28's
`_meta_registrations.py` registers fake kernels for `torchvision::nms` and `torchvision::qnms`
without checking, which fails with "operator torchvision::nms does not exist" on import.

`import_torchvision()` declares the schemas of those two operators (exactly what the extension's
TORCH_LIBRARY block would declare, no kernel) when, and only when, the extension cannot load; the
import then takes torchvision's own no-extension path. With a matching torchvision (a CUDA torch on a
GPU box) it is a plain import.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_declared: list = []  # the torch.library.Library that holds the declarations must stay alive


def _extension_loads(package_dir: Path) -> bool:
    import torch

    for path in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(path))
            return True
        except (OSError, RuntimeError):
            return False
    return False


PEERS_DIR = Path(sys.prefix) / "peers"  # where `make setup` installs peers.txt (pip --target)
PEER_MODULES = ("depth_anything_3", "moge", "utils3d", "pipeline", "mini_dust3r", "torchvision")


def activate() -> Path:
    """Put the peer packages on sys.path (after site-packages: they never shadow the project's modules)."""
    if not PEERS_DIR.is_dir():
        raise ImportError(f"{PEERS_DIR}: the peer packages are not installed; run `make setup` (peers.txt)")
    if str(PEERS_DIR) not in sys.path:
        sys.path.append(str(PEERS_DIR))
    return PEERS_DIR


def import_torchvision():
    """torchvision, imported on any torch build (module docstring)."""
    activate()
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed: run `make setup` (peers.txt installs it)")
    import torch

    if not _extension_loads(Path(next(iter(spec.submodule_search_locations)))):
        library = torch.library.Library("torchvision", "FRAGMENT")
        for name, schema in _SCHEMAS.items():
            if not hasattr(torch.ops.torchvision, name) or not torch._C._dispatch_has_kernel(f"torchvision::{name}"):
                try:
                    library.define(schema)
                except RuntimeError:
                    pass  # already declared (by an earlier declaration in this process)
        _declared.append(library)
    import torchvision

    return torchvision
