"""`python -m trainer`: thin click front end; every command calls a library function."""

from __future__ import annotations

import click

from trainer.config import MODEL_PRESETS  # yaml only: `--help` stays free of torch

DEBUG_ENV = "TRAINER_DEBUG"


def _user_errors() -> tuple[type[Exception], ...]:
    """What the group shows as one line: the trainer's UserError (trainer/errors.py lists them), the shard
    format's ShardError and OSError (a file the user named). Imported lazily: `--help` imports no torch."""
    from shardformat import ShardError
    from trainer.errors import UserError

    return (UserError, ShardError, OSError)


def one_line(exc: BaseException) -> str:
    """The message of a user error on one line. An error raised in a DataLoader worker arrives with the
    worker's traceback in its text: keep the original message only."""
    text = str(exc)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    text = " ".join(text.split())
    name = type(exc).__name__
    return text if name in ("OSError", "FileExistsError", "FileNotFoundError", "PermissionError") else f"{name}: {text}"


def _debug(ctx: click.Context) -> bool:
    """`trainer --debug ...` or TRAINER_DEBUG=1: show the traceback of a user error (as `dataengine`)."""
    import os

    return bool(ctx.params.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


class _Group(click.Group):
    """Every command's user errors end in ONE `Error: ...` line (caught here, once); bugs keep their traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            if _debug(ctx) or not isinstance(exc, _user_errors()):
                raise
            raise click.ClickException(one_line(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vggt-eth3d-lora")
@click.option("--debug", is_flag=True, help=f"Show the traceback of an error (or set {DEBUG_ENV}=1).")
def main(debug: bool) -> None:
    """VGGT LoRA fine-tuning on pre-built shards: train, params, memory, eval, export, push."""


def _check_device(value: str | None) -> str | None:
    """`--device` names a device type torch knows and, for CUDA, one this machine has."""
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except RuntimeError:
        raise click.BadParameter(f"{value!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise click.BadParameter(
            f"{value!r}: this machine has {torch.cuda.device_count()} usable CUDA device(s) "
            f"(torch {torch.__version__}); use --device cpu"
        )
    return value


# --- eval -----------------------------------------------------------------------------------------------
@main.command("eval")
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False), help="Shard dataset directory.")
@click.option("--split", default=None, help="Shard split to evaluate [default: val; test with --protocol].")
@click.option(
    "--run", "run_dir", type=click.Path(exists=True, file_okay=False), help="Training run directory (its adapter/)."
)
@click.option("--adapter", "adapter_dir", type=click.Path(exists=True, file_okay=False), help="PEFT adapter directory.")
@click.option(
    "--weights", default=None, help="Base weights (path or hub id); default: the one the adapter was trained on."
)
@click.option(
    "--model",
    "model_name",
    type=click.Choice(MODEL_PRESETS),
    default=None,
    help="Model preset; default: the adapter's.",
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option(
    "--alignment",
    type=click.Choice(["sequence", "median", "lsq", "none"]),
    default="sequence",
    show_default=True,
    help="Depth scale alignment (sequence = one median scale per window).",
)
@click.option(
    "--max-pictures", default=4, type=click.IntRange(min=0), show_default=True, help="Windows drawn as PNG grids."
)
@click.option("--max-batches", default=None, type=click.IntRange(min=1), help="Stop after this many batches.")
@click.option("--batch-size", default=1, type=click.IntRange(min=1), show_default=True)
@click.option(
    "--device",
    default=None,
    callback=lambda ctx, param, value: _check_device(value),
    help="cuda, cuda:1, cpu; default: cuda if available.",
)
@click.option(
    "--protocol",
    default=None,
    metavar="NAME[,NAME]",
    help="Published ETH3D protocols instead of the window report: eth3d-pose, eth3d-pointmap, "
    "eth3d-mvd or all (docs/evaluation.md). Without --run/--adapter: the base model alone.",
)
@click.option(
    "--pointmap-alignment",
    type=click.Choice(["umeyama", "ransac"]),
    default="umeyama",
    show_default=True,
    help="--protocol eth3d-pointmap: Sim(3) fit (ransac = our robust variant).",
)
@click.option(
    "--align-conf-quantile",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="--protocol eth3d-pointmap: fit on valid pixels at or above this "
    "confidence quantile (0 = all valid pixels, as published).",
)
@click.option(
    "--in-sample",
    is_flag=True,
    help="--protocol with an adapter on the split it was trained on: run anyway, in a report marked "
    "IN-SAMPLE without published figures (refused without this flag).",
)
def eval_command(
    shards,
    split,
    run_dir,
    adapter_dir,
    weights,
    model_name,
    out_dir,
    alignment,
    max_pictures,
    max_batches,
    batch_size,
    device,
    protocol,
    pointmap_alignment,
    align_conf_quantile,
    in_sample,
) -> None:
    """Base vs adapter on a shard split: metrics.json, report.md and PNGs in --out."""
    import logging

    from trainer.evaluate import EvalConfig, evaluate_run

    _check_mode_options(click.get_current_context(), protocol is not None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if protocol is not None:
        _protocol_eval(
            shards,
            split or "test",
            run_dir,
            adapter_dir,
            weights,
            model_name,
            out_dir,
            max_pictures,
            max_batches,
            device,
            protocol,
            pointmap_alignment,
            align_conf_quantile,
            in_sample,
        )
        return
    split = split or "val"
    if (run_dir is None) == (adapter_dir is None):
        raise click.UsageError("give exactly one of --run or --adapter")
    cfg = EvalConfig(alignment=alignment, max_pictures=max_pictures, max_batches=max_batches)
    metrics = evaluate_run(
        shards,
        out_dir,
        split=split,
        run=run_dir,
        adapter=adapter_dir,
        weights=weights,
        model_name=model_name,
        batch_size=batch_size,
        device=device,
        config=cfg,
    )
    overall = metrics["overall"]
    click.echo(
        f"{metrics['counts']['frames']} frames: AbsRel base {overall['base']['abs_rel']:.4f} -> adapter "
        f"{overall['adapter']['abs_rel']:.4f} ({alignment}); report: {out_dir}/report.md"
    )


# Options of one `eval` mode only: given to the other mode they would be silently ignored.
_WINDOW_ONLY = {"alignment": "--alignment", "batch_size": "--batch-size"}
_PROTOCOL_ONLY = {
    "pointmap_alignment": "--pointmap-alignment",
    "align_conf_quantile": "--align-conf-quantile",
    "in_sample": "--in-sample",
}


def _check_mode_options(ctx: click.Context, protocol_mode: bool) -> None:
    """Refuse an option of the other `eval` mode (the protocols fix their own depth alignment and run one
    sample at a time; the window report has no point maps)."""
    from click.core import ParameterSource

    foreign = _WINDOW_ONLY if protocol_mode else _PROTOCOL_ONLY
    given = [flag for name, flag in foreign.items() if ctx.get_parameter_source(name) != ParameterSource.DEFAULT]
    if not given:
        return
    if protocol_mode:
        raise click.UsageError(
            f"{', '.join(given)} applies to the window report only (without --protocol): the protocols fix "
            "their own depth alignment (per frame and per sequence, eth3d-mvd) and run one sample at a time; "
            "drop the option"
        )
    raise click.UsageError(f"{', '.join(given)} applies to --protocol runs only; add --protocol or drop the option")


def _protocol_eval(
    shards,
    split,
    run_dir,
    adapter_dir,
    weights,
    model_name,
    out_dir,
    max_pictures,
    max_samples,
    device,
    protocol,
    pointmap_alignment,
    align_conf_quantile,
    in_sample=False,
) -> None:
    """`eval --protocol`: trainer.protocols on a shard split (base alone, or base vs adapter)."""
    from trainer.protocols import ProtocolConfig, evaluate_protocols_run, parse_protocols

    if run_dir is not None and adapter_dir is not None:
        raise click.UsageError("give at most one of --run or --adapter")
    try:
        protocols = parse_protocols(protocol)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--protocol") from None
    cfg = ProtocolConfig(
        protocols=protocols,
        pointmap_alignment=pointmap_alignment,
        align_conf_quantile=align_conf_quantile,
        max_pictures=max_pictures,
        max_samples=max_samples,
    )
    metrics = evaluate_protocols_run(
        shards,
        out_dir,
        split=split,
        run=run_dir,
        adapter=adapter_dir,
        weights=weights,
        model_name=model_name,
        device=device,
        config=cfg,
        allow_in_sample=in_sample,
    )
    mean = metrics["mean"]
    shown = [m for m in ("pose/da3/auc@30", "pointmap/depth_camera/overall", "mvd/frame/abs_rel") if m in mean["base"]]
    parts = [
        f"{m} " + " -> ".join("–" if mean[label][m] is None else f"{mean[label][m]:.4f}" for label in metrics["labels"])
        for m in shown
    ]
    if metrics["in_sample"]:
        click.echo("IN-SAMPLE: the adapter was trained on these samples; not comparable with published figures")
    click.echo(
        f"{metrics['counts']['samples']} samples, {metrics['counts']['scenes']} scenes "
        f"({' -> '.join(metrics['labels'])}): {'; '.join(parts)}; report: {out_dir}/report.md"
    )


# --- train, params, export, push -------------------------------------------------------------------------
def _key_values(words: tuple[str, ...]) -> tuple[str, ...]:
    """Extra KEY=VALUE words, so that `--set seed=5 lr=1e-4` sets both."""
    for word in words:
        if "=" not in word:
            raise click.UsageError(f"unexpected argument {word!r}: overrides are KEY=VALUE")
    return tuple(words)


@main.command("train")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False),
    help="Strategy YAML (configs/strategy_{a,b,c}.yaml). With --resume the run's config.yaml is used.",
)
@click.option("--shards", help="Shard dataset directory (data.shards).")
@click.option("--weights", help="Pretrained base: local .pt/.safetensors or hub id; 'none' = random init.")
@click.option("--model", "model_name", type=click.Choice(MODEL_PRESETS), help="Model preset.")
@click.option("--out", "out_dir", help="Run directory (default from the config: runs/strategy_X).")
@click.option("--max-steps", type=click.IntRange(min=1), help="Total optimizer steps of the run.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option(
    "--stop-after", type=click.IntRange(min=1), help="Checkpoint and exit after this many steps (preemptible jobs)."
)
@click.option(
    "--verify-shards",
    is_flag=True,
    help="Compare every shard's sha256 with manifest.json before training (sizes are always checked).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Config override, e.g. --set seed=5 lr=1e-4 data.batch_size=2 (repeatable; KEY=VALUE words "
    "after it are overrides too).",
)
@click.argument("more_overrides", nargs=-1, metavar="[KEY=VALUE]...")
def train_command(
    config_path,
    shards,
    weights,
    model_name,
    out_dir,
    max_steps,
    resume,
    stop_after,
    verify_shards,
    overrides,
    more_overrides,
) -> None:
    """Train a LoRA adapter (one GPU/CPU, or torchrun --nproc_per_node=N -m trainer train ...)."""
    from pathlib import Path

    from trainer.config import config_from_run, load_config, split_overrides
    from trainer.train import train

    sets = split_overrides(overrides + _key_values(more_overrides))
    for key, value in (
        ("data.shards", shards),
        ("weights", weights),
        ("model", model_name),
        ("out", out_dir),
        ("max_steps", max_steps),
    ):
        if value is not None:
            sets.append(f"{key}={value}")
    cfg = load_config(config_path, sets)
    run_config = Path(cfg.out) / "config.yaml"
    if resume and run_config.exists():  # the run's resolved config wins over --config
        if config_path:
            click.echo(f"--resume: using {run_config}; --config {config_path} is ignored", err=True)
        cfg = config_from_run(Path(cfg.out), sets)
    if not cfg.data.shards:
        raise click.UsageError("no shards: pass --shards DIR (or set data.shards in the config)")
    result = train(cfg, resume=resume, stop_after=stop_after, verify_shards=verify_shards)
    click.echo(f"step {result.step}: adapter checkpoints in {result.run_dir / 'checkpoints'}")


@main.command("params")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--model", "model_name", type=click.Choice(MODEL_PRESETS), help="Model preset.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override (repeatable).")
@click.argument("more_overrides", nargs=-1, metavar="[KEY=VALUE]...")
def params_command(config_path, model_name, overrides, more_overrides) -> None:
    """Trainable / total parameters and adapter size of a strategy (meta device: no weights, no memory)."""
    from trainer.config import load_config, split_overrides
    from trainer.lora import param_counts_on_meta

    sets = split_overrides(overrides + _key_values(more_overrides)) + ([f"model={model_name}"] if model_name else [])
    cfg = load_config(config_path, sets)
    report = param_counts_on_meta(cfg.model, cfg.lora)
    click.echo(f"model {cfg.model} (camera + depth heads, as trained)")
    for line in report.lines():
        click.echo(line)


@main.command("memory")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--model", "model_name", type=click.Choice(MODEL_PRESETS), help="Model preset.")
@click.option("--frames", default=8, type=click.IntRange(min=1), show_default=True, help="Frames per window.")
@click.option(
    "--size",
    default=518,
    type=click.IntRange(min=14),
    show_default=True,
    help="Image side (square frames, multiple of 14).",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Config override (repeatable).")
@click.argument("more_overrides", nargs=-1, metavar="[KEY=VALUE]...")
def memory_command(config_path, model_name, frames, size, overrides, more_overrides) -> None:
    """Peak tensor memory of a GPU training step of a config, traced with fake tensors (no GPU needed)."""
    from trainer.config import load_config, split_overrides
    from trainer.memory import estimate_step_memory

    sets = split_overrides(overrides + _key_values(more_overrides)) + ([f"model={model_name}"] if model_name else [])
    if size % 14:
        raise click.BadParameter(f"{size} is not a multiple of the patch size 14", param_hint="--size")
    cfg = load_config(config_path, sets)
    report = estimate_step_memory(cfg, frames=frames, size=size)
    for line in report.lines():
        click.echo(line)
    click.echo(
        "  (+ CUDA context ~0.5 GB and allocator fragmentation; `perf/peak_mem_gb` in a run is the measured value)"
    )


@main.command("export")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Run directory.")
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False), help="Merged FILE.safetensors.")
@click.option("--weights", help="Base weights to merge into (default: the ones the run was trained on).")
def export_command(run_dir, out_file, weights) -> None:
    """Merge the run's LoRA adapter into its base weights (official VGGT key names)."""
    from trainer.export import export_merged

    result = export_merged(run_dir, out_file, weights)
    click.echo(
        f"wrote {result['file']}: {result['tensors']} tensors, strategy {result['strategy']}, adapter of "
        f"step {result['step']} ({result['adapter']})"
    )


@main.command("push")
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Run directory.")
@click.option("--repo-id", required=True, help="Hugging Face model repo, e.g. you/vggt-eth3d-lora-b.")
@click.option("--public", is_flag=True, help="Create the repo public (default private).")
def push_command(run_dir, repo_id, public) -> None:
    """Upload the run's PEFT adapter to the Hugging Face hub (needs a token and network)."""
    from trainer.export import push_adapter

    url = push_adapter(run_dir, repo_id, private=not public)
    click.echo(f"pushed the adapter to {url}")
