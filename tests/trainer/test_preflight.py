"""trainer.preflight: the cheap checks of a run, each failing with a RunSetupError that names the path and
what to do, before any shard is read beyond its header or any model is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import load_config
from trainer.preflight import RunSetupError, check_out_dir, check_weights, preflight

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    check_out_dir(tmp_path / "new" / "run")  # a folder that does not exist yet is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunSetupError, match=r"file: --out is a file, not a run directory; choose another --out"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(RunSetupError, match=r"not writable, so the run directory .*/file/run cannot be written"):
        check_out_dir(tmp_path / "file" / "run")  # below a file: its nearest existing parent is no folder


def test_weights_local_file_hub_id_or_a_clear_error(tmp_path):
    check_weights(None)  # random init
    check_weights(str(TINY))  # an existing local checkpoint
    check_weights("facebook/VGGT-1B")  # a hub id: fetched later, after every cheap check (no network here)
    missing = tmp_path / "model.safetensors"
    with pytest.raises(RunSetupError, match=r"model\.safetensors: --weights is not a checkpoint file .*--weights PATH"):
        check_weights(str(missing))
    with pytest.raises(RunSetupError, match=r"^--weights 'not/a/valid//repo'"):
        check_weights("not/a/valid//repo")
    (tmp_path / "folder").mkdir()
    with pytest.raises(RunSetupError, match="is not a checkpoint file"):
        check_weights(str(tmp_path / "folder"))  # exists, but is no file


def test_existing_checkpoints_need_resume_before_the_shards_are_read(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"out={run}", f"data.shards={tmp_path / 'no_shards'}"])
    with pytest.raises(FileExistsError, match=r"already holds checkpoints: pass --resume or choose another --out"):
        preflight(cfg, resume=False)
