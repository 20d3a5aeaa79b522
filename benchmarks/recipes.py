"""Recipe overhead: samples/s of `shardformat.views.read` alone and followed by each recipe, in one run.

The dataset is the synthetic facade (dataengine.synth, --scale) built at --size with 8-frame windows, one
sample per shard, its shards hard-linked --samples times (same bytes, warm page cache). Configurations
are interleaved --repeats times (the machine is shared: best and median are reported with the load
average). The overhead of a recipe is 1 − rate(read + recipe) / rate(read). The compact rows are the
loader's part of the default path (compact=True); their `finish` runs on the training device.

    NUMBA_CACHE_DIR=.numba_cache .venv/bin/python benchmarks/recipes.py [--size 448] [--samples 24]
        [--repeats 5] [--work build/bench/recipes] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

from shardformat import views
from shardformat.recipes import for_model

RECIPES = {
    "read only": None,
    "da3 (compact)": lambda s: for_model("da3", s, compact=True),
    "moge (compact)": lambda s: for_model("moge", s, compact=True),
    "dust3r (compact)": lambda s: for_model("dust3r", s, pairs="adjacent", compact=True),
    "da3": lambda s: for_model("da3", s),
    "da3 (uint8 images)": lambda s: for_model("da3", s, images="uint8"),
    "moge": lambda s: for_model("moge", s),
    "moge (no normals)": lambda s: for_model("moge", s, normals=False),
    "dust3r (adjacent pairs)": lambda s: for_model("dust3r", s, pairs="adjacent"),
}


def build(work: Path, size: int, scale: float, samples: int) -> Path:
    from dataengine.build import build_shards
    from dataengine.config import BuildConfig
    from dataengine.synth import generate_scene
    from dataengine.windows import WindowConfig

    root, shards = work / "eth3d", work / f"shards_{size}"
    if not (root / "bench_facade").exists():
        generate_scene(root, scene="bench_facade", images=8, scale=scale, seed=0)
    if not (shards / "manifest.json").exists():
        build_shards(
            BuildConfig(
                root=root,
                out=shards,
                scenes=("bench_facade",),
                width=size,
                height=size,
                samples_per_shard=1,
                progress=False,
                windows=WindowConfig(frames=8, stride=8, val_fraction=0.0),
            )
        )
    replicated = work / f"replicated_{size}"
    shutil.rmtree(replicated, ignore_errors=True)
    replicated.mkdir()
    source = sorted(shards.glob("train-*.tar"))[0]
    for i in range(samples):
        os.link(source, replicated / f"train-{i:05d}.tar")
    return replicated


def rate(tars: list[Path], recipe) -> float:
    t0 = time.perf_counter()
    for tar in tars:
        for sample in views.read(tar):
            if recipe is not None:
                recipe(sample)
    return len(tars) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=448, help="a multiple of 14 and 16 (every recipe takes it)")
    parser.add_argument("--scale", type=float, default=0.15)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path("build/bench/recipes"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    tars = sorted(build(args.work, args.size, args.scale, args.samples).glob("*.tar"))
    rate(tars[:2], None)  # warm-up: page cache, imports
    rates: dict[str, list[float]] = {name: [] for name in RECIPES}
    loads = []
    for _ in range(args.repeats):
        for name, recipe in RECIPES.items():
            rates[name].append(rate(tars, recipe))
            loads.append(os.getloadavg()[0])
    base_best, base_median = max(rates["read only"]), statistics.median(rates["read only"])
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{min(loads):.1f}-{max(loads):.1f} during the run; 8 frames of {args.size}², {len(tars)} samples, "
        f"{args.repeats} interleaved repeats"
    )
    results = {"size": args.size, "samples": len(tars), "repeats": args.repeats, "load": [min(loads), max(loads)]}
    for name, values in rates.items():
        best, median = max(values), statistics.median(values)
        overhead = {"best": 1 - best / base_best, "median": 1 - median / base_median}
        results[name] = {"best": best, "median": median, "overhead": overhead}
        extra = (
            ""
            if name == "read only"
            else (f"  overhead {100 * overhead['best']:.1f} % (best) / {100 * overhead['median']:.1f} % (median)")
        )
        print(f"  {name:24s} {best:6.1f} samples/s best, {median:6.1f} median{extra}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
