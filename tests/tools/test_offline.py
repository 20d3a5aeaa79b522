"""tools/offline.py without a network: platform tags, marker environments, the dependency walk that keeps
torch's CUDA stack out of a wheelhouse, constraints and the setup-system report."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("offline", ROOT / "tools" / "offline.py")
offline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(offline)


def test_platform_expansion_covers_older_glibc_tags():
    tags = offline.expand_platform("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert {"manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_29_x86_64" not in tags and len(tags) == len(set(tags)) == 24 + 3
    assert offline.expand_platform("manylinux_2_12_aarch64")[-2:] == ["manylinux2010_aarch64", "manylinux1_aarch64"]
    assert "manylinux2014_aarch64" not in offline.expand_platform("manylinux_2_12_aarch64")
    assert offline.expand_platform("win_amd64") == ["win_amd64"]


def test_target_environment_is_the_target_not_this_interpreter():
    env = offline.target_environment("3.12", "manylinux_2_28_x86_64")
    assert env["python_version"] == "3.12" and env["python_full_version"] == "3.12.0"
    assert env["sys_platform"] == "linux" and env["platform_machine"] == "x86_64"
    assert offline.target_environment("3.11.4", "manylinux_2_17_aarch64")["platform_machine"] == "aarch64"
    assert offline.target_environment("3.12", "win_amd64")["sys_platform"] == "win32"


def item(name, version, *requires):
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


REPORT = {
    "install": [
        item(
            "vggt-eth3d-lora",
            "0.1.0",
            "torch>=2.4",
            "peft>=0.13",
            "tomli; python_version < '3.11'",
            "numba>=0.60; extra == 'engine'",
            "py7zr; extra == 'download'",
            "pywin32; sys_platform == 'win32'",
        ),
        item(
            "torch",
            "2.13.0",
            "filelock",
            "sympy>=1.13",
            "nvidia-cublas-cu12; platform_machine == 'x86_64'",
            "triton==3.5; platform_system == 'Linux'",
        ),
        item("peft", "0.21.0", "torch>=1.13", "huggingface_hub[hf_xet]>=0.25", "packaging"),
        item("huggingface-hub", "2.4.0", "filelock", "hf-xet; extra == 'hf_xet'", "rich; extra == 'cli'"),
        item("hf_xet", "1.8.0"),
        item("filelock", "4.3.2"),
        item("packaging", "26.4"),
        item("sympy", "1.14"),
        item("mpmath", "1.3"),
        item("nvidia-cublas-cu12", "12.9"),
        item("triton", "3.5"),
        item("numba", "0.68.1", "llvmlite==0.50.*"),
        item("llvmlite", "0.50.0"),
        item("py7zr", "1.0"),
        item("rich", "15.0"),
        item("tomli", "2.0"),
    ]
}


def test_closure_keeps_shared_dependencies_and_drops_what_only_torch_needs():
    env = offline.target_environment("3.12", "manylinux_2_28_x86_64")
    pins = offline.closure(["vggt-eth3d-lora[engine]"], offline.report_lookup(REPORT), env)
    assert pins == {
        "vggt-eth3d-lora": "0.1.0",
        "peft": "0.21.0",
        "huggingface-hub": "2.4.0",
        "hf-xet": "1.8.0",
        "filelock": "4.3.2",
        "packaging": "26.4",
        "numba": "0.68.1",
        "llvmlite": "0.50.0",
    }
    # Markers follow the target: Python 3.10 needs tomli; no extra, no numba.
    env310 = offline.target_environment("3.10", "linux_x86_64")
    old = offline.closure(["vggt-eth3d-lora"], offline.report_lookup(REPORT), env310)
    assert "tomli" in old and "numba" not in old and "torch" not in old and "sympy" not in old
    # Extras reached later still add their edges (huggingface_hub first without, then with [cli]).
    both = offline.closure(["huggingface_hub", "huggingface_hub[cli]"], offline.report_lookup(REPORT), env)
    assert set(both) == {"huggingface-hub", "filelock", "rich"}
    with pytest.raises(offline.OfflineError, match="missing from the resolution"):
        offline.closure(["unknown-package"], offline.report_lookup(REPORT), env)


def test_skipped_distributions_and_what_only_they_need_stay_out():
    env = offline.target_environment("3.12", "manylinux_2_28_x86_64")
    lookup = offline.report_lookup(REPORT)
    pins = offline.closure(["vggt-eth3d-lora[engine]"], lookup, env, exclude=offline.wheelhouse_exclude(["PEFT"]))
    # peft's own dependencies go with it (filelock is otherwise needed only by torch); numba stays.
    assert pins == {"vggt-eth3d-lora": "0.1.0", "numba": "0.68.1", "llvmlite": "0.50.0"}
    assert offline.wheelhouse_exclude()("nvidia-cublas-cu12") and not offline.wheelhouse_exclude()("numba")


def test_constraints_pin_the_cuda_stack_and_report_classifies():
    installed = {
        "torch": "2.11.0+cu130",
        "nvidia-cudnn-cu13": "9.13",
        "triton": "3.5.0",
        "numpy": "2.3.0",
        "cuda-bindings": "13.0.1",
        "torchvision": "0.26",
    }
    assert offline.constraints_for(installed) == [
        "cuda-bindings==13.0.1",
        "nvidia-cudnn-cu13==9.13",
        "torch==2.11.0+cu130",
        "triton==3.5.0",
    ]
    needed = {"torch": "x", "numpy": "x", "webdataset": "x", "peft": "x", "gone": "x"}
    before = {"torch": "2.11", "numpy": "2.3.0", "peft": "0.13"}
    after = {"torch": "2.11", "numpy": "2.3.0", "peft": "0.21", "webdataset": "1.0.2"}
    assert offline.classify(needed, before, after) == {
        "installed": ["webdataset 1.0.2"],
        "changed": ["peft 0.13 -> 0.21"],
        "kept": ["numpy 2.3.0", "torch 2.11"],
        "missing": ["gone"],
    }


def test_setup_system_refuses_an_empty_wheelhouse_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "offline.py"), "setup-system", "--wheelhouse", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Error: {tmp_path} holds no vggt_eth3d_lora-*.whl: run `make wheelhouse` on a machine with an index "
        "and copy the folder here"
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "offline.py"), "setup-system", "--wheelhouse", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("Error: ") and "is not a folder" in proc.stderr
