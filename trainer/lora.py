"""Strategies → PEFT LoRA: target resolution, parameter counting, adapter save/load/merge.

Targets are regexes full-matched against module names and restricted to modules whose type is
exactly `nn.Linear` or `nn.Conv2d` (what PEFT's LoRA supports here). The depth head's two
`ConvTranspose2d` upsamplers (`resize_layers.0/1`) therefore stay frozen: PEFT has no LoRA for them.
`peft` is imported lazily (about 4 s, it pulls in transformers).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer.config import ConfigError, LoraConfig
from trainer.errors import UserError

if TYPE_CHECKING:
    from peft import PeftModel

ADAPTER_FORMAT = "vggt-eth3d-lora/1"
ADAPTER_INFO_FILE = "vggt_adapter.json"  # base model, strategy and step, next to PEFT's two files
LORA_TYPES = (nn.Linear, nn.Conv2d)


def aggregator_depth(model: nn.Module) -> int:
    """Number of frame blocks in the aggregator (24 for VGGT-1B)."""
    pattern = re.compile(r"aggregator\.frame_blocks\.(\d+)")
    indices = {int(m.group(1)) for name, _ in model.named_modules() if (m := pattern.fullmatch(name))}
    if not indices:
        raise ValueError("model has no aggregator.frame_blocks.N modules; is it a VGGT?")
    return max(indices) + 1


def expand_targets(patterns: list[str], depth: int) -> list[str]:
    """Replace `{upper_half}` / `{all_blocks}` with the block-index alternation for this depth."""

    def alternation(indices: range) -> str:
        return "(" + "|".join(str(i) for i in indices) + ")"

    fills = {"upper_half": alternation(range(depth // 2, depth)), "all_blocks": alternation(range(depth))}
    expanded = []
    for pattern in patterns:
        for key, value in fills.items():
            pattern = pattern.replace("{" + key + "}", value)
        expanded.append(pattern)
    return expanded


def resolve_targets(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """Names of the modules a strategy adapts, in model order; every regex must match something."""
    patterns = expand_targets(cfg.targets, aggregator_depth(model))
    compiled = []
    for raw, pattern in zip(cfg.targets, patterns, strict=True):
        try:
            compiled.append((raw, re.compile(pattern)))
        except re.error as exc:
            raise ConfigError(f"lora.targets: invalid regex {raw!r}: {exc}") from None
    hits = {raw: 0 for raw in cfg.targets}
    names = []
    for name, module in model.named_modules():
        if type(module) not in LORA_TYPES:
            continue
        matched = [raw for raw, rx in compiled if rx.fullmatch(name)]
        for raw in matched:
            hits[raw] += 1
        if matched:
            names.append(name)
    empty = [raw for raw, n in hits.items() if n == 0]
    if empty:
        # ConfigError (a ValueError): the CLI shows it as one line, like every other config mistake
        raise ConfigError(f"lora.targets {empty} match no nn.Linear/nn.Conv2d module of this model")
    return names


def lora_size(module: nn.Module, rank: int) -> int:
    """LoRA parameters PEFT adds to one module: r·(in+out), or r·(in·k·k + out) for a Conv2d."""
    if type(module) is nn.Linear:
        return rank * (module.in_features + module.out_features)
    if type(module) is nn.Conv2d:
        kh, kw = module.kernel_size
        return rank * (module.in_channels // module.groups * kh * kw + module.out_channels)
    raise TypeError(f"no LoRA for {type(module).__name__}")


@dataclass
class ParamReport:
    strategy: str
    modules: int
    linear_modules: int
    conv_modules: int
    trainable: int
    total: int  # base + LoRA parameters
    adapter_bytes: int  # fp32 safetensors payload

    def lines(self) -> list[str]:
        return [
            f"strategy {self.strategy}: LoRA on {self.modules} modules "
            f"({self.linear_modules} Linear, {self.conv_modules} Conv2d)",
            f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
            f"trainable%: {100 * self.trainable / self.total:.4f}",
            f"adapter size: {self.adapter_bytes / 2**20:.2f} MiB (fp32 safetensors)",
        ]


def param_report(model: nn.Module, cfg: LoraConfig) -> ParamReport:
    """Counts of a PEFT-wrapped model (works on a meta-device model: nothing is allocated)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lora_modules = [m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
    linear = sum(1 for m in lora_modules if isinstance(m.get_base_layer(), nn.Linear))
    return ParamReport(
        strategy=cfg.strategy,
        modules=len(lora_modules),
        linear_modules=linear,
        conv_modules=len(lora_modules) - linear,
        trainable=trainable,
        total=total,
        adapter_bytes=4 * trainable,
    )


def apply_strategy(model: nn.Module, cfg: LoraConfig) -> PeftModel:
    """Wrap `model` (base weights already loaded) with LoRA adapters; only LoRA params train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = resolve_targets(model, cfg)
    peft_cfg = PeftLoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        # One anchored alternation of the exact module names (PEFT full-matches a string). A list would
        # be shrunk by PEFT to common suffixes when long (>20), and `projects.0` would then also adapt
        # the point head of a model built with it (evaluation): the string names exactly these modules.
        target_modules="(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")",
        bias="none",
    )
    expected = sum(lora_size(model.get_submodule(n), cfg.rank) for n in names)
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = get_peft_model(model, peft_cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    if trainable != expected:  # guards against PEFT version drift (extra biases, DoRA magnitudes...)
        raise RuntimeError(f"PEFT made {trainable:,} params trainable, expected {expected:,} LoRA params")
    return peft_model


def save_adapter(peft_model: PeftModel, out_dir: Path, info: dict[str, Any]) -> None:
    """PEFT's `adapter_config.json` + `adapter_model.safetensors`, plus `vggt_adapter.json`.

    `info` records the base model (preset + weights source), the strategy and the step.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    base = info.get("weights") or f"random-init:{info.get('model')}"
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    peft_model.save_pretrained(str(out_dir), save_embedding_layers=False)
    (out_dir / ADAPTER_INFO_FILE).write_text(json.dumps({"format": ADAPTER_FORMAT, **info}, indent=1) + "\n")


def read_adapter_info(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / ADAPTER_INFO_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None


class AdapterMismatchError(UserError, ValueError):
    """An adapter's weights do not fit its config / the model (missing or unexpected LoRA keys)."""


def _check_adapter_keys(peft_model: PeftModel, state: dict[str, torch.Tensor], adapter_dir: Path) -> None:
    """The saved LoRA tensors must be exactly the model's adapter tensors, with the same shapes: PEFT only
    warns, and a model with half its adapter at the init value would be evaluated as if trained."""
    from peft import get_peft_model_state_dict

    expected = get_peft_model_state_dict(peft_model, save_embedding_layers=False)  # as saved; "auto" asks the hub
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = [
            f"{len(v)} {what} (e.g. {v[0]})"
            for what, v in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
            if v
        ]
        raise AdapterMismatchError(
            f"{adapter_dir / 'adapter_model.safetensors'}: the weights do not fit "
            f"{adapter_dir / 'adapter_config.json'}: {', '.join(parts)} adapter keys; the two files come from "
            "different runs: copy both from one run's adapter/ or checkpoints/step_N/"
        )


def check_adapter_dir(adapter_dir: Path) -> Path:
    adapter_dir = Path(adapter_dir)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter_dir / name).exists():
            raise FileNotFoundError(f"{adapter_dir / name}: missing; not a PEFT adapter directory")
    return adapter_dir


def load_adapter(model: nn.Module, adapter_dir: str | Path, trainable: bool = False) -> PeftModel:
    """Attach a saved adapter to a base model that already holds the base weights."""
    from peft import PeftModel
    from safetensors.torch import load_file

    adapter_dir = check_adapter_dir(Path(adapter_dir))
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    import warnings

    with warnings.catch_warnings():  # PEFT warns about missing keys; the check below makes that an error
        warnings.simplefilter("ignore")
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    _check_adapter_keys(peft_model, {k: v for k, v in state.items()}, adapter_dir)
    return peft_model


def load_adapter_weights(peft_model: PeftModel, adapter_dir: Path) -> None:
    """Load saved LoRA weights into an already wrapped model (same strategy), e.g. on resume."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter_dir = check_adapter_dir(adapter_dir)
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(peft_model, state)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise AdapterMismatchError(
            f"{adapter_dir}: adapter does not fit the model (missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]})"
        )


def merge(peft_model: PeftModel) -> nn.Module:
    """Fold the LoRA deltas into the base weights; returns the plain model (official key names)."""
    return peft_model.merge_and_unload()


def param_counts_on_meta(model_name: str, cfg: LoraConfig) -> ParamReport:
    """Strategy counts on a meta-device model (camera + depth heads): no weights are allocated."""
    from trainer.vggt import VGGT, VGGTConfig

    with torch.device("meta"):
        model = VGGT(VGGTConfig.preset(model_name), heads=("camera", "depth"))
        peft_model = apply_strategy(model, cfg)
    return param_report(peft_model, cfg)
