"""Training configuration: one dataclass per component, loaded from YAML, overridden with `--set`.

Overrides take a dotted path (`optim.lr=1e-4`) or, when a leaf name is unique across sections, the
bare name (`lr=1e-4`, `seed=5`). Values are converted to the field's declared type, so `5e-5`
(a string to YAML 1.1) becomes a float. Unknown keys are errors that name the file and line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the source."""


@dataclass
class DataConfig:
    shards: str = ""  # dataset directory written by the data engine (manifest.json + *.tar)
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 1  # sequences per micro-batch per process
    frames: int | None = None  # use the first N frames of every window (None: all frames)
    shuffle_buffer: int = 32  # sample shuffle buffer per worker (0: no sample shuffle)
    num_workers: int = 2  # DataLoader workers per process; #shards must be >= world_size x workers
    prefetch_factor: int = 2
    pin_memory: bool = True
    decode_threads: int | None = None  # frames decoded in parallel per loading process (None: CPUs / max(workers, 1))


@dataclass
class LoraConfig:
    # Regexes, full-matched against module names; only `type(m) is nn.Linear or nn.Conv2d` modules
    # are adapted. `{upper_half}` / `{all_blocks}` expand to the aggregator block indices of the
    # model at hand (12-23 / 0-23 for VGGT-1B), so the same strategy runs on the tiny test model.
    # The depth head's two ConvTranspose2d layers (resize_layers.0/1) stay frozen: PEFT has no LoRA
    # for ConvTranspose2d.
    strategy: str = "b"
    targets: list[str] = field(
        default_factory=lambda: [
            r"aggregator\.(frame|global)_blocks\.{upper_half}\.(attn\.(qkv|proj)|mlp\.fc[12])",
            r"depth_head\..*",
        ]
    )
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.1


@dataclass
class OptimConfig:
    lr: float = 5e-5
    min_lr: float = 1e-6  # cosine floor
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_frac: float = 0.1  # linear warm-up over this fraction of max_steps, then cosine
    grad_clip: float = 1.0
    accum_steps: int = 1  # micro-batches per optimizer step (each a full loader batch; no chunking)


@dataclass
class TrainConfig:
    seed: int = 0
    model: str = "vggt-1b"  # "vggt-1b" | "tiny"
    weights: str | None = None  # pretrained source for load_pretrained (path or hub id); None: random init
    out: str = "runs/default"
    max_steps: int = 1000  # total optimizer steps of the run (a resumed run continues up to this)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | bf16 | fp32
    activation_checkpointing: bool = False
    # With checkpointing, the DPT head is recomputed this many frames at a time: each frame of a
    # chunk holds ~1.7 GB of fp32 activations at 518² during its recomputation; bigger chunks are
    # faster where per-frame convolutions are too small to fill the device.
    dpt_checkpoint_frames: int = 1
    compile: bool = False  # torch.compile the model
    log_every: int = 10
    val_every: int = 200  # steps between validations (0: only at the end)
    val_batches: int | None = None  # cap on validation batches (None: the whole val split)
    save_every: int = 200  # steps between adapter + resume-state checkpoints
    keep_checkpoints: int = 3
    max_nonfinite_in_a_row: int = 5  # abort after this many consecutive skipped (non-finite) steps
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: dict[str, Any] = field(default_factory=dict)  # passed to trainer.losses.LossConfig(**loss)


SECTIONS = {"data": DataConfig, "lora": LoraConfig, "optim": OptimConfig}


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML or a `--set` string) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if tp is Any:
        return _parse_scalar(value) if isinstance(value, str) else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        try:
            number = float(value) if tp is float else _to_int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        return number
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        item_type = args[0] if args else Any
        return origin(_coerce(v, item_type, where) for v in value)
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): (_parse_scalar(v) if isinstance(v, str) else v) for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    as_float = float(value)
    if not as_float.is_integer():
        raise ValueError(value)
    return int(as_float)


def _parse_scalar(text: str) -> Any:
    """YAML scalar, but with `1e-4`-style floats that YAML 1.1 would leave as strings."""
    parsed = yaml.safe_load(text) if text.strip() else text
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


def _key_lines(path: Path, text: str) -> dict[str, int]:
    """Dotted key → 1-based line number, for error messages."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}{key_node.value}"
                lines[dotted] = key_node.start_mark.line + 1
                walk(value_node, dotted + ".")

    walk(root, "")
    return lines


def _apply_mapping(cfg: Any, mapping: dict[str, Any], where: Any, prefix: str = "") -> None:
    hints = _type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{where(dotted)}: unknown key {dotted!r} (known: {', '.join(sorted(names))})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where(dotted)}: {dotted!r} must be a mapping")
            _apply_mapping(current, value, where, dotted + ".")
        else:
            setattr(cfg, key, _coerce(value, hints[key], where(dotted)))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults ← YAML file ← `key=value` overrides, validated."""
    cfg = TrainConfig()
    if path is not None:
        apply_yaml(cfg, Path(path))
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def apply_yaml(cfg: TrainConfig, path: Path) -> None:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    lines = _key_lines(path, text)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    _apply_mapping(cfg, data, lambda dotted: f"{path}:{lines.get(dotted, 1)}")


def leaf_paths(cfg: TrainConfig) -> dict[str, str]:
    """Every settable leaf as dotted path (`optim.lr`), plus unique bare names → dotted path."""
    paths: dict[str, str] = {}
    bare: dict[str, list[str]] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            for sub in dataclasses.fields(value):
                dotted = f"{f.name}.{sub.name}"
                paths[dotted] = dotted
                bare.setdefault(sub.name, []).append(dotted)
        else:
            paths[f.name] = f.name
            bare.setdefault(f.name, []).append(f.name)
    for name, candidates in bare.items():
        if name not in paths and len(candidates) == 1:
            paths[name] = candidates[0]
    return paths


def apply_overrides(cfg: TrainConfig, overrides: list[str] | tuple[str, ...]) -> None:
    paths = leaf_paths(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key.startswith("loss."):
            cfg.loss[key[5:]] = _parse_scalar(raw)
            continue
        if key not in paths:
            raise ConfigError(f"--set {item!r}: unknown key {key!r}; known: {', '.join(sorted(paths))}")
        section, _, leaf = paths[key].rpartition(".")
        target = getattr(cfg, section) if section else cfg
        hints = _type_hints(type(target))
        setattr(target, leaf, _coerce(raw, hints[leaf], f"--set {item!r}"))


def validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.model in ("vggt-1b", "tiny"), f"model must be 'vggt-1b' or 'tiny', got {cfg.model!r}"),
        (cfg.precision in ("auto", "bf16", "fp32"), f"precision must be auto|bf16|fp32, got {cfg.precision!r}"),
        (cfg.max_steps >= 1, "max_steps must be >= 1"),
        (cfg.dpt_checkpoint_frames >= 1, "dpt_checkpoint_frames must be >= 1"),
        (cfg.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (cfg.data.num_workers >= 0, "data.num_workers must be >= 0"),
        (cfg.data.frames is None or cfg.data.frames >= 1, "data.frames must be >= 1"),
        (cfg.optim.accum_steps >= 1, "optim.accum_steps must be >= 1"),
        (0.0 <= cfg.optim.warmup_frac < 1.0, "optim.warmup_frac must be in [0, 1)"),
        (cfg.optim.lr > 0 and cfg.optim.min_lr >= 0, "optim.lr must be > 0 and optim.min_lr >= 0"),
        (cfg.lora.rank >= 1, "lora.rank must be >= 1"),
        (bool(cfg.lora.targets), "lora.targets is empty: name at least one module regex"),
        (cfg.max_nonfinite_in_a_row >= 1, "max_nonfinite_in_a_row must be >= 1"),
        (cfg.save_every >= 0 and cfg.val_every >= 0, "save_every/val_every must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)
    data["optim"]["betas"] = list(cfg.optim.betas)
    return data


def dump_config(cfg: TrainConfig, path: Path, extra: dict[str, Any] | None = None) -> None:
    data = to_dict(cfg)
    if extra:
        data.update(extra)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def config_from_run(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The resolved config a run was started with (its `config.yaml`), plus overrides."""
    path = run_dir / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: missing; is {run_dir} a training run directory?")
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("meta", None)  # written by the trainer (git sha, versions), not a setting
    cfg = TrainConfig()
    lines = _key_lines(path, path.read_text())
    _apply_mapping(cfg, data, lambda dotted: f"{path}:{lines.get(dotted, 1)}")
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def split_overrides(groups: list[str] | tuple[str, ...]) -> list[str]:
    """`--set` arguments → key=value items; one argument may hold several (`--set "seed=5 lr=1e-4"`).

    A whitespace-separated token without '=' continues the previous value (`betas=[0.9, 0.999]`).
    """
    items: list[str] = []
    for group in groups:
        for token in group.split():
            if "=" in token or not items:
                items.append(token)
            else:
                items[-1] += " " + token
    return items
