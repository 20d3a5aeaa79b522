"""Training configuration: one dataclass per component, loaded from YAML, overridden with `--set`.

A YAML file may name a `base:` file (resolved relative to itself) and hold only what differs: the
base is loaded first and the file's mappings are merged over it, key by key (lists and scalars
replace). configs/base.yaml holds everything the strategies share; configs/strategy_{a,b,c}.yaml
are overlays of it. A run directory's config.yaml is always the fully resolved config.

Overrides take a dotted path (`optim.lr=1e-4`) or, when a leaf name is unique across sections, the
bare name (`lr=1e-4`, `seed=5`). Values are converted to the field's declared type, so `5e-5`
(a string to YAML 1.1) becomes a float. Every section is typed: an unknown key or a value of the
wrong type is a `ConfigError` naming the file and line of the offending key (the base's or the
overlay's, whichever set it), or the `--set` item.

Why no config library: pydantic (TypeAdapter over these dataclasses) or OmegaConf structured configs
would replace `_coerce` (~45 lines), but neither knows YAML line numbers (OmegaConf's loader drops the
node marks, pydantic sees plain dicts), so the key -> file:line map below and the translation of their
errors back to it stay; bare-name overrides (`lr=`), `weights=none` and int-valued floats (`2.0` for an
int) would need extra code; and each section would need `extra="forbid"` plumbing plus a new direct
dependency. Net: no fewer lines, a heavier import and changed edge cases, so we keep this small coercer.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer.errors import UserError

# The model presets (trainer.vggt.VGGTConfig.preset builds them; a test keeps the two lists equal), the default first.
MODEL_PRESETS = ("vggt-1b", "tiny")


class ConfigError(UserError, ValueError):
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
class LossConfig:
    """Weights of each term in the objective plus the official per-loss hyper-parameters (trainer.losses).

    Defaults are the project's (camera 2, depth terms 5 each); ``LossConfig.official()`` is the
    official recipe, ``5 * camera + 1 * (conf + reg + grad)``. Point terms are off (weight 0) unless
    set, and only computed when the model returns ``world_points``.
    """

    camera: float = 2.0
    depth_conf: float = 5.0
    depth_reg: float = 5.0
    depth_grad: float = 5.0
    point_conf: float = 0.0
    point_reg: float = 0.0
    point_grad: float = 0.0
    camera_loss_type: str = "l1"  # l1 | l2
    camera_gamma: float = 0.6
    weight_trans: float = 1.0
    weight_rot: float = 1.0
    weight_focal: float = 0.5
    depth_gamma: float = 1.0
    depth_alpha: float = 0.2
    depth_valid_range: float = 0.98
    depth_gradient_loss: str = "grad"  # grad | normal | their conf variants (grad_conf) | none
    point_gamma: float = 1.0
    point_alpha: float = 0.2
    point_valid_range: float = 0.98
    point_gradient_loss: str = "normal"

    @classmethod
    def official(cls) -> LossConfig:
        return cls(camera=5.0, depth_conf=1.0, depth_reg=1.0, depth_grad=1.0)

    @property
    def uses_points(self) -> bool:
        return any(w != 0 for w in (self.point_conf, self.point_reg, self.point_grad))


@dataclass
class TrainConfig:
    seed: int = 0
    model: str = "vggt-1b"  # "vggt-1b" | "tiny"
    weights: str | None = None  # pretrained source for load_pretrained (path or hub id); None: random init
    weights_revision: str | None = None  # hub commit/branch/tag of a hub-id `weights` (None: the pinned default)
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
    loss: LossConfig = field(default_factory=LossConfig)


SECTIONS = {"data": DataConfig, "lora": LoraConfig, "optim": OptimConfig, "loss": LossConfig}
GRADIENT_LOSSES = ("grad", "grad_conf", "normal", "normal_conf", "none", "")  # trainer.losses.regression_loss


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
            return float(value) if tp is float else _to_int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as exc:  # e.g. --set 'lora.targets=[a' (an unclosed list)
                raise ConfigError(
                    f"{where}: expected a YAML list such as [a, b], got {value!r} ({' '.join(str(exc).split())})"
                ) from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
        item_type = args[0] if args else str
        return origin(_coerce(v, item_type, where) for v in value)
    raise ConfigError(f"{where}: unsupported field type {tp!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, int):
        return value
    as_float = float(value)
    if not as_float.is_integer():
        raise ValueError(value)
    return int(as_float)


def _unknown_key(dotted: str, known: list[str], listed: list[str] | None = None) -> str:
    close = difflib.get_close_matches(dotted, known, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {dotted!r}{hint}; known: {', '.join(sorted(listed or known))}"


# ------------------------------------------------------------------------------------- YAML + base


def _key_lines(path: Path, text: str) -> dict[str, str]:
    """Dotted key → "file:line" (1-based) of the key, for error messages."""
    where: dict[str, str] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}{key_node.value}"
                where[dotted] = f"{path}:{key_node.start_mark.line + 1}"
                walk(value_node, dotted + ".")

    walk(root, "")
    return where


def read_yaml(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """A config file's mapping with its `base:` chain merged in, and dotted key → "file:line"."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    where = _key_lines(path, text)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level must be a mapping")
    if "base" not in data:
        return data, where
    base, at = data.pop("base"), where.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{at}: base must name a YAML file (relative to {path.parent}), got {base!r}")
    base_path = path.parent / base
    if base_path.resolve() in _chain + (path.resolve(),):
        raise ConfigError(f"{at}: base {base!r} includes itself ({' -> '.join(map(str, _chain + (path, base_path)))})")
    if not base_path.is_file():
        raise ConfigError(f"{at}: base file {base_path} does not exist")
    merged, merged_where = read_yaml(base_path, _chain + (path.resolve(),))
    _merge(merged, merged_where, data, where, "")
    return merged, merged_where


def _merge(dst: dict, dst_where: dict[str, str], src: dict, src_where: dict[str, str], prefix: str) -> None:
    """`src` over `dst` in place: mappings merge key by key, everything else replaces."""
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], dst_where, value, src_where, dotted + ".")
            continue
        dst[key] = value
        for table, keep in ((dst_where, False), (src_where, True)):
            for k in [k for k in table if k == dotted or k.startswith(dotted + ".")]:
                if keep:
                    dst_where[k] = table[k]
                else:
                    del table[k]


def _apply_mapping(cfg: Any, mapping: dict[str, Any], where: Callable[[str], str], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{where(dotted)}: {_unknown_key(dotted, [prefix + n for n in names])}")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where(dotted)}: {dotted!r} must be a mapping, got {value!r}")
            _apply_mapping(current, value, where, dotted + ".")
        else:
            setattr(cfg, key, _coerce(value, hints[key], f"{where(dotted)}: {dotted}"))


def apply_yaml(cfg: TrainConfig, path: Path) -> None:
    data, where = read_yaml(Path(path))
    _apply_mapping(cfg, data, lambda dotted: where.get(dotted, f"{path}:1"))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults ← YAML file (and its base) ← `key=value` overrides, validated."""
    cfg = TrainConfig()
    if path is not None:
        apply_yaml(cfg, Path(path))
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------- overrides


def leaf_paths(cfg: TrainConfig) -> dict[str, str]:
    """Every settable leaf as dotted path (`optim.lr`), plus unique bare names → dotted path."""
    paths: dict[str, str] = {}
    bare: dict[str, list[str]] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        section = dataclasses.is_dataclass(value)
        subs = [f"{f.name}.{sub.name}" for sub in dataclasses.fields(value)] if section else [f.name]
        for dotted in subs:
            paths[dotted] = dotted
            bare.setdefault(dotted.rpartition(".")[2], []).append(dotted)
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
        if key not in paths:
            section = key.partition(".")[0]
            if "." in key and section in SECTIONS:
                known = [p for p in paths if p.startswith(section + ".")]
                raise ConfigError(f"--set {item!r}: {_unknown_key(key, known)}")
            top = [p for p in paths if "." not in p and paths[p] == p] + [f"{name}.*" for name in SECTIONS]
            raise ConfigError(f"--set {item!r}: {_unknown_key(key, list(paths), top)}")
        section, _, leaf = paths[key].rpartition(".")
        target = getattr(cfg, section) if section else cfg
        hints = typing.get_type_hints(type(target))
        setattr(target, leaf, _coerce(raw, hints[leaf], f"--set {item!r}"))


def validate(cfg: TrainConfig) -> None:
    loss = cfg.loss
    checks = [
        (cfg.model in MODEL_PRESETS, f"model must be {' or '.join(map(repr, MODEL_PRESETS))}, got {cfg.model!r}"),
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
        (loss.camera_loss_type in ("l1", "l2"), f"loss.camera_loss_type must be l1|l2, got {loss.camera_loss_type!r}"),
        (
            loss.depth_gradient_loss in GRADIENT_LOSSES and loss.point_gradient_loss in GRADIENT_LOSSES,
            f"loss.depth_gradient_loss / loss.point_gradient_loss must be one of {'|'.join(GRADIENT_LOSSES[:-1])}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# ------------------------------------------------------------------------------------- run directories


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)
    data["optim"]["betas"] = list(cfg.optim.betas)
    return data


def dump_config(cfg: TrainConfig, path: Path, extra: dict[str, Any] | None = None) -> None:
    """The fully resolved config (no `base:`), so a run directory is self-contained for --resume."""
    data = to_dict(cfg)
    if extra:
        data.update(extra)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def config_from_run(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The resolved config a run was started with (its `config.yaml`), plus overrides."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{path}: missing; is {run_dir} a training run directory?")
    data, where = read_yaml(path)
    data.pop("meta", None)  # written by the trainer (git sha, versions), not a setting
    cfg = TrainConfig()
    _apply_mapping(cfg, data, lambda dotted: where.get(dotted, f"{path}:1"))
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
