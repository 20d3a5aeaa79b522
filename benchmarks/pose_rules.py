"""How far the three pose rules (trainer.metrics.POSE_CONVENTIONS) differ on the same predictions.

Takes the GT cameras of every sample of a shard split (e.g. a `--sampling da3` build of synthetic held-out
scenes), perturbs them like a pose model's error -- each camera turned by a Gaussian angle (sigma_rot degrees)
about a random axis, its centre moved by Gaussian noise of sigma_centre % of the trajectory extent -- then
puts the whole rig through a random world similarity, and scores the result under every rule. Means over
seeds and samples; no model involved, so the gap is the rules' alone (docs/evaluation.md, "Which pose rule").

    .venv/bin/python benchmarks/pose_rules.py SHARDS [--split test] [--seeds 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from trainer.metrics import POSE_CONVENTIONS, pose_auc

NOISE = ((0.5, 0.5), (1.0, 1.0), (2.0, 2.0), (5.0, 5.0), (2.0, 0.0), (0.0, 3.0))


def _rotation(axis: np.ndarray, deg: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(deg)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def perturbed(w2c: np.ndarray, sigma_rot: float, sigma_centre: float, rng: np.random.Generator) -> np.ndarray:
    """(S,3,4) world-to-camera: cameras turned and moved, then a random world similarity."""
    c2w_rot = np.swapaxes(w2c[:, :3, :3], 1, 2)
    centres = -np.einsum("sij,sj->si", c2w_rot, w2c[:, :3, 3])
    extent = float(np.linalg.norm(centres.max(0) - centres.min(0)))
    rot = np.stack([_rotation(rng.normal(size=3), rng.normal(0, sigma_rot)) @ r for r in c2w_rot])
    centres = centres + rng.normal(0, sigma_centre / 100 * extent, size=centres.shape)
    scale, sim = rng.uniform(0.3, 3.0), _rotation(rng.normal(size=3), rng.uniform(0, 180))
    rot, centres = sim @ rot, scale * centres @ sim.T + rng.normal(size=3)
    out = np.zeros_like(w2c)
    out[:, :3, :3] = np.swapaxes(rot, 1, 2)
    out[:, :3, 3] = -np.einsum("sji,sj->si", rot, centres)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards")
    parser.add_argument("--split", default="test")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from trainer.data import make_loader

    loader = make_loader(args.shards, args.split, 1, shuffle=False, num_workers=0, pin_memory=False)
    samples = [(batch["scenes"][0], batch["extrinsics"][0].double().numpy()) for batch in loader]
    rows = []
    for sigma_rot, sigma_centre in NOISE:
        values = {rule: {3: [], 30: []} for rule in POSE_CONVENTIONS}
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            for _, gt in samples:
                pred = perturbed(gt, sigma_rot, sigma_centre, rng)
                for rule in POSE_CONVENTIONS:
                    auc = pose_auc(pred, gt, thresholds=(3, 30), convention=rule)
                    values[rule][3].append(auc["auc@3"])
                    values[rule][30].append(auc["auc@30"])
        row = {"sigma_rot_deg": sigma_rot, "sigma_centre_pct": sigma_centre}
        for rule in POSE_CONVENTIONS:
            row[f"{rule}/auc@3"] = float(np.mean(values[rule][3]))
            row[f"{rule}/auc@30"] = float(np.mean(values[rule][30]))
        rows.append(row)
    frames = [len(gt) for _, gt in samples]
    print(f"{len(samples)} samples ({', '.join(s for s, _ in samples)}), frames {frames}, {args.seeds} seeds")
    header = "| rot / centre noise | " + " | ".join(f"{r} AUC@3 / @30" for r in POSE_CONVENTIONS) + " |"
    print(header + "\n|---|" + "---:|" * len(POSE_CONVENTIONS))
    for row in rows:
        cells = " | ".join(f"{100 * row[f'{r}/auc@3']:.1f} / {100 * row[f'{r}/auc@30']:.1f}" for r in POSE_CONVENTIONS)
        print(f"| {row['sigma_rot_deg']}° / {row['sigma_centre_pct']} % | {cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": [s for s, _ in samples], "frames": frames, "seeds": args.seeds, "rows": rows}, f)


if __name__ == "__main__":
    main()
