"""trainer.checkpoints: the one latest-checkpoint / run-adapter lookup used by train, export and eval."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.checkpoints import STATE_FILE, latest_checkpoint, run_adapter_dir


def checkpoint(run: Path, name: str, state: bool = True) -> Path:
    path = run / "checkpoints" / name
    path.mkdir(parents=True)
    for file in ("adapter_config.json", "adapter_model.safetensors") + ((STATE_FILE,) if state else ()):
        (path / file).write_bytes(b"")
    return path


def test_latest_follows_the_pointer_and_the_final_adapter_wins(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    assert latest_checkpoint(run) is None and run_adapter_dir(run) is None
    checkpoint(run, "step_0000002")
    newest = checkpoint(run, "step_0000004")
    (run / "checkpoints" / "latest").write_text("step_0000002\n")
    assert latest_checkpoint(run) == run / "checkpoints" / "step_0000002"  # the pointer, not the newest name
    (run / "checkpoints" / "latest").write_text(newest.name + "\n")
    assert latest_checkpoint(run) == newest and run_adapter_dir(run) == newest
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    assert run_adapter_dir(run) == newest  # an incomplete adapter/ (no weights) is not used
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    assert run_adapter_dir(run) == run / "adapter"


def test_pointer_to_an_incomplete_checkpoint_is_an_error(tmp_path):
    run = tmp_path / "run"
    checkpoint(run, "step_0000001", state=False)
    (run / "checkpoints" / "latest").write_text("step_0000001\n")
    with pytest.raises(FileNotFoundError, match=f"names step_0000001, which has no {STATE_FILE}"):
        latest_checkpoint(run)


def test_export_and_eval_use_the_same_lookup(tmp_path):
    """One lookup (trainer.evaluation.runs.find_adapter): eval, protocols, export and push all ask it."""
    from trainer.evaluation.runs import find_adapter

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="has the run saved an adapter yet"):
        find_adapter(run)
    step = checkpoint(run, "step_0000003")
    (run / "checkpoints" / "latest").write_text(step.name)
    assert find_adapter(run) == step


def test_resume_refuses_another_process_count_or_other_data(tmp_path):
    """Checked before any model is built: the saved data position is per rank and per dataset."""
    import torch

    from trainer.checkpoints import check_resume as check_resume_data
    from trainer.preflight import RunSetupError

    ckpt = checkpoint(tmp_path / "run", "step_0000004", state=False)
    identity = {"shards": "/data/a", "manifest_sha256": "aa"}
    torch.save({"world_size": 2, "data": identity}, ckpt / STATE_FILE)
    check_resume_data(ckpt, identity, world=2)  # the same data and process count resume
    with pytest.raises(RunSetupError, match=r"saved with 2 process\(es\), resumed with 1.*nproc_per_node=2"):
        check_resume_data(ckpt, identity, world=1)
    with pytest.raises(RunSetupError, match="manifest.json differs"):
        check_resume_data(ckpt, {"shards": "/data/b", "manifest_sha256": "bb"}, world=2)


def test_trainer_state_round_trip(tmp_path):
    """What a checkpoint writes to trainer_state.pt is what resume reads back: the position, the process count,
    the data identity and the optimizer (its moments continue exactly)."""
    import torch

    from trainer.checkpoints import Position, check_resume, read_trainer_state, state_position, trainer_state

    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    for _ in range(3):
        (weight**2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    pos = Position(step=3, epoch=1, consumed=5, skipped_steps=2)
    identity = {"shards": "/data/a", "manifest_sha256": "aa"}
    ckpt = checkpoint(tmp_path / "run", "step_0000003", state=False)
    torch.save(trainer_state(pos, optimizer, 2, identity), ckpt / STATE_FILE)

    state = read_trainer_state(ckpt)
    assert state_position(state) == pos
    assert state["world_size"] == 2 and state["data"] == identity
    check_resume(ckpt, identity, world=2)  # the checks read the same file

    restored_weight = torch.nn.Parameter(weight.detach().clone())
    restored = torch.optim.AdamW([restored_weight], lr=0.1)
    restored.load_state_dict(state["optimizer"])
    for opt, w in ((optimizer, weight), (restored, restored_weight)):
        (w**2).sum().backward()
        opt.step()
    assert torch.equal(weight, restored_weight)  # the fourth step is the same from the saved moments
