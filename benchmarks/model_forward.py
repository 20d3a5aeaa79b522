"""VGGT forward time and peak memory for S frames at 518x518.

CPU (default there): the tiny preset in fp32; peak memory = peak RSS of a fresh worker process above
its RSS after building the model, so each frame count runs in its own subprocess.
CUDA (default there): VGGT-1B with random init, the aggregator's weights in bf16 under bf16 autocast
and the heads in fp32 (how the model runs in inference), timed with CUDA events;
memory = torch.cuda.max_memory_allocated (weights included), as in the official README table.

    python benchmarks/model_forward.py                      # tiny on CPU, S = 1, 8, 24
    python benchmarks/model_forward.py --preset vggt-1b     # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from trainer.vggt import VGGT, VGGTConfig

# Official README (facebookresearch/vggt), 1x H100, Flash Attention 3, aggregator: frames -> (s, GB).
OFFICIAL_H100 = {
    1: (0.04, 1.88),
    2: (0.05, 2.07),
    4: (0.07, 2.45),
    8: (0.11, 3.23),
    10: (0.14, 3.63),
    20: (0.31, 5.58),
    50: (1.04, 11.41),
    100: (3.12, 21.15),
    200: (8.75, 40.63),
}


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_model(preset: str, device: torch.device) -> VGGT:
    config = VGGTConfig.preset(preset)
    with torch.device(device):
        model = VGGT(config).eval()
    if device.type == "cuda":
        model.aggregator.to(torch.bfloat16)  # heads stay fp32 (they run with autocast disabled)
    return model


def measure(preset: str, frames: int, size: int, repeats: int, part: str, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(preset, device)
    images = torch.rand(1, frames, 3, size, size, device=device)
    run = (
        (lambda: model.aggregator(images, keep_layers=model.config.layers_needed()))
        if part == "aggregator"
        else (lambda: model(images))
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rss_before = current_rss_bytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode(), autocast:
        for i in range(repeats + 1):  # the first run is a warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
    else:  # ru_maxrss is in KiB on Linux
        peak_gb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before) / 1e9
    return {
        "preset": preset,
        "part": part,
        "frames": frames,
        "size": size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_gb": peak_gb,
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="vggt-1b" if cuda else "tiny", choices=["tiny", "vggt-1b"])
    parser.add_argument("--frames", default="1,8,24", help="comma-separated frame counts")
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", default="aggregator,full", help="aggregator and/or full (all heads)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.worker:  # one measurement, printed as JSON for the parent
        frames, part = int(args.frames), args.parts
        print(json.dumps(measure(args.preset, frames, args.size, args.repeats, part, torch.device(args.device))))
        return
    results = []
    print(f"{'preset':8} {'part':10} {'S':>3} {'median s':>9} {'peak GB':>8}   official H100 aggregator (s / GB)")
    for part in args.parts.split(","):
        for frames in (int(f) for f in args.frames.split(",")):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--preset",
                args.preset,
                "--frames",
                str(frames),
                "--size",
                str(args.size),
                "--repeats",
                str(args.repeats),
                "--parts",
                part,
                "--device",
                args.device,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode:
                print(f"{args.preset:8} {part:10} {frames:>3} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            official = OFFICIAL_H100.get(frames)
            ref = f"{official[0]:.2f} / {official[1]:.2f}" if official else "-"
            print(f"{r['preset']:8} {part:10} {frames:>3} {r['median_s']:9.3f} {r['peak_gb']:8.2f}   {ref}")
    if results:
        print(
            f"device: {results[0]['device_name']}, torch {torch.__version__}, threads {results[0]['threads']}, "
            f"params {results[0]['params']:,}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
