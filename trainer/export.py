"""A trained run → merged VGGT weights (official key names), or its adapter → the Hugging Face hub."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer import checkpoints
from trainer.config import config_from_run
from trainer.lora import apply_strategy, check_adapter_dir, load_adapter_weights, merge, read_adapter_info

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The run, adapter or destination cannot be used; the message says why."""


def run_adapter_dir(run_dir: Path) -> Path:
    """The final adapter of a run (`adapter/`), else its latest checkpoint."""
    adapter_dir = checkpoints.run_adapter_dir(run_dir)
    if adapter_dir is None:
        raise ExportError(f"{run_dir}: no adapter/ and no checkpoints/latest; has this run saved a checkpoint yet?")
    return check_adapter_dir(adapter_dir)


def adapted_model(run_dir: Path, weights: str | None = None) -> torch.nn.Module:
    """The run's base model with its adapter attached (a PeftModel), in eval mode on CPU.

    `weights` overrides the base weights recorded in the run (e.g. a local copy of the checkpoint).
    """
    from trainer.train import build_model

    cfg = config_from_run(Path(run_dir))
    adapter_dir = run_adapter_dir(Path(run_dir))
    info = read_adapter_info(adapter_dir)
    if info and info.get("model") != cfg.model:
        raise ExportError(f"{adapter_dir}: adapter was trained on {info.get('model')!r}, config says {cfg.model!r}")
    base = build_model(cfg.model, weights if weights is not None else cfg.weights,
                       weights_revision=cfg.weights_revision)
    model = apply_strategy(base, cfg.lora)
    load_adapter_weights(model, adapter_dir)
    return model.eval()


def export_merged(run_dir: str | Path, out_file: str | Path, weights: str | None = None) -> dict:
    """Merge the run's adapter into its base weights and write one safetensors file.

    The keys are the official VGGT ones (camera and depth heads; the point head is not trained and
    not exported), so `load_pretrained(out_file, heads=("camera", "depth"))` loads it strictly.
    """
    out_file = Path(out_file)
    if out_file.suffix != ".safetensors":
        raise ExportError(f"{out_file}: the merged export is a .safetensors file")
    model = adapted_model(Path(run_dir), weights)
    cfg = config_from_run(Path(run_dir))
    merged = merge(model)
    state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
    out_file.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": "vggt-merged/1",
        "model": cfg.model,
        "base_weights": str(cfg.weights),
        "strategy": cfg.lora.strategy,
        "run": str(Path(run_dir).resolve()),
    }
    tmp = out_file.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(out_file)
    log.info("wrote %s (%d tensors)", out_file, len(state))
    return {"file": str(out_file), "tensors": len(state), **metadata}


def push_adapter(run_dir: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload the run's adapter folder to a Hugging Face model repo; returns the repo URL."""
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError

    adapter_dir = run_adapter_dir(Path(run_dir))
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ExportError("HF_HUB_OFFLINE is set: unset it to push, or copy the adapter folder by hand: "
                          f"{adapter_dir}")
    token = token or huggingface_hub.get_token()
    if not token:
        raise ExportError("no Hugging Face token: run `huggingface-cli login` or set HF_TOKEN")
    api = huggingface_hub.HfApi(token=token)
    info = read_adapter_info(adapter_dir)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as staging:
            stage_for_hub(adapter_dir, Path(staging))
            api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                commit_message=f"VGGT LoRA adapter, strategy {info.get('strategy', '?')}, step {info.get('step', '?')}",
            )
    except HfHubHTTPError as exc:
        raise ExportError(f"hub refused the push to {repo_id}: {exc}") from None
    except (OSError, ConnectionError) as exc:  # requests' ConnectionError is an OSError
        raise ExportError(f"cannot reach the Hugging Face hub ({exc.__class__.__name__}); are you offline?") from None
    return str(url)


def hub_base_model(weights: str | None) -> str | None:
    """The hub repo the base weights came from: a repo id as is, a file inside the hub cache
    (`models--ORG--NAME/snapshots/...`) by its repo; None for random init or any other local file."""
    from trainer.vggt.loading import is_hub_id

    if not weights:
        return None
    if is_hub_id(weights):
        return weights
    cached = re.search(r"models--([^/]+?)--([^/]+)/snapshots/", Path(weights).expanduser().resolve().as_posix())
    return f"{cached[1]}/{cached[2]}" if cached else None


def stage_for_hub(adapter_dir: Path, staging: Path) -> str | None:
    """What `push` uploads: the adapter files, with `base_model` only when it is a hub repo (never a
    local path), and a model card. Returns the card's base_model (None: left out, with a note)."""
    from trainer.lora import ADAPTER_INFO_FILE

    info = read_adapter_info(adapter_dir)
    base = hub_base_model(info.get("weights"))
    for name in ("adapter_model.safetensors", ADAPTER_INFO_FILE):
        if (adapter_dir / name).exists():
            shutil.copy2(adapter_dir / name, staging / name)
    peft_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    peft_config["base_model_name_or_path"] = base
    (staging / "adapter_config.json").write_text(json.dumps(peft_config, indent=2) + "\n")
    (staging / "README.md").write_text(_model_card(info, base))
    return base


def _model_card(info: dict, base: str | None) -> str:
    front = ["---", "library_name: peft"] + ([f"base_model: {base}"] if base else []) + \
        ["tags:", "- vggt", "- lora", "- depth-estimation", "- eth3d", "---", ""]
    if base:
        revision = info.get("weights_revision")
        source = f"[{base}](https://huggingface.co/{base})" + (f" at revision `{revision}`" if revision else "")
    elif info.get("weights"):
        source = (f"a local checkpoint file (`{Path(str(info['weights'])).name}`) whose hub origin is unknown, so "
                  "this card names no `base_model`; attach the adapter to the same weights")
    else:
        source = f"a randomly initialised `{info.get('model')}` model (a test / demo run), so no `base_model`"
    body = [
        f"# VGGT LoRA adapter (strategy {info.get('strategy', '?')})", "",
        f"PEFT LoRA adapter for VGGT fine-tuned on ETH3D multi-view scenes with vggt-eth3d-lora, trained on {source}.",
        "",
        f"- model preset: `{info.get('model', '?')}`; step {info.get('step', '?')}",
        "- targets: " + ", ".join(f"`{t}`" for t in info.get("targets", [])),
        "",
    ]
    return "\n".join(front + body)


def describe_adapter(adapter_dir: Path) -> str:
    return json.dumps(read_adapter_info(adapter_dir), indent=1)
