"""trainer.evaluate: base-vs-adapter metrics, report and pictures from hand-built and tiny models."""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.evaluate import evaluate, relative_change
from trainer.losses import prepare_batch
from trainer.vggt.geometry import extri_intri_to_pose_encoding

HEIGHT, WIDTH, FRAMES = 28, 42, 3


def rotation(axis: list[float], deg: float) -> torch.Tensor:
    axis_t = torch.tensor(axis, dtype=torch.float64)
    axis_t = axis_t / axis_t.norm()
    x, y, z = axis_t.tolist()
    skew = torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=torch.float64)
    a = math.radians(deg)
    return torch.eye(3, dtype=torch.float64) + math.sin(a) * skew + (1 - math.cos(a)) * skew @ skew


def synthetic_batch(seed: int, scenes: list[str]) -> dict:
    """A shard batch (contract of trainer.data) with metric GT: B = len(scenes) windows of 3 frames."""
    gen = torch.Generator().manual_seed(seed)
    batch_size = len(scenes)
    extrinsics = torch.zeros(batch_size, FRAMES, 3, 4)
    for b in range(batch_size):
        for s in range(FRAMES):
            r = rotation([0.2, 1.0, 0.1 * s], 8.0 * s + 3 * b)
            centre = torch.tensor([0.4 * s, 0.1 * b, -2.0], dtype=torch.float64)
            extrinsics[b, s] = torch.cat([r, (-r @ centre)[:, None]], -1).float()
    intrinsics = (
        torch.tensor([[40.0, 0, (WIDTH - 1) / 2], [0, 41.0, (HEIGHT - 1) / 2], [0, 0, 1]])
        .expand(batch_size, FRAMES, 3, 3)
        .clone()
    )
    depths = 2 + 3 * torch.rand(batch_size, FRAMES, HEIGHT, WIDTH, generator=gen)
    masks = torch.rand(batch_size, FRAMES, HEIGHT, WIDTH, generator=gen) > 0.25
    depths = torch.where(masks, depths, torch.zeros_like(depths))
    images = torch.randint(0, 256, (batch_size, FRAMES, 3, HEIGHT, WIDTH), generator=gen, dtype=torch.uint8)
    return {
        "images": images,
        "depths": depths,
        "point_masks": masks,
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
        "keys": [f"{scene}_{seed:05d}" for scene in scenes],
        "scenes": scenes,
        "names": [[f"IMG_{seed}_{s}.JPG" for s in range(FRAMES)] for _ in scenes],
    }


class ScriptedModel(torch.nn.Module):
    """Returns depth = per-frame factor x normalised GT and the GT pose encoding (optionally rotated)."""

    def __init__(self, batches: list[dict], frame_factors: list[float], yaw_error_deg: float = 0.0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # gives the model a device
        self.outputs = []
        for batch in batches:
            prepared = prepare_batch(batch)
            depth = torch.where(prepared["point_masks"], prepared["depths"], torch.ones_like(prepared["depths"]))
            depth = depth * torch.tensor(frame_factors)[None, :, None, None]
            extrinsics = prepared["extrinsics"].clone()
            extrinsics[:, -1, :, :3] = rotation([0, 0, 1], yaw_error_deg).float() @ extrinsics[:, -1, :, :3]
            pose_enc = extri_intri_to_pose_encoding(extrinsics, prepared["intrinsics"], (HEIGHT, WIDTH))
            self.outputs.append(
                {"depth": depth[..., None], "depth_conf": 1 + depth, "pose_enc": pose_enc, "pose_enc_list": [pose_enc]}
            )
        self.calls = 0

    def forward(self, images):
        assert images.dtype == torch.float32 and images.max() <= 1.0
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out


@pytest.fixture(scope="module")
def batches():
    return [synthetic_batch(0, ["courtyard", "facade"]), synthetic_batch(1, ["courtyard"])]


def test_report_metrics_and_pictures(tmp_path, batches):
    adapter = ScriptedModel(batches, [1.0, 1.0, 1.0])  # perfect in the training normalisation
    base = ScriptedModel(batches, [3.0, 6.0, 3.0], yaw_error_deg=10.0)  # frame 1 twice too far, last camera yawed
    metrics = evaluate(base, adapter, batches, tmp_path, alignment="sequence", max_pictures=1)

    assert metrics["counts"] == {
        "windows": 3,
        "frames": 9,
        "frames_with_depth": 9,
        "pixels": int(sum(b["point_masks"].sum() for b in batches)),
        "pairs": 9,
    }
    overall = metrics["overall"]
    assert overall["adapter"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert overall["adapter"]["delta1"] == 1.0
    assert overall["adapter"]["auc@30"] == 1.0 and overall["adapter"]["rot_err_deg"] == pytest.approx(0, abs=1e-3)
    # Base in metres is factor_f x GT, so with the window's median scale s, AbsRel of frame f = |factor_f s - 1|.
    factors = torch.tensor([3.0, 6.0, 3.0])
    for batch in batches:
        for item, key in enumerate(batch["keys"]):
            gt, mask = batch["depths"][item].double(), batch["point_masks"][item]
            pred = factors[:, None, None].double() * gt
            s = np.median(gt[mask].numpy()) / np.median(pred[mask].numpy())
            records = sorted((f for f in metrics["frames"] if f["key"] == key), key=lambda f: f["frame"])
            for f, record in zip(factors.tolist(), records, strict=True):
                assert record["base"]["abs_rel"] == pytest.approx(abs(f * s - 1), rel=1e-5, abs=1e-6)
                assert record["base"]["fit_scale"] == pytest.approx(s, rel=1e-6)
    assert overall["base"]["abs_rel"] > 0.1
    assert overall["relative_change"]["abs_rel"] == pytest.approx(-1.0, abs=1e-5)
    # Camera: pairs (0,2) and (1,2) of every window are 10 degrees off in rotation.
    assert overall["base"]["rot_err_deg"] == pytest.approx(20.0 / 3.0, abs=1e-3)
    assert overall["base"]["rra@5"] == pytest.approx(1.0 / 3.0) and overall["base"]["rra@15"] == 1.0
    assert set(metrics["scenes"]) == {"courtyard", "facade"}
    assert metrics["scenes"]["courtyard"]["base"]["frames"] == 6

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["alignment"] == "sequence" and on_disk["overall"]["adapter"]["delta1"] == 1.0
    report = (tmp_path / "report.md").read_text()
    assert "| abs_rel | 0.3333 | 0.0000 | -100.0% ✓ |" in report
    assert "alignment: **sequence**" in report and "3 windows, 9 frames" in report
    assert "| facade | 3 |" in report
    assert metrics["pictures"] == ["window_000_courtyard_00000.png", "summary_abs_rel.png"]
    for picture in metrics["pictures"]:
        with Image.open(tmp_path / picture) as png:
            assert png.format == "PNG" and png.width > 400 and png.height > 200
        assert f"]({picture})" in report


def test_alignment_none_sees_the_scale_error(tmp_path, batches):
    adapter = ScriptedModel(batches[:1], [1.0, 1.0, 1.0])
    base = ScriptedModel(batches[:1], [3.0, 3.0, 3.0])
    metrics = evaluate(base, adapter, batches[:1], tmp_path, alignment="none", max_pictures=0)
    # The training normalisation maps a perfect prediction back to metres exactly; x3 is AbsRel 2.
    assert metrics["overall"]["adapter"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["overall"]["base"]["abs_rel"] == pytest.approx(2.0, rel=1e-5)
    assert metrics["pictures"] == ["summary_abs_rel.png"]
    metrics = evaluate(base, adapter, batches[:1], tmp_path, alignment="median", max_pictures=0)
    assert metrics["overall"]["base"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)


class TogglableAdapter(torch.nn.Module):
    """PEFT-like: ``disable_adapter()`` switches to the base behaviour."""

    def __init__(self, adapted: torch.nn.Module, base: torch.nn.Module):
        super().__init__()
        self.adapted, self.base, self.enabled = adapted, base, True

    @contextlib.contextmanager
    def disable_adapter(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def forward(self, images):
        return (self.adapted if self.enabled else self.base)(images)


def test_base_through_disable_adapter_and_errors(tmp_path, batches):
    model = TogglableAdapter(ScriptedModel(batches[:1], [1.0] * 3), ScriptedModel(batches[:1], [3.0, 6.0, 3.0]))
    metrics = evaluate(None, model, batches[:1], tmp_path, max_pictures=0)
    assert metrics["alignment"] == "sequence"
    assert metrics["overall"]["base"]["abs_rel"] > 0.3 and metrics["overall"]["adapter"]["abs_rel"] < 1e-6
    with pytest.raises(ValueError, match="alignment"):
        evaluate(None, model, batches[:1], tmp_path, alignment="affine")
    with pytest.raises(ValueError, match="empty"):
        evaluate(None, model, [], tmp_path)
    assert relative_change(0.0, 1.0) is None and relative_change(2.0, 1.0) == -0.5


def write_val_shard(directory, batch) -> None:
    """Windows of `batch` as a `val-00000.tar` in the documented shard format (shards/README.md)."""
    import io
    import tarfile

    import simplejpeg

    def add(tar, name, payload: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))

    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(directory / "val-00000.tar", "w") as tar:
        for item, key in enumerate(batch["keys"]):
            for s in range(FRAMES):
                rgb = batch["images"][item, s].permute(1, 2, 0).contiguous().numpy()
                add(tar, f"{key}.f{s}.jpg", simplejpeg.encode_jpeg(rgb, quality=95, colorspace="RGB"))
            for member, array in (
                ("depth", batch["depths"][item].numpy()),
                ("mask", batch["point_masks"][item].numpy().astype(np.uint8)),
            ):
                buffer = io.BytesIO()
                np.save(buffer, array)
                add(tar, f"{key}.{member}.npy", buffer.getvalue())
            cameras = {
                "format": "eth3d-vggt-shards/1",
                "scene": batch["scenes"][item],
                "split": "val",
                "window": item,
                "image_size": [HEIGHT, WIDTH],
                "frames": [
                    {
                        "name": batch["names"][item][s],
                        "index": s,
                        "K": batch["intrinsics"][item, s].tolist(),
                        "extrinsics": batch["extrinsics"][item, s].tolist(),
                    }
                    for s in range(FRAMES)
                ],
            }
            add(tar, f"{key}.cameras.json", json.dumps(cameras).encode())


def test_eval_command_on_shards_and_adapter(tmp_path):
    """`python -m trainer eval` on written shards with a saved tiny-model adapter (random-init base, seed 0)."""
    from click.testing import CliRunner

    from trainer.builders import build_model, seed_everything
    from trainer.cli import main
    from trainer.config import LoraConfig
    from trainer.lora import apply_strategy, save_adapter

    write_val_shard(tmp_path / "shards", synthetic_batch(3, ["terrace", "facade"]))
    seed_everything(0)
    peft_model = apply_strategy(build_model("tiny", None), LoraConfig(rank=4, dropout=0.0))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # a trained-looking adapter (B starts at 0)
    save_adapter(peft_model, tmp_path / "adapter", {"model": "tiny", "weights": None, "strategy": "b", "step": 7})

    result = CliRunner().invoke(
        main,
        [
            "eval",
            "--shards",
            str(tmp_path / "shards"),
            "--adapter",
            str(tmp_path / "adapter"),
            "--out",
            str(tmp_path / "report"),
            "--max-pictures",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 frames" not in result.output and "6 frames: AbsRel base" in result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["counts"]["windows"] == 2 and metrics["models"]["adapter step"] == 7
    assert set(metrics["scenes"]) == {"terrace", "facade"}
    assert metrics["overall"]["base"]["abs_rel"] != metrics["overall"]["adapter"]["abs_rel"]
    # The base the command rebuilt is the one the adapter was made on (same seed): with the adapter
    # disabled, the frozen model reproduces its predictions.
    direct = evaluate(
        None, peft_model, [synthetic_batch(3, ["terrace", "facade"])], tmp_path / "direct", max_pictures=0
    )
    assert metrics["overall"]["base"]["abs_rel"] == pytest.approx(direct["overall"]["base"]["abs_rel"], rel=1e-3)
    assert metrics["overall"]["adapter"]["abs_rel"] == pytest.approx(direct["overall"]["adapter"]["abs_rel"], rel=1e-3)
    assert (tmp_path / "report" / "report.md").read_text().count("![") == 2
    # The real model's window grid is drawn (confidence, depth and error maps all finite-ranged).
    assert (tmp_path / "report" / metrics["pictures"][0]).stat().st_size > 10_000

    missing = CliRunner().invoke(main, ["eval", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "x")])
    assert missing.exit_code != 0 and "--run or --adapter" in missing.output
