"""Peak tensor memory of a VGGT-1B LoRA training step per strategy, with and without checkpointing.

Traced with fake tensors (`trainer.memory`: the trainer's real forward / backward / AdamW path under
bf16 autocast, no data, no GPU), so it runs anywhere in about a minute. Printed next to the existing
ETH3D LoRA fork's claims and issue 5's target (strategy B ≤ 10 GB with checkpointing). A CUDA run
adds the CUDA context (~0.5 GB) and allocator fragmentation: `benchmarks/train_step.py` on a GPU
measures `torch.cuda.max_memory_allocated` for the same settings.

    .venv/bin/python benchmarks/train_memory.py [--frames 8] [--size 518] [--strategies a b c] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_CLAIMS_GB = {"a": 12, "b": 20, "c": 28}  # RTX 5090, labelled estimates in the fork
TARGET_B_GB = 10.0


def main() -> None:
    from trainer.config import load_config
    from trainer.memory import estimate_step_memory

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--model", default="vggt-1b", choices=["vggt-1b", "tiny"])
    parser.add_argument("--strategies", nargs="+", default=["a", "b", "c"])
    parser.add_argument("--json", type=Path, help="Write the rows here.")
    args = parser.parse_args()

    rows = []
    for strategy in args.strategies:
        for checkpointing in (True, False):
            t0 = time.perf_counter()
            cfg = load_config(
                ROOT / "configs" / f"strategy_{strategy}.yaml",
                [f"model={args.model}", f"activation_checkpointing={str(checkpointing).lower()}"],
            )
            row = asdict(estimate_step_memory(cfg, frames=args.frames, size=args.size))
            row["trace_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"  traced {strategy} checkpointing={checkpointing} in {row['trace_s']:.0f} s", flush=True)

    def gb(n):
        return f"{n / 1e9:.2f}"

    print(f"\n{args.model}, batch 1 x {args.frames} x {args.size}², bf16 autocast (heads fp32), fp32 base weights")
    print("| strategy | activation ckpt | trainable | weights GB | kept for backward GB | peak GB | fork claims |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        kept = r["kept_after_forward"] - r["persistent_state"]
        claim = f"{PEER_CLAIMS_GB[r['strategy']]} GB" if args.model == "vggt-1b" else ""
        print(
            f"| {r['strategy'].upper()} | {'on' if r['checkpointing'] else 'off'} | {r['trainable']:,} | "
            f"{gb(r['weights'])} | {gb(kept)} | **{gb(r['total'])}** | {claim} |"
        )
    b = [r for r in rows if r["strategy"] == "b" and r["checkpointing"]]
    if b and args.model == "vggt-1b" and args.frames == 8 and args.size == 518:
        verdict = "met" if b[0]["total"] / 1e9 <= TARGET_B_GB else "NOT met"
        print(
            f"\nstrategy B with checkpointing: {gb(b[0]['total'])} GB of tensors vs target <= {TARGET_B_GB:.0f} GB: "
            f"{verdict} (before the CUDA context and allocator overhead)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
