"""A trained run → merged VGGT weights (official key names), or its adapter → the Hugging Face hub."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from trainer.config import config_from_run
from trainer.errors import UserError
from trainer.evaluation.runs import build_base, find_adapter, trained_on
from trainer.lora import apply_strategy, load_adapter_weights, merge, read_adapter_info

log = logging.getLogger(__name__)


class ExportError(UserError, RuntimeError):
    """The run, adapter or destination cannot be used; the message says why."""


def adapted_model(run_dir: Path, weights: str | None = None) -> torch.nn.Module:
    """The run's base model with its adapter attached (a PeftModel), in eval mode on CPU.

    `weights` overrides the base weights recorded in the run (e.g. a local copy of the checkpoint). The
    base is the one the run was trained on (trainer.evaluation.runs: revision, and the seed of a random init).
    """
    cfg = config_from_run(Path(run_dir))
    adapter_dir = find_adapter(run=run_dir)
    info = read_adapter_info(adapter_dir)
    if info and info.get("model") != cfg.model:
        raise ExportError(f"{adapter_dir}: adapter was trained on {info.get('model')!r}, config says {cfg.model!r}")
    spec = trained_on(run=run_dir, weights=weights, model_name=cfg.model)
    model = apply_strategy(build_base(spec), cfg.lora)
    load_adapter_weights(model, adapter_dir)
    return model.eval()


def export_merged(run_dir: str | Path, out_file: str | Path, weights: str | None = None) -> dict:
    """Merge the run's adapter into its base weights and write one safetensors file.

    The keys are the official VGGT ones (camera and depth heads; the point head is not trained and
    not exported), so `load_pretrained(out_file, heads=("camera", "depth"))` loads it strictly.
    """
    out_file = Path(out_file)
    if out_file.suffix != ".safetensors":
        raise ExportError(f"{out_file}: the merged export is a .safetensors file; name --out FILE.safetensors")
    _check_writable(out_file)  # before the model is built
    adapter_dir = find_adapter(run=run_dir)
    info = read_adapter_info(adapter_dir)
    model = adapted_model(Path(run_dir), weights)
    cfg = config_from_run(Path(run_dir))
    merged = merge(model)
    state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
    state.update(_base_point_head(weights if weights is not None else cfg.weights, cfg.model))
    metadata = {
        "format": "vggt-merged/1",
        "model": cfg.model,
        "base_weights": str(cfg.weights),
        "strategy": cfg.lora.strategy,
        "step": str(info.get("step", "?")),
        "adapter": str(adapter_dir),
        "run": str(Path(run_dir).resolve()),
    }
    _atomic_save(state, out_file, metadata)
    log.info("wrote %s (%d tensors, adapter of step %s)", out_file, len(state), metadata["step"])
    return {"file": str(out_file), "tensors": len(state), **metadata}


def _check_writable(out_file: Path) -> None:
    folder = out_file.parent
    while not folder.exists():
        folder = folder.parent
    if out_file.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"{out_file}: cannot write there ({folder} is not a writable folder); choose another --out")


def _base_point_head(weights: str | None, model_name: str) -> dict[str, torch.Tensor]:
    """The base checkpoint's point head (not trained, so exported as it was): with it the merged file is
    a complete VGGT checkpoint that `load_pretrained(file)` loads with its default heads. A random-init
    base has none; its export then loads with heads=("camera", "depth")."""
    if not weights:
        return {}
    from trainer.vggt.loading import read_state_dict, resolve_checkpoint

    head = {}
    for key, tensor in read_state_dict(resolve_checkpoint(weights)).items():  # memory-mapped: only the head is read
        name = key.removeprefix("model.")  # the tiny fixture file keeps its weights under model.
        if name.startswith("point_head."):
            head[name] = (tensor.float() if tensor.is_floating_point() else tensor).contiguous()
    return head


def _atomic_save(state: dict[str, torch.Tensor], out_file: Path, metadata: dict[str, str]) -> None:
    """Write to a temp file beside the target, then rename: a killed export leaves the old file (or none)
    and a `.tmp` that the next export removes. Mode 0666 minus the umask, like any new file."""
    for stale in out_file.parent.glob(f".{out_file.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.parent / f".{out_file.name}.{os.getpid()}.tmp"
    try:
        save_file(state, str(tmp), metadata=metadata)
        _sort_metadata(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        tmp.replace(out_file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _sort_metadata(path: Path) -> None:
    """safetensors (Rust) writes `__metadata__` from a hash map, in an order that changes from process to process,
    so two exports of one adapter would differ in their header bytes. Rewrite that map with sorted keys in place:
    the same entries, so the same length, and the tensor offsets do not move. Byte-identical exports follow."""
    prefix = b'{"__metadata__":'
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = f.read(size)
        if not header.startswith(prefix):
            return
        text = header.decode("utf-8")
        metadata, end = json.JSONDecoder().raw_decode(text, len(prefix))
        old = text[len(prefix) : end].encode("utf-8")
        new = json.dumps(dict(sorted(metadata.items())), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(new) == len(old) and json.loads(new) == metadata:
            f.seek(8 + len(prefix))
            f.write(new)


def push_adapter(run_dir: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload the run's adapter folder to a Hugging Face model repo; returns the repo URL."""
    import huggingface_hub
    import huggingface_hub.constants  # huggingface_hub >= 1.0 loads submodules lazily
    from huggingface_hub.utils import HfHubHTTPError

    adapter_dir = find_adapter(run=run_dir)
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ExportError(f"HF_HUB_OFFLINE is set: unset it to push, or copy the adapter folder by hand: {adapter_dir}")
    token = token or huggingface_hub.get_token()
    if not token:
        raise ExportError("no Hugging Face token: run `hf auth login` or set HF_TOKEN")
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
    except Exception as exc:  # the transport's errors (httpx in huggingface_hub 2.x, requests before): no network
        raise ExportError(
            f"cannot reach the Hugging Face hub ({exc.__class__.__name__}: {exc}); are you offline? "
            f"Or copy the adapter folder by hand: {adapter_dir}"
        ) from None
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
    front = (
        ["---", "library_name: peft"]
        + ([f"base_model: {base}"] if base else [])
        + ["tags:", "- vggt", "- lora", "- depth-estimation", "- eth3d", "---", ""]
    )
    if base:
        revision = info.get("weights_revision")
        source = f"[{base}](https://huggingface.co/{base})" + (f" at revision `{revision}`" if revision else "")
    elif info.get("weights"):
        source = (
            f"a local checkpoint file (`{Path(str(info['weights'])).name}`) whose hub origin is unknown, so "
            "this card names no `base_model`; attach the adapter to the same weights"
        )
    else:
        source = f"a randomly initialised `{info.get('model')}` model (a test / demo run), so no `base_model`"
    body = [
        f"# VGGT LoRA adapter (strategy {info.get('strategy', '?')})",
        "",
        f"PEFT LoRA adapter for VGGT fine-tuned on ETH3D multi-view scenes with vggt-eth3d-lora, trained on {source}.",
        "",
        f"- model preset: `{info.get('model', '?')}`; step {info.get('step', '?')}",
        "- targets: " + ", ".join(f"`{t}`" for t in info.get("targets", [])),
        "",
    ]
    return "\n".join(front + body)
