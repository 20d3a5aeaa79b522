"""Behaviour fingerprint for refactors: shard sha256s of fixed builds and CPU loss lists of fixed runs.

Everything goes through the public CLIs in subprocesses, so the fingerprint of two commits can be
compared whatever moved inside the packages:

    python benchmarks/fingerprint.py --work /tmp/fp --json before.json      # on the old commit
    python benchmarks/fingerprint.py --work /tmp/fp --json after.json --compare before.json

Exit status 1 when --compare finds any difference (a shard byte or a loss value).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"

# (name, build arguments) over the two synthetic scenes; each exercises other engine paths.
BUILDS = [
    ("default_518", ["--size", "518"]),
    ("pad_112_sparse", ["--size", "112", "--fit", "pad", "--depth", "sparse", "--frames", "4", "--stride", "2"]),
    (
        "stretch_140_median_valscene",
        [
            "--size",
            "140",
            "--fit",
            "stretch",
            "--pooling",
            "median",
            "--frames",
            "4",
            "--stride",
            "3",
            "--val-scenes",
            "fp_b",
            "--depth-dtype",
            "float16",
            "--samples-per-shard",
            "2",
        ],
    ),
]
STRATEGIES = ["a", "b", "c"]


def _run(cmd: list[str], **kw) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, **kw)


GIT_SHA = re.compile(rb"[0-9a-f]{40}(-dirty)?")


def sha256_tree(folder: Path) -> dict[str, str]:
    """sha256 of every file; in the text files the engine's git sha is masked (it names the commit, not the
    behaviour). Tar bytes are hashed as they are."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix in (".json", ".md"):
                data = GIT_SHA.sub(b"<git>", data)
            out[str(p.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return out


def fingerprint(work: Path, reuse: bool = False) -> dict:
    """reuse: keep what an earlier (interrupted) run of the same commit left in `work` and only run the
    steps whose output folder is missing."""
    py = sys.executable
    if not reuse:
        shutil.rmtree(work, ignore_errors=True)

    def run(cmd: list[str], dest: Path | None = None) -> None:
        if reuse and dest is not None and dest.exists():
            return
        if dest is not None:
            shutil.rmtree(dest, ignore_errors=True)
        _run(cmd)

    scenes = work / "eth3d"
    run(
        [
            py,
            "-m",
            "dataengine",
            "synth",
            str(scenes),
            "--scene",
            "fp_a",
            "--images",
            "12",
            "--scale",
            "0.1",
            "--seed",
            "0",
        ],
        scenes / "fp_a",
    )
    run(
        [
            py,
            "-m",
            "dataengine",
            "synth",
            str(scenes),
            "--scene",
            "fp_b",
            "--images",
            "10",
            "--scale",
            "0.1",
            "--seed",
            "1",
        ],
        scenes / "fp_b",
    )
    out: dict = {"shards": {}, "losses": {}}
    for name, args in BUILDS:
        dest = work / "shards" / name
        run(
            [
                py,
                "-m",
                "dataengine",
                "build",
                "--root",
                str(scenes),
                "--out",
                str(dest),
                "--scenes",
                "fp_a,fp_b",
                "--workers",
                "2",
                "--quiet",
                *args,
            ],
            dest,
        )
        out["shards"][name] = sha256_tree(dest)
    # The COLMAP capture path (distorted photos, MVS depth, covisible windows) and an evaluation build.
    colmap = work / "colmap"
    run(
        [py, "-m", "dataengine", "synth", "--format", "colmap", str(colmap), "--scene", "fp_c"]
        + ["--images", "10", "--scale", "0.1", "--seed", "2"],
        colmap / "fp_c",
    )
    for name, root, args in [
        ("colmap_covisible_112", colmap, ["--format", "colmap", "--windows", "covisible", "--frames", "4"]),
        ("eval_uniform_112", scenes, ["--scenes", "fp_a,fp_b", "--sampling", "uniform", "--frames", "6"]),
    ]:
        dest = work / "shards" / name
        run(
            [py, "-m", "dataengine", "build", "--root", str(root), "--out", str(dest), "--size", "112"]
            + ["--workers", "2", "--quiet", "--samples-per-shard", "1", *args],
            dest,
        )
        out["shards"][name] = sha256_tree(dest)
    shards = work / "shards" / "pad_112_sparse"
    for strategy in STRATEGIES:
        run_dir = work / "runs" / strategy
        run(
            [
                py,
                "-m",
                "trainer",
                "train",
                "--config",
                f"configs/strategy_{strategy}.yaml",
                "--shards",
                str(shards),
                "--model",
                "tiny",
                "--weights",
                str(TINY),
                "--out",
                str(run_dir),
                "--max-steps",
                "12",
                "--set",
                "precision=fp32",
                "data.num_workers=0",
                "data.frames=4",
                "optim.accum_steps=2",
                "log_every=1",
                "val_every=6",
                "save_every=6",
                "optim.lr=1e-3",
            ],
            run_dir,
        )
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        out["losses"][strategy] = [{k: v for k, v in r.items() if "loss" in k or k == "step"} for r in records]
    # Evaluation: the window report of run b and the published protocols (base + adapter), as numbers.
    out["eval"] = {}
    evals = [
        ("window_b", ["--shards", str(shards), "--split", "val", "--run", str(work / "runs" / "b")]),
        (
            "protocols_b",
            ["--shards", str(work / "shards" / "eval_uniform_112"), "--protocol", "all"]
            + ["--run", str(work / "runs" / "b")],
        ),
    ]
    for name, args in evals:
        dest = work / "eval" / name
        run([py, "-m", "trainer", "eval", *args, "--device", "cpu", "--max-pictures", "1", "--out", str(dest)], dest)
        out["eval"][name] = _numbers(json.loads((dest / "metrics.json").read_text()))
    return out


def _numbers(obj, prefix: str = "") -> dict:
    """The numeric leaves of a metrics.json by path (paths, timings and versions left out)."""
    flat = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            flat.update(_numbers(v, f"{prefix}{k}/"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            flat.update(_numbers(v, f"{prefix}{i}/"))
    elif isinstance(obj, int | float) and not isinstance(obj, bool) and "time" not in prefix and "_s/" not in prefix:
        flat[prefix.rstrip("/")] = obj
    return flat


def compare(a: dict, b: dict) -> list[str]:
    diffs = []
    for name in sorted(set(a["shards"]) | set(b["shards"])):
        fa, fb = a["shards"].get(name, {}), b["shards"].get(name, {})
        for f in sorted(set(fa) | set(fb)):
            if fa.get(f) != fb.get(f):
                diffs.append(f"shards {name}/{f}: {fa.get(f)} != {fb.get(f)}")
    for s in sorted(set(a["losses"]) | set(b["losses"])):
        if a["losses"].get(s) != b["losses"].get(s):
            diffs.append(f"losses strategy {s}: {a['losses'].get(s)} != {b['losses'].get(s)}")
    for name in sorted(set(a.get("eval", {})) | set(b.get("eval", {}))):
        ea, eb = a.get("eval", {}).get(name, {}), b.get("eval", {}).get(name, {})
        for k in sorted(set(ea) | set(eb)):
            if ea.get(k) != eb.get(k):
                diffs.append(f"eval {name}/{k}: {ea.get(k)} != {eb.get(k)}")
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "fingerprint")
    ap.add_argument("--json", type=Path, required=True, help="write the fingerprint here")
    ap.add_argument("--compare", type=Path, help="a fingerprint JSON to compare with")
    ap.add_argument("--reuse", action="store_true", help="keep --work's finished steps (same commit only)")
    args = ap.parse_args()
    fp = fingerprint(args.work, reuse=args.reuse)
    args.json.write_text(json.dumps(fp, indent=1, sort_keys=True) + "\n")
    n_files = sum(len(v) for v in fp["shards"].values())
    print(
        f"fingerprint: {n_files} shard files in {len(fp['shards'])} builds, "
        f"{sum(len(v) for v in fp['losses'].values())} loss records, "
        f"{sum(len(v) for v in fp['eval'].values())} evaluation numbers -> {args.json}"
    )
    if args.compare:
        diffs = compare(json.loads(args.compare.read_text()), fp)
        for d in diffs:
            print("DIFF", d)
        print("identical" if not diffs else f"{len(diffs)} differences")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
