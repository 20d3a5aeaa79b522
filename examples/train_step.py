"""One training step of a peer model on the project's shards: what a user copies to start fine-tuning.

    python -m examples.train_step --model da3|moge|dust3r --shards DIR [--split train] [--steps 1]
        [--weights peer_checkpoint.safetensors] [--views 2] [--align-resolution 12]

The shards are read with shardformat.views, turned into the peer's own batch by shardformat.recipes (the
compact path: uint8 images and NaN depth from the loader, `finish` does the per-pixel float work on the
device, here the training device), and
the peer's own model code runs the step (random initialisation in its smallest configuration unless
--weights is given). Losses: MoGe's own affine-invariant global loss; for Depth Anything 3 (no training code
in 0.1.1) a scale-invariant log-depth L1; for DUSt3R its Regr3D criterion (examples/peer_models.py).
Build the shards at the model's size first (docs/reuse.md): 504 or 224 for DA3, any for MoGe, 224 or
512x384 (--any-size) for DUSt3R.
"""

from __future__ import annotations

import argparse
import sys
import time

MODELS = ("da3", "moge", "dust3r")
DEVICE = "cpu"  # the models here run on the CPU; on a GPU box pass "cuda" to finish() and move the model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--shards", required=True, help="a shard directory (dataengine build --out)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--views", type=int, default=2, help="DA3 views / MoGe frames / DUSt3R pairs per step")
    parser.add_argument("--weights", default=None, help="the peer's checkpoint (safetensors); default: random init")
    parser.add_argument("--align-resolution", type=int, default=12, help="MoGe's alignment grid (its config: 48)")
    parser.add_argument("--lr", type=float, default=1e-5)
    args = parser.parse_args(argv)

    from shardformat import ShardError, views
    from shardformat.recipes import CHECKED_AGAINST, RecipeError

    try:
        sample = next(views.read(args.shards, split=args.split))
        import torch

        torch.manual_seed(0)  # the same random initialisation every run
        step = STEPS[args.model](args)
        for i in range(args.steps):
            t0 = time.perf_counter()
            loss, what = step(sample)
            print(
                f"{args.model}: step {i + 1} loss {loss:.4f} ({what}, {time.perf_counter() - t0:.1f} s; recipe "
                f"checked against {CHECKED_AGAINST[args.model]})"
            )
    except (ShardError, RecipeError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


def _optimizer(model):
    import torch

    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def da3_step(args):
    from examples.peer_models import da3_depth_loss, da3_model
    from shardformat.recipes import finish, for_model

    model = da3_model("da3-small", weights=args.weights).train()
    opt = _optimizer(model)

    def step(sample):
        b = finish("da3", for_model("da3", sample.nview(args.views), compact=True), DEVICE)
        out = model(b["x"], b["extrinsics"], b["intrinsics"], ref_view_strategy="first")
        loss = da3_depth_loss(out["depth"], b["depth"], b["valid"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach()), f"{args.views} views {tuple(b['x'].shape[-2:])}"

    return step


def moge_step(args):
    from examples.peer_models import moge_loss, moge_model
    from shardformat.recipes import finish, for_model

    model = moge_model(weights=args.weights, small=args.weights is None).train()
    opt = _optimizer(model)

    def step(sample):
        b = finish("moge", for_model("moge", sample, frames=range(min(args.views, len(sample))), compact=True), DEVICE)
        h, w = b["image"].shape[-2:]
        out = model(b["image"], num_tokens=max(64, (h // 14) * (w // 14)))
        loss, scale = moge_loss(out["points"], b, args.align_resolution)
        opt.zero_grad()
        loss.backward()
        opt.step()
        what = f"{len(scale)} frames {(h, w)}, recovered scales {[round(float(s), 3) for s in scale]}"
        if (scale <= 0).any():  # MoGe's alignment gives up silently: its loss is then 0 for that frame
            what += (
                f"; no positive scale for {int((scale <= 0).sum())} frame(s), so their loss is 0: a random-initialised"
                " model can do this, with trained weights check the camera axes (docs/reuse.md)"
            )
        return float(loss.detach()), what

    return step


def dust3r_step(args):
    from examples.peer_models import dust3r_model, dust3r_regr3d_loss
    from shardformat.recipes import collate, finish, for_model

    model = dust3r_model(tiny=args.weights is None, weights=args.weights).train()
    opt = _optimizer(model)

    def step(sample):
        pairs = for_model("dust3r", sample, pairs="adjacent", symmetric=True, compact=True)[: args.views]
        view1 = finish("dust3r", collate([p[0] for p in pairs]), DEVICE)
        view2 = finish("dust3r", collate([p[1] for p in pairs]), DEVICE)
        res1, res2 = model(view1, view2)
        loss = dust3r_regr3d_loss(view1, view2, res1["pts3d"], res2["pts3d_in_other_view"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach()), f"{len(pairs)} pairs {tuple(view1['img'].shape[-2:])}"

    return step


STEPS = {"da3": da3_step, "moge": moge_step, "dust3r": dust3r_step}

if __name__ == "__main__":
    sys.exit(main())
