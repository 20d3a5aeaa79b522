"""Bad inputs, faults and operator errors through the real trainer CLI (`python -m trainer` in a fresh
interpreter): each ends in one `Error: ...` line naming the file (and sample key), a non-zero exit, no
traceback, and nothing written that claims a finished run.

The cases run in a module fixture, two subprocesses at a time; each test then checks one case.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"
FAST = ["--set", "data.frames=2 data.num_workers=0 val_every=0 save_every=0 log_every=1"]


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # One thread per process: two run at once, and spinning OpenMP threads crawl on a loaded box.
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("TRAINER_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "trainer", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=300,
    )


def train_args(shards: Path, out: Path, strategy: str = "b", *more: str) -> list[str]:
    return [
        "train",
        "--config",
        ROOT / "configs" / f"strategy_{strategy}.yaml",
        "--shards",
        shards,
        "--model",
        "tiny",
        "--weights",
        TINY,
        "--out",
        out,
        "--max-steps",
        "2",
        *FAST,
        *more,
    ]


# ------------------------------------------------------------------------------------------ corrupting shards


def copy_shards(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in dst.iterdir():
        path.chmod(0o644)
    return dst


def first_train_shard(shards: Path) -> Path:
    return sorted(shards.glob("train-*.tar"))[0]


def member_range(tar_path: Path, suffix: str) -> tuple[str, int, int]:
    """(sample key, data offset, size) of the first member named <key>.<suffix>."""
    with tarfile.open(tar_path) as tar:
        for m in tar:
            if m.name.endswith("." + suffix):
                return m.name.split(".", 1)[0], m.offset_data, m.size
    raise AssertionError(f"{tar_path} has no {suffix}")


def patch_member(tar_path: Path, suffix: str, edit) -> str:
    """Rewrite a member in place (same length: the tar and its size stay valid); returns the sample key."""
    key, offset, size = member_range(tar_path, suffix)
    with open(tar_path, "r+b") as f:
        f.seek(offset)
        data = f.read(size)
        new = edit(data)
        assert len(new) == len(data)
        f.seek(offset)
        f.write(new)
    return key


def edit_npy(edit):
    """An in-place edit of a .npy payload's array (frame 0 first)."""

    def apply(data: bytes) -> bytes:
        header = 10 + int.from_bytes(data[8:10], "little")
        array = np.load(__import__("io").BytesIO(data)).copy()
        edit(array)
        return data[:header] + array.tobytes()

    return apply


def edit_depth_and_mask(tar_path: Path) -> str:
    """A supervised pixel loses its depth but keeps mask 1: the mask no longer says where depth is."""
    key, moff, msize = member_range(tar_path, "mask.npy")
    with open(tar_path, "rb") as f:
        f.seek(moff)
        mask = np.load(__import__("io").BytesIO(f.read(msize)))
    index = np.flatnonzero(mask[0])[0]
    return patch_member(tar_path, "depth.npy", edit_npy(lambda a: a[0].reshape(-1).__setitem__(index, 0.0)))


def edit_json_number(field: str, replace):
    """Replace the first number of `"field"` in cameras.json, padded to the same length."""

    def apply(data: bytes) -> bytes:
        text = data.decode()
        start = text.index(f'"{field}"') + len(field) + 2
        while text[start] not in "-0123456789":
            start += 1
        end = start
        while text[end] not in ",]":
            end += 1
        new = replace(text[start:end])
        assert len(new) <= end - start, (new, text[start:end])
        return (text[:start] + new.ljust(end - start) + text[end:]).encode()

    return apply


# ------------------------------------------------------------------------------------------ the cases


@pytest.fixture(scope="module")
def world(tmp_path_factory, engine_shards):
    """Good shards and two finished tiny runs (strategies A and B) to corrupt or misuse."""
    shards = engine_shards
    work = tmp_path_factory.mktemp("bad_inputs")
    runs = {}
    with ThreadPoolExecutor(2) as pool:
        jobs = {s: pool.submit(cli, *train_args(shards, work / f"run_{s}", s)) for s in ("a", "b")}
        for s, job in jobs.items():
            proc = job.result()
            assert proc.returncode == 0, proc.stderr[-3000:]
            runs[s] = work / f"run_{s}"
    return {"shards": shards, "work": work, "runs": runs}


def _cases(w) -> dict[str, dict]:
    """name -> {args, env, expect: substrings of the Error line, out: the --out that must not claim success}."""
    shards, work, runs = w["shards"], w["work"], w["runs"]
    cases: dict[str, dict] = {}

    def add(name, args, expect, out=None, env=None):
        cases[name] = {"args": args, "expect": expect, "out": out, "env": env}

    def corrupted(name, corrupt) -> tuple[Path, object]:
        dst = copy_shards(shards, work / f"shards_{name}")
        return dst, corrupt(dst)

    def out(name):
        return work / f"out_{name}"

    add(
        "shards_missing",
        train_args(work / "nosuch", out("shards_missing")),
        ["nosuch", "does not exist"],
        out("shards_missing"),
    )
    only_val, _ = corrupted("no_train", lambda d: [p.unlink() for p in d.glob("train-*.tar")])
    add(
        "no_train_split",
        train_args(only_val, out("no_train")),
        [str(only_val), "no 'train-*.tar' shards"],
        out("no_train"),
    )

    def empty_split(d):
        (d / "manifest.json").unlink()
        for p in d.glob("train-*.tar"):
            with tarfile.open(p, "w"):
                pass

    empty, _ = corrupted("empty", empty_split)
    add("empty_train_split", train_args(empty, out("empty")), ["'train' split holds 0 samples"], out("empty"))

    def zero_coverage(d):
        manifest = json.loads((d / "manifest.json").read_text())
        for scene in manifest["per_scene"].values():
            scene["mean_coverage"] = 0.0
        (d / "manifest.json").write_text(json.dumps(manifest))

    zero, _ = corrupted("zero_cov", zero_coverage)
    add("no_supervised_pixel", train_args(zero, out("zero_cov")), ["manifest.json", "coverage 0"], out("zero_cov"))

    for name, value, words in (
        ("depth_nan", np.nan, "non-finite"),
        ("depth_1e30", 1e30, "outside"),
        ("depth_negative", -2.0, "outside"),
        ("depth_inf", -np.inf, "non-finite"),
    ):
        d, key = corrupted(
            name,
            lambda d, v=value: patch_member(
                first_train_shard(d), "depth.npy", edit_npy(lambda a: a[0].reshape(-1).__setitem__(7, v))
            ),
        )
        add(name, train_args(d, out(name)), [first_train_shard(d).name, key, "depth.npy frame 0", words], out(name))
    d, key = corrupted("mask", lambda d: edit_depth_and_mask(first_train_shard(d)))
    add(
        "mask_disagrees_with_depth",
        train_args(d, out("mask")),
        [first_train_shard(d).name, key, "mask.npy"],
        out("mask"),
    )
    d, key = corrupted(
        "k_nan", lambda d: patch_member(first_train_shard(d), "cameras.json", edit_json_number("K", lambda s: "NaN"))
    )
    add("intrinsics_nan", train_args(d, out("k_nan")), [first_train_shard(d).name, key, "non-finite K"], out("k_nan"))
    d, key = corrupted(
        "rot",
        lambda d: patch_member(first_train_shard(d), "cameras.json", edit_json_number("extrinsics", lambda s: "1.34")),
    )
    add(
        "rotation_not_orthonormal",
        train_args(d, out("rot")),
        [first_train_shard(d).name, key, "not orthonormal"],
        out("rot"),
    )
    d, key = corrupted("json", lambda d: patch_member(first_train_shard(d), "cameras.json", lambda b: b"[" + b[1:]))
    add(
        "cameras_json_broken",
        train_args(d, out("json")),
        [first_train_shard(d).name, key, "cameras.json line"],
        out("json"),
    )
    d, _ = corrupted("trunc", lambda d: os.truncate(first_train_shard(d), first_train_shard(d).stat().st_size - 1024))
    add(
        "shard_truncated",
        train_args(d, out("trunc")),
        [first_train_shard(d).name, "manifest.json records"],
        out("trunc"),
    )
    d, _ = corrupted("sha", lambda d: patch_member(first_train_shard(d), "f1.jpg", lambda b: b[:-3] + b"\0\0\0"))
    add(
        "shard_modified_verify",
        train_args(d, out("sha"), "b", "--verify-shards"),
        [first_train_shard(d).name, "sha256 differs"],
        out("sha"),
    )
    d, _ = corrupted("stray", lambda d: shutil.copy(first_train_shard(d), d / "train-09999.tar"))
    add("stray_shard", train_args(d, out("stray")), ["train-09999.tar", "not listed"], out("stray"))

    a_file = work / "a_file"
    a_file.write_text("x")
    add("out_is_a_file", train_args(shards, a_file), [str(a_file), "is a file"])
    add("out_under_a_file", train_args(shards, a_file / "run"), [str(a_file), "not writable"])
    args = train_args(shards, out("weights"))
    args[args.index("--weights") + 1] = work / "nosuch.safetensors"
    add("weights_missing", args, ["nosuch.safetensors", "--weights"], out("weights"))
    args = train_args(work / "nosuch", out("order"))
    args[args.index("--weights") + 1] = "facebook/VGGT-1B"
    add("no_shards_before_download", args, ["nosuch", "does not exist"], out("order"))
    args = train_args(shards, out("offline"))
    args[args.index("--weights") + 1] = "facebook/VGGT-1B"
    add(
        "hub_offline",
        args,
        ["facebook/VGGT-1B", "--weights /path/to/model.pt", "WEIGHTS="],
        out("offline"),
        env={"HF_HOME": str(work / "hf_home")},
    )
    add("config_unknown_key", train_args(shards, out("key"), "b", "lrr=1"), ["unknown key 'lrr'"], out("key"))
    add(
        "lora_target_matches_nothing",
        train_args(shards, out("lora"), "b", r"lora.targets=[nosuch\..*]"),
        ["lora.targets", "nosuch", "match no nn.Linear/nn.Conv2d module"],
        out("lora"),
    )

    other, _ = corrupted(
        "other",
        lambda d: (d / "manifest.json").write_text(
            (d / "manifest.json").read_text().replace('"scenes"', '"comment": "another build", "scenes"', 1)
        ),
    )
    add(
        "resume_other_shards",
        ["train", "--shards", other, "--out", runs["b"], "--max-steps", "3", "--resume"],
        ["trainer_state.pt", str(other), "manifest.json differs"],
    )
    broken = work / "run_pointer"
    shutil.copytree(runs["b"], broken)
    shutil.rmtree(broken / "adapter")
    (broken / "checkpoints" / "latest").write_text("step_0000099\n")
    add(
        "resume_pointer_names_nothing",
        ["train", "--shards", shards, "--out", broken, "--max-steps", "3", "--resume"],
        ["latest", "step_0000099", "trainer_state.pt"],
    )

    no_adapter = work / "run_no_adapter"
    no_adapter.mkdir()
    shutil.copy(runs["b"] / "config.yaml", no_adapter / "config.yaml")
    add(
        "eval_run_without_adapter",
        ["eval", "--shards", shards, "--run", no_adapter, "--device", "cpu", "--out", work / "eval_none"],
        [str(no_adapter), "saved an adapter"],
    )
    mixed = work / "adapter_mixed"
    shutil.copytree(runs["b"] / "adapter", mixed)
    shutil.copy(runs["a"] / "adapter" / "adapter_model.safetensors", mixed / "adapter_model.safetensors")
    add(
        "eval_adapter_weights_of_another_run",
        ["eval", "--shards", shards, "--adapter", mixed, "--device", "cpu", "--out", work / "eval_mixed"],
        ["adapter_model.safetensors", "adapter_config.json", "missing"],
    )
    add(
        "eval_max_batches_0",
        ["eval", "--shards", shards, "--run", runs["b"], "--max-batches", "0", "--out", work / "eval_zero"],
        ["'--max-batches'", "0 is not in the range x>=1"],
    )
    add(
        "eval_device_not_on_this_machine",
        ["eval", "--shards", shards, "--run", runs["b"], "--device", "cuda:99", "--out", work / "eval_cuda"],
        ["'--device'", "cuda:99", "usable CUDA"],
    )
    add(
        "memory_frames_0",
        ["memory", "--config", ROOT / "configs" / "strategy_b.yaml", "--model", "tiny", "--frames", "0"],
        ["'--frames'", "0 is not in the range x>=1"],
    )
    add(
        "export_under_a_file",
        ["export", "--run", runs["b"], "--out", a_file / "m.safetensors"],
        [str(a_file), "choose another --out"],
    )
    add("export_not_safetensors", ["export", "--run", runs["b"], "--out", work / "m.bin"], ["m.bin", ".safetensors"])
    add(
        "export_run_without_adapter",
        ["export", "--run", no_adapter, "--out", work / "none.safetensors"],
        [str(no_adapter), "checkpoint"],
    )
    add("push_offline", ["push", "--run", runs["b"], "--repo-id", "someone/x"], ["HF_HUB_OFFLINE is set"])
    add(
        "push_without_token",
        ["push", "--run", runs["b"], "--repo-id", "someone/x"],
        ["hf auth login"],
        env={"HF_HUB_OFFLINE": "0", "HF_HOME": str(work / "hf_home"), "HF_TOKEN": ""},
    )
    add(
        "push_hub_unreachable",
        ["push", "--run", runs["b"], "--repo-id", "someone/x"],
        ["cannot reach"],
        env={
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(work / "hf_home"),
            "HF_TOKEN": "hf_fake",
            "HF_ENDPOINT": "http://127.0.0.1:9",
        },
    )  # loopback, a closed port: never the real network
    return cases


CASE_NAMES = [
    "shards_missing",
    "no_train_split",
    "empty_train_split",
    "no_supervised_pixel",
    "depth_nan",
    "depth_1e30",
    "depth_negative",
    "depth_inf",
    "mask_disagrees_with_depth",
    "intrinsics_nan",
    "rotation_not_orthonormal",
    "cameras_json_broken",
    "shard_truncated",
    "shard_modified_verify",
    "stray_shard",
    "out_is_a_file",
    "out_under_a_file",
    "weights_missing",
    "no_shards_before_download",
    "hub_offline",
    "config_unknown_key",
    "lora_target_matches_nothing",
    "eval_max_batches_0",
    "eval_device_not_on_this_machine",
    "memory_frames_0",
    "resume_other_shards",
    "resume_pointer_names_nothing",
    "eval_run_without_adapter",
    "eval_adapter_weights_of_another_run",
    "export_under_a_file",
    "export_not_safetensors",
    "export_run_without_adapter",
    "push_offline",
    "push_without_token",
    "push_hub_unreachable",
]


@pytest.fixture(scope="module")
def results(world):
    cases = _cases(world)
    assert sorted(cases) == sorted(CASE_NAMES)
    with ThreadPoolExecutor(2) as pool:
        procs = {name: pool.submit(cli, *c["args"], env=c["env"]) for name, c in cases.items()}
        return {name: (cases[name], job.result()) for name, job in procs.items()}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_error_line(results, name):
    case, proc = results[name]
    assert proc.returncode != 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr[-3000:]
    for word in case["expect"]:
        assert word in errors[0], (word, errors[0])
    out = case["out"]
    if out is not None:  # nothing that claims a finished (or any) run
        assert not (out / "adapter").exists() and not (out / "checkpoints" / "latest").exists()
        log = out / "train.log"
        assert not log.exists() or log.stat().st_size > 0  # never an empty log
        metrics = out / "metrics.jsonl"
        assert not metrics.exists() or not metrics.read_text().strip()


def test_cheap_checks_come_before_the_download(results):
    """`make train` without shards: the shards are reported, the hub is never asked, no run dir is left."""
    case, proc = results["no_shards_before_download"]
    assert "VGGT-1B" not in proc.stderr and not case["out"].exists()
    assert not results["hub_offline"][0]["out"].exists()  # weights are checked before the run dir exists
