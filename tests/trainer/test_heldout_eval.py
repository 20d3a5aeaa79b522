"""Held-out evaluation: engine sampling mode, the published-protocol driver, and the CLI end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataengine.sampling import sample_frames
from dataengine.scenes import DEFAULT_SCENES as TRAINING_SCENES
from dataengine.scenes import ETH3D_TRAINING_SCENES, HELDOUT_SCENES, expand_scene_sets
from trainer.metrics import pose_auc
from trainer.protocols import PUBLISHED, ProtocolConfig, evaluate_protocols, parse_protocols
from trainer.vggt.geometry import extri_intri_to_pose_encoding

ROOT = Path(__file__).resolve().parents[2]
TINY_WEIGHTS = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"
HEIGHT, WIDTH, FRAMES = 28, 42, 3


# ------------------------------------------------------------------------------------- engine sampling


def test_scene_sets():
    assert len(ETH3D_TRAINING_SCENES) == 13 and len(HELDOUT_SCENES) == 8
    assert set(HELDOUT_SCENES).isdisjoint(TRAINING_SCENES)
    assert set(HELDOUT_SCENES) | set(TRAINING_SCENES) == set(ETH3D_TRAINING_SCENES)
    assert expand_scene_sets(("heldout",)) == HELDOUT_SCENES
    assert expand_scene_sets(("pipes", "heldout", "mine")) == (
        "pipes",
        *[s for s in HELDOUT_SCENES if s != "pipes"],
        "mine",
    )
    assert expand_scene_sets(None) is None


def test_sample_frames_uniform_and_random():
    assert sample_frames(76, 10, "uniform") == [0, 8, 17, 25, 33, 42, 50, 58, 67, 75]
    assert sample_frames(5, 3, "uniform") == [0, 2, 4]
    assert sample_frames(14, 100, "uniform") == list(range(14))  # DA3: min(frames, 100)
    assert sample_frames(14, 100, "random", seed=3) == list(range(14))
    picked = sample_frames(76, 10, "random", seed=0, scene="kicker")
    assert len(set(picked)) == 10 and picked == sorted(picked) and 0 <= picked[0] and picked[-1] < 76
    assert picked == sample_frames(76, 10, "random", seed=0, scene="kicker")  # reproducible
    assert picked != sample_frames(76, 10, "random", seed=1, scene="kicker")
    assert picked != sample_frames(76, 10, "random", seed=0, scene="pipes")  # each scene its own draw
    with pytest.raises(ValueError, match="sampling mode"):
        sample_frames(10, 3, "windows")
    with pytest.raises(ValueError, match=">= 1"):
        sample_frames(10, 0, "uniform")


# ----------------------------------------------------------------------- protocol driver, scripted models


def rotation(axis, deg: float) -> torch.Tensor:
    axis_t = torch.tensor(axis, dtype=torch.float64)
    x, y, z = (axis_t / axis_t.norm()).tolist()
    skew = torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=torch.float64)
    a = math.radians(deg)
    return torch.eye(3, dtype=torch.float64) + math.sin(a) * skew + (1 - math.cos(a)) * skew @ skew


def synthetic_batch(seed: int, scenes: list[str]) -> dict:
    """Shard batch with metric GT; principal point at the image centre (what the pose encoding decodes)."""
    gen = torch.Generator().manual_seed(seed)
    extrinsics = torch.zeros(len(scenes), FRAMES, 3, 4, dtype=torch.float64)
    for b in range(len(scenes)):
        for s in range(FRAMES):
            r = rotation([0.2, 1.0, 0.1 * s], 8.0 * s + 3 * b)
            centre = torch.tensor([0.4 * s, 0.1 * b, -2.0], dtype=torch.float64)
            extrinsics[b, s] = torch.cat([r, (-r @ centre)[:, None]], -1)
    intrinsics = (
        torch.tensor([[40.0, 0, WIDTH / 2], [0, 41.0, HEIGHT / 2], [0, 0, 1]]).expand(len(scenes), FRAMES, 3, 3).clone()
    )
    depths = 2 + 3 * torch.rand(len(scenes), FRAMES, HEIGHT, WIDTH, generator=gen)
    masks = torch.rand(len(scenes), FRAMES, HEIGHT, WIDTH, generator=gen) > 0.25
    return {
        "images": torch.randint(0, 256, (len(scenes), FRAMES, 3, HEIGHT, WIDTH), generator=gen, dtype=torch.uint8),
        "depths": torch.where(masks, depths, torch.zeros_like(depths)),
        "point_masks": masks,
        "extrinsics": extrinsics.float(),
        "intrinsics": intrinsics,
        "keys": [f"{scene}_{seed:05d}" for scene in scenes],
        "scenes": scenes,
        "names": [[f"DSC_{s}.JPG" for s in range(FRAMES)] for _ in scenes],
    }


class ScriptedModel(torch.nn.Module):
    """Predicts, in an arbitrary scale k: depth = factor_f * k * GT, cameras = GT with translations * k
    (last camera optionally yawed), world points = k * GT world points + offset."""

    def __init__(self, batches, k: float, factors=(1.0, 1.0, 1.0), yaw_deg: float = 0.0):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        from trainer.vggt.geometry import depth_to_world_points

        self.outputs = []
        for batch in batches:
            depth = batch["depths"].double()
            filled = torch.where(batch["point_masks"], depth, torch.full_like(depth, 3.0))
            extrinsics = batch["extrinsics"].double().clone()
            extrinsics[..., 3] *= k
            extrinsics[:, -1, :, :3] = rotation([0, 0, 1], yaw_deg) @ extrinsics[:, -1, :, :3]
            world = depth_to_world_points(filled, batch["intrinsics"].double(), batch["extrinsics"].double())[0]
            self.outputs.append(
                {
                    "depth": (k * filled * torch.tensor(factors, dtype=torch.float64)[None, :, None, None])[
                        ..., None
                    ].float(),
                    "depth_conf": 1 + filled.float(),
                    "pose_enc": extri_intri_to_pose_encoding(extrinsics.float(), batch["intrinsics"], (HEIGHT, WIDTH)),
                    "world_points": (k * world + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)).float(),
                    "world_points_conf": 1 + filled.float(),
                }
            )
        self.calls = 0

    def forward(self, images):
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return out


def test_protocols_perfect_adapter_and_known_base_errors(tmp_path):
    batches = [synthetic_batch(0, ["kicker", "pipes"]), synthetic_batch(1, ["kicker"])]
    adapter = ScriptedModel(batches, k=0.37)  # right up to one similarity: every protocol must read perfect
    factors = (3.0, 6.0, 3.0)
    base = ScriptedModel(batches, k=2.0, factors=factors, yaw_deg=10.0)
    metrics = evaluate_protocols(base, adapter, batches, tmp_path, ProtocolConfig(max_pictures=1))

    assert metrics["labels"] == ["base", "adapter"] and metrics["counts"] == {"samples": 3, "scenes": 2, "frames": 9}
    perfect = metrics["mean"]["adapter"]
    for t in (3, 5, 15, 30):
        for rule in ("da3", "vggt", "i_to_j"):
            assert perfect[f"pose/{rule}/auc@{t}"] == 1.0
    for source in ("depth_camera", "point_head"):
        for name in ("accuracy", "completeness", "overall"):
            # Float32 predictions of points ~5 m: residuals are a few 1e-7 m after the exact Sim(3).
            assert perfect[f"pointmap/{source}/{name}"] < 1e-5
        for name in ("precision", "recall", "fscore"):  # DA3's rule at 0.25 m after 0.039 m voxels
            assert perfect[f"pointmap/{source}/{name}"] == 1.0
    assert perfect["mvd/frame/abs_rel"] < 1e-6 and perfect["mvd/frame/inlier"] == 1.0
    assert perfect["mvd/sequence/abs_rel"] < 1e-6 and perfect["mvd/sequence/inlier"] == 1.0

    # Base: per-frame depth scales 3/6/3 vanish under per-frame median scaling, not under one sequence scale.
    base_mean = metrics["mean"]["base"]
    assert base_mean["mvd/frame/abs_rel"] < 1e-6 and base_mean["mvd/frame/inlier"] == 1.0
    expected = []
    for batch in batches:
        for item in range(len(batch["keys"])):
            gt, mask = batch["depths"][item].double().numpy(), batch["point_masks"][item].numpy()
            pred = np.stack([2.0 * f * gt[i] for i, f in enumerate(factors)])
            s = np.median(gt[mask]) / np.median(pred[mask])
            expected.append([abs(2.0 * f * s - 1) for f in factors])  # prediction 2 f gt, scaled by s
    sample_records = metrics["samples"]
    for record, want in zip(sample_records, expected, strict=True):
        assert record["base"]["mvd/sequence/abs_rel_per_frame"] == pytest.approx(want, rel=1e-5, abs=1e-7)
    # Pose: the pipeline's AUC equals the metric on the decoded cameras (yawed last camera).
    first = batches[0]
    yawed = first["extrinsics"][0].double().clone()
    yawed[-1, :, :3] = rotation([0, 0, 1], 10.0) @ yawed[-1, :, :3]
    for rule in ("da3", "vggt", "i_to_j"):
        want_auc = pose_auc(yawed, first["extrinsics"][0], convention=rule)
        assert sample_records[0]["base"][f"pose/{rule}/auc@30"] == pytest.approx(want_auc["auc@30"], abs=1e-6)
        assert sample_records[0]["base"][f"pose/{rule}/auc@3"] == pytest.approx(want_auc["auc@3"], abs=1e-6)
        assert 0 < want_auc["auc@30"] < 1
    # Points from inconsistent depth (frame 1 twice as far) are not one similarity away from GT.
    assert base_mean["pointmap/depth_camera/overall"] > 0.05
    # Alignment bookkeeping: every valid pixel of the sample was used.
    assert sample_records[0]["adapter"]["pointmap/depth_camera/align_points"] == int(batches[0]["point_masks"][0].sum())

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk["scenes"]) == {"kicker", "pipes"} and on_disk["scenes"]["kicker"]["samples"] == 2
    assert on_disk["published"]["eth3d-pointmap"]["values"]["pointmap/depth_camera/overall"] == 0.677
    report = (tmp_path / "report.md").read_text()
    assert "| pointmap/depth_camera/overall ↓ | 0.6770 |" in report and "| pose/da3/auc@30 ↑ | 80.80 |" in report
    # The published figure sits next to DA3's rule only; the report says which rule each row used.
    assert "| pose/vggt/auc@30 ↑ | – |" in report and "| pose/i_to_j/auc@30 ↑ | – |" in report
    assert "- `da3`: Depth Anything 3's compute_pose" in report and "dslr_calibration_jpg" in report
    assert "| pointmap/depth_camera/fscore ↑ | – |" in report
    assert PUBLISHED["eth3d-pose"]["source"] in report
    with Image.open(tmp_path / metrics["pictures"][0]) as png:
        assert png.format == "PNG" and png.width > 600


def test_confident_and_ransac_alignment_use_fewer_points(tmp_path):
    batches = [synthetic_batch(2, ["relief"])]
    model = ScriptedModel(batches, k=0.5)
    cfg = ProtocolConfig(
        protocols=("eth3d-pointmap",), align_conf_quantile=0.5, pointmap_alignment="ransac", max_pictures=0
    )
    metrics = evaluate_protocols(model, None, batches, tmp_path, cfg)
    record = metrics["samples"][0]["base"]
    valid = int(batches[0]["point_masks"][0].sum())
    assert metrics["labels"] == ["base"] and record["pointmap/depth_camera/eval_points"] == valid
    assert 0.45 * valid < record["pointmap/depth_camera/align_points"] < 0.55 * valid
    assert record["pointmap/depth_camera/align_inliers"] == record["pointmap/depth_camera/align_points"]
    assert record["pointmap/depth_camera/overall"] < 1e-5 and "pose/da3/auc@3" not in record


def test_parse_protocols_and_bad_config(tmp_path):
    assert parse_protocols("all") == ("eth3d-pose", "eth3d-pointmap", "eth3d-mvd")
    assert parse_protocols("eth3d-mvd, eth3d-pose") == ("eth3d-mvd", "eth3d-pose")
    with pytest.raises(ValueError, match="unknown protocol"):
        parse_protocols("eth3d-dtu")
    with pytest.raises(ValueError, match="alignment"):
        evaluate_protocols(None, torch.nn.Linear(1, 1), [], tmp_path, ProtocolConfig(pointmap_alignment="icp"))
    with pytest.raises(ValueError, match="empty"):
        evaluate_protocols(torch.nn.Linear(1, 1), None, [], tmp_path)


# ------------------------------------------------------------------- CLI end to end on a held-out scene


@pytest.fixture(scope="module")
def heldout_shards(synth_root, tmp_path_factory) -> Path:
    """`dataengine build --sampling uniform --frames 5` of the session's synthetic scene, as users run it."""
    out = tmp_path_factory.mktemp("heldout") / "shards"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataengine",
            "build",
            "--root",
            str(synth_root),
            "--out",
            str(out),
            "--scenes",
            "synth_facade",
            "--size",
            "56",
            "--frames",
            "5",
            "--sampling",
            "uniform",
            "--workers",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "test: 1 samples in 1 shards" in proc.stdout
    return out


def test_engine_writes_an_evaluation_split(heldout_shards, synth_root):
    manifest = json.loads((heldout_shards / "manifest.json").read_text())
    assert list(manifest["splits"]) == ["test"] and manifest["options"]["sampling"] == "uniform"
    assert manifest["per_scene"]["synth_facade"]["test_frames"] == 5
    assert manifest["per_scene"]["synth_facade"]["scene_frames"] == 12
    assert manifest["per_scene"]["synth_facade"]["frames"] == 5  # only the sampled frames were rendered
    # The 5 frames are spread over the scene's 12 capture-ordered frames: indices 0, 3, 6, 8, 11.
    import tarfile

    with tarfile.open(heldout_shards / "test-00000.tar") as tar:
        cams = json.loads(tar.extractfile("synth_facade_00000.cameras.json").read())
    names = sorted(p.name for p in (synth_root / "synth_facade" / "images" / "dslr_images_undistorted").glob("*.JPG"))
    assert [f["name"].split("/")[-1] for f in cams["frames"]] == [names[i] for i in (0, 3, 6, 8, 11)]
    assert cams["split"] == "test"
    verify = subprocess.run(
        [sys.executable, "-m", "dataengine", "verify", str(heldout_shards)], capture_output=True, text=True
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Training never sees evaluation samples: the build has no train split.
    from trainer.data import ShardError, list_shards

    with pytest.raises(ShardError, match="no 'train-"):
        list_shards(heldout_shards, "train")


def test_eval_protocol_cli_base_vs_adapter(heldout_shards, tmp_path):
    from trainer.builders import build_model
    from trainer.config import LoraConfig
    from trainer.lora import apply_strategy, save_adapter

    peft_model = apply_strategy(build_model("tiny", str(TINY_WEIGHTS)), LoraConfig(rank=4, dropout=0.0))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    save_adapter(
        peft_model, tmp_path / "adapter", {"model": "tiny", "weights": str(TINY_WEIGHTS), "strategy": "b", "step": 3}
    )
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trainer",
            "eval",
            "--protocol",
            "all",
            "--shards",
            str(heldout_shards),
            "--adapter",
            str(tmp_path / "adapter"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--max-pictures",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 samples, 1 scenes (base -> adapter): pose/da3/auc@30 " in proc.stdout
    report = (out / "report.md").read_text()  # every rule's AUC, the published figure on DA3's rule only
    assert "| pose/da3/auc@30 ↑ | 80.80 |" in report and "| pose/vggt/auc@30 ↑ | – |" in report
    metrics = json.loads((out / "metrics.json").read_text())
    record = metrics["samples"][0]
    assert record["names"] and len(record["names"]) == 5 and metrics["models"]["heads"] == "camera, depth, point"
    for label in ("base", "adapter"):
        assert record[label]["pose/pairs"] == 10  # 5 frames -> 10 pairs
        assert all(0 <= record[label][f"pose/{rule}/auc@30"] <= 1 for rule in ("da3", "vggt", "i_to_j"))
        for source in ("depth_camera", "point_head"):
            used = record[label][f"pointmap/{source}/align_points"]
            assert used == record[label][f"pointmap/{source}/eval_points"] > 0
            assert 0 < record[label][f"pointmap/{source}/overall"] < 100
        assert record[label]["mvd/frame/frames"] == 5
    assert record["base"]["mvd/frame/abs_rel"] != record["adapter"]["mvd/frame/abs_rel"]
    assert (out / metrics["pictures"][0]).stat().st_size > 10_000
    report = (out / "report.md").read_text()
    assert "published VGGT" in report and "| synth_facade | 1 |" in report

    # Bad input: one clear line, no traceback (in-process: click's parser and the shard check come
    # before any model is built).
    from click.testing import CliRunner

    from trainer.cli import main

    bad = CliRunner().invoke(
        main, ["eval", "--protocol", "eth3d-dtu", "--shards", str(heldout_shards), "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "unknown protocol" in bad.output
    wrong_split = CliRunner().invoke(
        main,
        [
            "eval",
            "--protocol",
            "all",
            "--shards",
            str(heldout_shards),
            "--split",
            "train",
            "--out",
            str(tmp_path / "y"),
        ],
    )
    assert wrong_split.exit_code == 1 and "no 'train-*.tar' shards" in wrong_split.output
    assert not (tmp_path / "y").exists()
