"""One bounded, self-reporting check of a GPU machine: environment, fidelity, full-size A/B/C steps, the real
loop on engine-built shards, and (time permitting) torch.compile and the forward-pass table.

    python -m benchmarks.gpu_check --budget-s 420 --out build/gpu_check          # make gpu-check
    python -m benchmarks.gpu_check --device cpu --tiny --out /tmp/gc              # every stage, tiny, < 60 s

Stages, in order; each is time-boxed: one whose estimate exceeds what is left of --budget-s is skipped with a
note, one that overruns its share is interrupted (SIGALRM) and keeps its partial rows; the report is always
written (gpu_check.json + gpu_check.md in --out). Exit status 1 if a stage that ran failed.
  1 env       GPU, memory, driver / CUDA, torch, bf16 / TF32, which SDPA backends run (flash, efficient, ...).
  2 fidelity  the tiny fixture model (tests/assets/vggt_tiny_reference.*) on the device in fp32 (TF32 off) vs
              the official outputs, err = max|mine - ref| / max|ref| < 1e-5 (the CPU test's rule); and bf16
              autocast vs fp32 on the device within N·u: N = matmuls/convs autocast runs in bf16 along the
              aggregator (Linear + Conv2d modules + 2 per attention), u = 2^-8 bf16's unit roundoff; first
              order, each layer's operand rounding adds about u of the activations' scale and the pre-norm
              residual blocks add these errors rather than multiply them.
  3 steps     VGGT-1B (random init, built on the device), batch 1 × 8 × 518², strategies A, B, C with their
              config's checkpointing: forward + loss + backward + clip + AdamW (fused on CUDA); warm-up steps,
              then timed steps (median). Peak = torch.cuda.max_memory_allocated over the timed steps (CPU: the
              live tensor bytes of the step, trainer.memory's tracker), next to the fake-tensor trace of the
              same step (trainer.memory.estimate_step_memory = `python -m trainer memory`). FLOPs per step are
              counted by torch.utils.flop_counter.FlopCounterMode over fake tensors (matmul / conv / SDPA ops,
              forward + backward): with the config's checkpointing (hardware FLOPs, recompute included → HFU)
              and without (model FLOPs → MFU), against the device's dense bf16 peak (PEAK_BF16_TFLOPS).
  4 loop      trainer.train (the public API, configs/strategy_b.yaml, batch 1, accum 1) for 40 steps on
              518² 8-frame shards that `python -m dataengine synth` + `build` made from a generated scene,
              in the background from the start of the check (cores − 4 build threads): samples/s, data-wait %
              and step time over the windows after the first (start-up), every loss finite.
  5 optional  torch.compile speed-up of the B step (eager median measured in the same stage), and the model
              forward (aggregator, bf16) on 1 / 8 / 24 / 100 frames next to the official README's H100 figures.
The fake-tensor traces run in background processes (one per strategy) while the device works.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "assets" / "vggt_tiny_reference.safetensors"
TINY_WEIGHTS = FIXTURE
# The fixture's how_to_compare.float_rule (vggt_tiny_reference.json) and tests/trainer/test_vggt_model.py's FLOAT_RULE.
FLOAT_RULE = 1e-5
BF16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits, round to nearest
STAGES = ("env", "fidelity", "steps", "loop", "optional")
REPORT_RESERVE_S = 3.0
# Dense (no sparsity) BF16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets (H100/H200: "1,979 TFLOPS with
# sparsity" → 989; A100: 624 → 312; L40S 733 → 362; L4 242 → 121; A10 250 → 125) and the Ada whitepaper
# (RTX 4090: 165.2 with FP32 accumulate). Most specific names first; torch.cuda.get_device_name() is matched.
PEAK_BF16_TFLOPS = [
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
]
TARGETS = {"b_peak_gb": 10.0, "data_wait_pct": 2.0, "b_step_s": 0.5}  # issue 11 (H100/H200 class)


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


# ------------------------------------------------------------------------------------------ plan and budget


@dataclass
class Plan:
    """Sizes of every stage: full size on a GPU, tiny on a CPU (`--tiny`)."""

    model: str = "vggt-1b"
    weights: str = "none"
    bf16: bool = True
    frames: int = 8
    size: int = 518
    warmup: int = 3
    timed: int = 6
    loop_steps: int = 40
    log_every: int = 10
    workers: int = 2
    shard_images: int = 24
    shard_scale: float = 0.2
    compile_backend: str = "inductor"
    forward_frames: tuple[int, ...] = (1, 8, 24, 100)
    fidelity_cases: tuple[str, ...] = ("case_a", "case_b")  # A: B=2, S=3, 56x84; B: 518²
    bf16_case: str = "case_b"  # fixture case of the bf16-vs-fp32 comparison (B: 518², A: 56x84)
    parallel_traces: bool = True  # one trace process per strategy (16 cores) or one for all
    # seconds a stage needs at least (started only if that much budget is left)
    estimates: dict[str, float] = field(
        default_factory=lambda: {"env": 5, "fidelity": 15, "steps": 60, "loop": 60, "optional": 90}
    )

    @classmethod
    def tiny(cls) -> Plan:
        return cls(
            model="tiny",
            weights=str(TINY_WEIGHTS),
            bf16=False,
            frames=2,
            size=42,
            warmup=1,
            timed=2,
            loop_steps=8,
            log_every=4,
            workers=1,
            shard_images=8,
            shard_scale=0.05,
            compile_backend="aot_eager",
            forward_frames=(1, 8, 24, 100),
            fidelity_cases=("case_a",),
            bf16_case="case_a",
            parallel_traces=False,
            estimates={"env": 1, "fidelity": 3, "steps": 5, "loop": 8, "optional": 5},
        )


class StageTimeout(Exception):
    pass


@contextmanager
def time_box(seconds: float):
    """Raise StageTimeout in the main thread after `seconds` (between Python bytecodes / torch ops)."""

    def handler(signum, frame):
        raise StageTimeout(f"interrupted after {seconds:.0f} s (its share of the budget)")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Background:
    """A command running beside the stages (shard build, fake-tensor traces); its output goes to a log file."""

    def __init__(
        self, name: str, cmd: list[str] | str, log: Path, cwd: Path = ROOT, threads: int | None = None
    ) -> None:
        self.name, self.log, self.start = name, log, time.perf_counter()
        self.handle = log.open("w")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None  # no oversubscription
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env=env,
            shell=isinstance(cmd, str),
            start_new_session=True,
        )
        self.seconds: float | None = None

    def wait(self, timeout: float) -> int | None:
        try:
            rc = self.proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return None
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.start
            self.handle.close()
        return rc

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.running:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait()
        if not self.handle.closed:
            self.handle.close()

    def tail(self, n: int = 3) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines() if self.log.exists() else []
        return " | ".join(lines[-n:])


@dataclass
class Context:
    device: torch.device
    plan: Plan
    out: Path
    deadline: float
    peak: float | None = None
    fixture: Path = FIXTURE
    jobs: dict[str, Background] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self, enabled: bool | None = None):
        on = self.plan.bf16 if enabled is None else enabled
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if on else nullcontext()


# ------------------------------------------------------------------------------------------ 1 environment


def sdpa_backends(device: torch.device) -> dict[str, str]:
    """Which SDPA kernels run here, tried one at a time on VGGT's head shape (64) in bf16."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = torch.bfloat16
    q = torch.randn(1, 16, 256, 64, device=device, dtype=dtype)
    result = {}
    for backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.MATH,
    ):
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, q, q)
            result[backend.name.lower()] = "ok"
        except RuntimeError as exc:
            result[backend.name.lower()] = "unavailable: " + str(exc).strip().splitlines()[0][:80]
    return result


def stage_env(ctx: Context, out: dict) -> None:
    import importlib.metadata as md

    out.update(
        {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(ctx.device),
        }
    )
    versions = {}
    for pkg in ("numpy", "peft", "webdataset", "simplejpeg", "numba", "safetensors"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "missing"
    out["packages"] = versions
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        out.update(
            {
                "name": props.name,
                "memory_gb": props.total_memory / 1e9,
                "capability": f"{props.major}.{props.minor}",
                "sms": props.multi_processor_count,
                "bf16": torch.cuda.is_bf16_supported(),
                "tf32": props.major >= 8,
                "cudnn": torch.backends.cudnn.version(),
            }
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            out["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "nvidia-smi failed"
        except (OSError, subprocess.TimeoutExpired, IndexError):
            out["driver"] = "unknown (no nvidia-smi)"
    else:
        model = (
            next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                platform.processor(),
            )
            if Path("/proc/cpuinfo").exists()
            else ""
        )
        out.update(
            {
                "name": model or "cpu",
                "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "bf16": True,
                "tf32": False,
            }
        )
    out["sdpa"] = sdpa_backends(ctx.device)
    ctx.peak = ctx.peak or (peak_tflops(out["name"]) if ctx.device.type == "cuda" else None)
    out["peak_bf16_tflops"] = ctx.peak
    out["status"] = "ok"


# ------------------------------------------------------------------------------------------ 2 fidelity


def fixture_outputs(model, tensors: dict, case: str, device: torch.device) -> dict[str, torch.Tensor]:
    """The outputs the fixture stores for `case` (patch tokens, aggregated layers, heads) from one forward."""
    images = (tensors[f"{case}.images_u8"].float() / 255.0).to(device)
    captured: dict[str, Any] = {}
    hooks = [
        model.aggregator.patch_embed.register_forward_hook(lambda m, i, o: captured.__setitem__("patch", o)),
        model.aggregator.register_forward_hook(lambda m, i, o: captured.__setitem__("agg", o[0])),
    ]
    try:
        with torch.no_grad():
            result = model(images)
    finally:
        for hook in hooks:
            hook.remove()
    mine = {"patch_tokens": captured["patch"]}
    mine.update({f"aggregated.{i}": t for i, t in enumerate(captured["agg"])})
    mine.update({f"pose_enc_list.{i}": t for i, t in enumerate(result["pose_enc_list"])})
    mine.update({k: result[k] for k in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")})
    return mine


def relative_error(mine: torch.Tensor, ref: torch.Tensor) -> float:
    mine, ref = mine.detach().double().cpu(), ref.double().cpu()
    return ((mine - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def bf16_layer_count(model) -> int:
    """Matmuls / convs autocast runs in bf16 along the aggregator: Linear + Conv2d modules, 2 per attention."""
    from torch import nn

    modules = list(model.aggregator.modules())
    attention = sum(1 for m in modules if type(m).__name__.endswith("Attention"))
    return sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in modules) + 2 * attention


def stage_fidelity(ctx: Context, out: dict) -> None:
    from safetensors.torch import load_file

    from trainer.vggt import VGGT, VGGTConfig

    tensors = load_file(str(ctx.fixture))
    model = VGGT(VGGTConfig.tiny())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    model = model.to(ctx.device).eval()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here
    try:
        worst: dict[str, Any] = {"err": -1.0}
        fp32 = {}
        for case in ctx.plan.fidelity_cases:
            fp32[case] = fixture_outputs(model, tensors, case, ctx.device)
            for name in sorted(
                k[len(case) + 1 :] for k in tensors if k.startswith(case + ".") and "images_u8" not in k
            ):
                err = relative_error(fp32[case][name], tensors[f"{case}.{name}"])
                if not err <= worst["err"]:
                    worst = {"err": err, "output": f"{case}.{name}"}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    out["fp32_max_rel_err"], out["fp32_worst_output"], out["fp32_rule"] = worst["err"], worst["output"], FLOAT_RULE
    out["fp32_outputs_compared"] = sum(
        1 for c in fp32 for k in tensors if k.startswith(c + ".") and "images_u8" not in k
    )
    case = ctx.plan.bf16_case  # CPU bf16 matmuls are slow without AMX: the small case there
    with torch.autocast(ctx.device.type, dtype=torch.bfloat16):
        low = fixture_outputs(model, tensors, case, ctx.device)
    keys = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
    errors = {k: relative_error(low[k], fp32[case][k]) for k in keys}
    layers = bf16_layer_count(model)
    out["bf16_rel_err"] = errors
    out["bf16_bound"] = layers * BF16_UNIT_ROUNDOFF
    out["bf16_bound_rule"] = f"N·u = {layers} × 2^-8 (bf16 matmuls/convs along the aggregator × unit roundoff)"
    fp32_ok = worst["err"] < FLOAT_RULE
    bf16_ok = all(0 < e <= out["bf16_bound"] for e in errors.values())
    out["status"] = "ok" if fp32_ok and bf16_ok else "fail"
    if not fp32_ok:
        out["note"] = f"fp32 off the fixture: {worst['output']} err {worst['err']:.2e} >= {FLOAT_RULE:.0e}"
    elif not bf16_ok:
        out["note"] = f"bf16 vs fp32 outside (0, {out['bf16_bound']:.3f}]: {errors}"


# ------------------------------------------------------------------------------------------ 3 steps


def synthetic_batch(frames: int, size: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A loss-ready batch of shard shapes: random images, a tilted-plane depth with holes, a camera row."""
    from trainer.losses import prepare_batch

    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    depths = (4.0 + 2.0 * xs / size + ys / size).expand(1, frames, size, size).clone()
    depths[torch.rand(1, frames, size, size, generator=gen) < 0.3] = 0  # holes, as in laser GT
    extrinsics = torch.eye(3, 4).repeat(1, frames, 1, 1)
    extrinsics[..., 0, 3] = torch.linspace(0, 1, frames)  # a sideways camera path
    f = 0.9 * size
    intrinsics = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]]).repeat(1, frames, 1, 1)
    batch = {
        "images": torch.rand(1, frames, 3, size, size, generator=gen),
        "depths": depths,
        "point_masks": depths > 0,
        "extrinsics": extrinsics,
        "intrinsics": intrinsics,
    }
    return prepare_batch({k: v.to(device) for k, v in batch.items()})


def strategy_config(strategy: str, plan: Plan, extra: tuple[str, ...] = ()):
    from trainer.config import load_config

    return load_config(
        ROOT / "configs" / f"strategy_{strategy}.yaml",
        [f"model={plan.model}", f"weights={plan.weights}", f"precision={'bf16' if plan.bf16 else 'fp32'}", *extra],
    )


class StepRig:
    """One strategy's model, optimizer and batch on the device; `step()` is one optimizer step of the loop."""

    def __init__(self, strategy: str, ctx: Context) -> None:
        from trainer.builders import build_model, freeze_modes
        from trainer.lora import apply_strategy

        self.cfg = cfg = strategy_config(strategy, ctx.plan)
        self.ctx = ctx
        torch.manual_seed(0)
        weights = None if cfg.weights in (None, "none") else cfg.weights
        with torch.device(ctx.device):  # random init on the device: seconds, not minutes, for 1.2 B parameters
            model = build_model(
                cfg.model,
                weights,
                activation_checkpointing=cfg.activation_checkpointing,
                dpt_checkpoint_frames=cfg.dpt_checkpoint_frames,
            )
            self.model = apply_strategy(model, cfg.lora)
        self.model.to(ctx.device)
        freeze_modes(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.optim.lr,
            betas=cfg.optim.betas,
            weight_decay=cfg.optim.weight_decay,
            fused=ctx.device.type == "cuda",
        )
        self.loss_cfg = cfg.loss
        self.batch = synthetic_batch(ctx.plan.frames, ctx.plan.size, ctx.device)
        self.net = self.model

    def step(self) -> float:
        from trainer.losses import compute_loss

        with self.ctx.autocast():
            preds = self.net(self.batch["images"])
        loss, _ = compute_loss(preds, self.batch, self.loss_cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def timed(self, warmup: int, steps: int) -> dict[str, Any]:
        losses = [self.step() for _ in range(warmup)]
        self.ctx.sync()
        if self.ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.ctx.device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            losses.append(self.step())
            self.ctx.sync()
            times.append(time.perf_counter() - t0)
        return {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "losses_finite": all(map(math.isfinite, losses)),
        }

    def live_bytes_of_a_step(self) -> int:
        """CPU stand-in for max_memory_allocated: weights + AdamW state + the peak live bytes of one step."""
        from trainer.memory import LiveTensorBytes

        held = [
            *self.model.parameters(),
            *self.model.buffers(),
            *self.batch.values(),
            *(t for s in self.optimizer.state.values() for t in s.values() if torch.is_tensor(t)),
        ]
        held = [t for t in held if torch.is_tensor(t)]
        base = sum({id(t.untyped_storage()): t.untyped_storage().nbytes() for t in held}.values())
        tracker = LiveTensorBytes()
        tracker.ignore(held)
        with tracker:
            self.step()
        return base + tracker.peak

    def close(self) -> None:
        del self.model, self.net, self.optimizer, self.batch, self.params
        gc.collect()
        if self.ctx.device.type == "cuda":
            torch.cuda.empty_cache()


def trace_child(args: argparse.Namespace) -> None:
    """Background job: fake-tensor memory trace + FLOP counts of the strategies' steps → JSON each."""
    plan = Plan.tiny() if args.tiny else Plan()
    for strategy in args.trace:
        trace_strategy(strategy, plan, Path(args.json.format(strategy)))


def trace_strategy(strategy: str, plan: Plan, path: Path) -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.builders import freeze_modes
    from trainer.memory import _build, estimate_step_memory

    cfg = strategy_config(strategy, plan)
    result: dict[str, Any] = {"strategy": strategy}
    t0 = time.perf_counter()
    result["traced_bytes"] = estimate_step_memory(cfg, frames=plan.frames, size=plan.size, bf16=plan.bf16).total
    for key, checkpointing in (("flops_hardware", cfg.activation_checkpointing), ("flops_model", False)):
        cfg.activation_checkpointing = checkpointing
        model = _build(cfg, "meta")
        with FakeTensorMode(allow_non_fake_inputs=True):
            model.to_empty(device="cpu")
            freeze_modes(model)
            images = torch.rand(1, plan.frames, 3, plan.size, plan.size)
            with FlopCounterMode(display=False) as counter:
                with torch.autocast("cpu", dtype=torch.bfloat16) if plan.bf16 else nullcontext():
                    preds = model(images)
                outs = [o for o in (preds["depth"], preds["depth_conf"], *preds["pose_enc_list"]) if o.requires_grad]
                torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
        result[key] = counter.get_total_flops()
    result["trace_s"] = time.perf_counter() - t0
    path.write_text(json.dumps(result))


def stage_steps(ctx: Context, out: dict) -> None:
    rows = out.setdefault("rows", [])
    out["shape"] = f"{ctx.plan.model}, batch 1 x {ctx.plan.frames} x {ctx.plan.size}², " + (
        "bf16 autocast" if ctx.plan.bf16 else "fp32"
    )
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        # The background jobs (shard build, traces) share the CPU: one math thread keeps the steps from
        # spinning against them (two threads timed strategy A 30x slower than B on 2 cores).
        torch.set_num_threads(1)
        out["shape"] += ", 1 CPU thread"
    try:
        _time_strategies(ctx, out, rows)
    finally:
        torch.set_num_threads(threads)


def _time_strategies(ctx: Context, out: dict, rows: list) -> None:
    for strategy in ("a", "b", "c"):
        if ctx.left() < ctx.plan.estimates["steps"] / 3:
            rows.append({"strategy": strategy, "status": "skipped", "note": f"{ctx.left():.0f} s left"})
            continue
        t0 = time.perf_counter()
        rig = StepRig(strategy, ctx)
        try:
            row = {
                "strategy": strategy,
                "checkpointing": rig.cfg.activation_checkpointing,
                "trainable": sum(p.numel() for p in rig.params),
            }
            row.update(rig.timed(ctx.plan.warmup, ctx.plan.timed))
            if ctx.device.type == "cuda":
                row["peak_gb"] = torch.cuda.max_memory_allocated(ctx.device) / 1e9
            else:
                row["peak_gb"] = rig.live_bytes_of_a_step() / 1e9
            row["status"] = "ok" if row["losses_finite"] else "fail"
        except torch.cuda.OutOfMemoryError as exc:
            row = {"strategy": strategy, "status": "fail", "note": "CUDA out of memory: " + str(exc)[:120]}
        finally:
            rig.close()
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if strategy == "b" and row.get("status") == "ok":
            out["b_eager_median_s"] = row["median_s"]
    out["status"] = "ok" if all(r["status"] in ("ok", "skipped") for r in rows) else "fail"


def merge_traces(ctx: Context, steps: dict) -> None:
    """Put the background traces (memory, FLOPs) next to the measured rows; derive TFLOP/s, MFU, HFU."""
    for row in steps.get("rows", []):
        job = ctx.jobs.get(f"trace_{row['strategy']}")
        if job is None:
            continue
        rc = job.wait(max(0.0, ctx.left() - REPORT_RESERVE_S))
        path = ctx.out / f"trace_{row['strategy']}.json"
        if rc != 0 or not path.exists():
            row["trace_note"] = "trace still running at the deadline" if rc is None else f"trace failed: {job.tail()}"
            job.stop()
            continue
        trace = json.loads(path.read_text())
        row["traced_gb"] = trace["traced_bytes"] / 1e9
        row["flops_hardware"], row["flops_model"] = trace["flops_hardware"], trace["flops_model"]
        if "median_s" in row:
            row["tflops"] = trace["flops_hardware"] / row["median_s"] / 1e12
            if ctx.peak:
                row["mfu"] = trace["flops_model"] / row["median_s"] / 1e12 / ctx.peak
                row["hfu"] = row["tflops"] / ctx.peak


# ------------------------------------------------------------------------------------------ 4 loop


def shard_command(ctx: Context) -> str:
    plan, work = ctx.plan, ctx.out / "data"
    cores = os.cpu_count() or 1
    py = shlex.quote(sys.executable)
    synth = (
        f"{py} -m dataengine synth {shlex.quote(str(work / 'eth3d'))} --scene gpu_check --images "
        f"{plan.shard_images} --scale {plan.shard_scale} --seed 0"
    )
    build = (
        f"{py} -m dataengine build --root {shlex.quote(str(work / 'eth3d'))} --out "
        f"{shlex.quote(str(work / 'shards'))} --scenes gpu_check --size {plan.size} --frames {plan.frames} "
        f"--stride 2 --val-fraction 0 --samples-per-shard 1 --workers {max(1, cores - 4)} --quiet"
    )
    return f"rm -rf {shlex.quote(str(work))} && {synth} && {build}"


def stage_loop(ctx: Context, out: dict) -> None:
    from trainer.train import train

    job = ctx.jobs["shards"]
    rc = job.wait(ctx.left() - ctx.plan.estimates["loop"])
    if rc is None:
        out.update(status="skipped", note=f"shards not built in time ({job.tail(1)})")
        return
    if rc != 0:
        out.update(status="fail", note=f"shard build failed: {job.tail()}")
        return
    out["shard_build_s"] = job.seconds
    shards = ctx.out / "data" / "shards"
    plan = ctx.plan
    sets = [
        f"data.shards={shards}",
        f"out={ctx.out / 'loop_run'}",
        f"max_steps={plan.loop_steps}",
        f"log_every={plan.log_every}",
        "val_every=0",
        "val_batches=0",
        "save_every=0",
        "optim.accum_steps=1",
        "data.batch_size=1",
        f"data.num_workers={plan.workers}",
    ]
    import shutil

    shutil.rmtree(ctx.out / "loop_run", ignore_errors=True)
    cfg = strategy_config("b", plan, tuple(sets))
    out["traces_running"] = [n for n, j in ctx.jobs.items() if n.startswith("trace") and j.running]
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    result = train(cfg)
    records = [json.loads(line) for line in (ctx.out / "loop_run" / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if "perf/step_time_s" in r]
    steady = windows[1:] or windows  # the first window holds model build hand-over and worker start-up
    seconds = sum(r["perf/step_time_s"] for r in steady)
    out.update(
        {
            "steps": result.step,
            "windows": len(windows),
            "steady_steps": len(steady) * plan.log_every,
            "samples_per_s": sum(r["perf/samples_per_s"] * r["perf/step_time_s"] for r in steady) / seconds,
            "step_s": seconds / len(steady),
            "data_wait_pct": sum(r["perf/data_wait_pct"] * r["perf/step_time_s"] for r in steady) / seconds,
            "first_window_data_wait_pct": windows[0]["perf/data_wait_pct"],
            "losses_finite": all(map(math.isfinite, result.losses)) and result.skipped_steps == 0,
            "first_loss": result.losses[0],
            "last_loss": result.losses[-1],
        }
    )
    if ctx.device.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated(ctx.device) / 1e9
    out["status"] = "ok" if out["losses_finite"] and result.step == plan.loop_steps else "fail"


# ------------------------------------------------------------------------------------------ 5 optional


def stage_optional(ctx: Context, out: dict, eager_b: float | None) -> None:
    from benchmarks.model_forward import OFFICIAL_H100, measure

    plan = ctx.plan
    compiled: dict[str, Any] = out.setdefault("compile", {})
    rig = StepRig("b", ctx)
    try:
        eager = rig.timed(plan.warmup, plan.timed)["median_s"]
        rig.net = torch.compile(rig.model, backend=plan.compile_backend)
        t0 = time.perf_counter()
        rig.step()
        ctx.sync()
        compiled["compile_s"] = time.perf_counter() - t0
        timing = rig.timed(plan.warmup, plan.timed)
        compiled.update(
            {
                "backend": plan.compile_backend,
                "eager_median_s": eager,
                "compiled_median_s": timing["median_s"],
                "speedup": eager / timing["median_s"],
                "losses_finite": timing["losses_finite"],
                "stage3_eager_median_s": eager_b,
            }
        )
    finally:
        rig.close()
        torch._dynamo.reset()
    rows = out.setdefault("forward", [])
    for frames in plan.forward_frames:
        if ctx.left() < 2:
            rows.append({"frames": frames, "status": "skipped", "note": "budget"})
            continue
        r = measure("vggt-1b" if plan.model == "vggt-1b" else "tiny", frames, plan.size, 2, "aggregator", ctx.device)
        official = OFFICIAL_H100.get(frames)
        rows.append(
            {
                "frames": frames,
                "median_s": r["median_s"],
                "peak_gb": r["peak_gb"],
                "official_h100_s": official[0] if official else None,
                "official_h100_gb": official[1] if official else None,
                "status": "ok",
            }
        )
    out["status"] = "ok" if compiled.get("losses_finite") else "fail"


# ------------------------------------------------------------------------------------------ report


def fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def markdown(report: dict) -> str:
    s = report["stages"]
    env = s.get("env", {})
    lines = [
        f"# GPU check: {env.get('name', '?')} ({report['mode']})",
        "",
        f"torch {env.get('torch', '?')}, CUDA {env.get('cuda_runtime')}, driver {env.get('driver', '-')}, "
        f"Python {env.get('python', '?')}, {env.get('cpus', '?')} CPUs; budget {report['budget_s']:.0f} s, "
        f"used {report['elapsed_s']:.0f} s",
        "",
        "| stage | status | seconds | result |",
        "|---|---|---:|---|",
    ]
    for name in STAGES:
        st = s.get(name, {})
        lines.append(f"| {name} | {st.get('status', '-')} | {fmt(st.get('seconds'), '.1f')} | {summary(name, st)} |")
    steps = s.get("steps", {}).get("rows", [])
    if steps:
        lines += [
            "",
            f"Steps ({s['steps'].get('shape', '')}):",
            "",
            "| strategy | ckpt | trainable | median step s | peak GB | traced GB | TFLOP/step (hw / model) "
            "| TFLOP/s | MFU | HFU |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in steps:
            flops = (
                f"{r['flops_hardware'] / 1e12:.2f} / {r['flops_model'] / 1e12:.2f}" if "flops_hardware" in r else "-"
            )
            lines.append(
                f"| {r['strategy'].upper()} | {'on' if r.get('checkpointing') else 'off'} | "
                f"{fmt(r.get('trainable'))} | {fmt(r.get('median_s'))} | {fmt(r.get('peak_gb'), '.2f')} | "
                f"{fmt(r.get('traced_gb'), '.2f')} | {flops} | {fmt(r.get('tflops'), '.2f')} | "
                f"{fmt(r.get('mfu'), '.1%')} | {fmt(r.get('hfu'), '.1%')} |"
            )
    forward = s.get("optional", {}).get("forward", [])
    if forward:
        lines += [
            "",
            "Forward (aggregator):",
            "",
            "| frames | median s | peak GB | official H100 s / GB |",
            "|---:|---:|---:|---:|",
        ]
        for r in forward:
            lines.append(
                f"| {r['frames']} | {fmt(r.get('median_s'))} | {fmt(r.get('peak_gb'), '.2f')} | "
                f"{fmt(r.get('official_h100_s'), '.2f')} / {fmt(r.get('official_h100_gb'), '.2f')} |"
            )
    return "\n".join(lines) + "\n"


def summary(name: str, st: dict) -> str:
    if st.get("status") in ("skipped", "timed out") or "error" in st:
        return (st.get("note") or st.get("error") or "").replace("|", "/")
    if name == "env":
        ok = [k for k, v in st.get("sdpa", {}).items() if v == "ok"]
        return (
            f"{fmt(st.get('memory_gb'), '.0f')} GB, bf16 {st.get('bf16')}, TF32 {st.get('tf32')}, "
            f"SDPA: {', '.join(ok)}; peak bf16 {fmt(st.get('peak_bf16_tflops'), '.0f')} TFLOP/s"
        )
    if name == "fidelity":
        return (
            f"fp32 vs fixture {st['fp32_max_rel_err']:.1e} (< {FLOAT_RULE:.0e}); bf16 vs fp32 max "
            f"{max(st['bf16_rel_err'].values()):.1e} (bound {st['bf16_bound']:.3f})"
        )
    if name == "steps":
        return "; ".join(f"{r['strategy'].upper()} {fmt(r.get('median_s'))} s" for r in st.get("rows", []))
    if name == "loop":
        return (
            f"{st['steady_steps']} steady steps: {st['samples_per_s']:.2f} samples/s, step {st['step_s']:.3f} s, "
            f"data-wait {st['data_wait_pct']:.2f} %, loss {st['first_loss']:.3f} -> {st['last_loss']:.3f}"
        )
    if name == "optional" and "compile" in st:
        c = st["compile"]
        return (
            f"compile ({c.get('backend')}) {fmt(c.get('compile_s'), '.1f')} s, speed-up x{fmt(c.get('speedup'), '.2f')}"
            if "speedup" in c
            else ""
        )
    return ""


def run_check(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    plan = Plan.tiny() if args.tiny else Plan()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(device, plan, out, start + args.budget_s, peak=args.peak_tflops, fixture=Path(args.fixture))
    wanted = [s for s in args.stages.split(",") if s] if args.stages else list(STAGES)
    unknown = set(wanted) - set(STAGES)
    if unknown:
        print(f"Error: unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "Error: --device cuda but torch.cuda.is_available() is False; check the driver / CUDA torch, "
            "or run --device cpu --tiny",
            file=sys.stderr,
        )
        return 2
    report: dict[str, Any] = {
        "mode": f"{device.type}{', tiny' if args.tiny else ''}",
        "budget_s": args.budget_s,
        "plan": asdict(plan),
        "targets": TARGETS,
        "stages": {},
    }
    # CPU work beside the device work: the shards for stage 4, the fake-tensor traces for stage 3.
    if "loop" in wanted:
        ctx.jobs["shards"] = Background("shards", shard_command(ctx), out / "shards.log")
    if "steps" in wanted:
        for group in ["a", "b", "c"] if plan.parallel_traces else ["abc"]:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.gpu_check",
                "--trace",
                group,
                "--json",
                str(out / "trace_{}.json"),
            ] + (["--tiny"] if args.tiny else [])
            job = Background(f"trace_{group}", cmd, out / f"trace_{group}.log", threads=1)  # fake tensors: no math
            for strategy in group:
                ctx.jobs[f"trace_{strategy}"] = job
    stage_fns: dict[str, Callable[[Context, dict], None]] = {
        "env": stage_env,
        "fidelity": stage_fidelity,
        "steps": stage_steps,
        "loop": stage_loop,
        "optional": lambda c, o: stage_optional(c, o, report["stages"].get("steps", {}).get("b_eager_median_s")),
    }
    try:
        for name in STAGES:
            entry: dict[str, Any] = {}
            report["stages"][name] = entry
            if name not in wanted:
                entry.update(status="skipped", note="not requested (--stages)")
                continue
            left = ctx.left() - REPORT_RESERVE_S
            if left < plan.estimates[name]:
                entry.update(status="skipped", note=f"needs ~{plan.estimates[name]:.0f} s, {max(left, 0):.0f} s left")
                print(f"[{name}] skipped: {entry['note']}", flush=True)
                continue
            t0 = time.perf_counter()
            print(f"[{name}] running ({left:.0f} s left)", flush=True)
            try:
                with time_box(left):
                    stage_fns[name](ctx, entry)
            except StageTimeout as exc:
                entry.update(status="timed out", note=str(exc))
            except Exception as exc:  # the report must still be written
                entry.update(
                    status="fail", error=f"{type(exc).__name__}: {exc}"[:500], traceback=traceback.format_exc()[-2000:]
                )
            entry["seconds"] = time.perf_counter() - t0
            print(f"[{name}] {entry.get('status')} in {entry['seconds']:.1f} s: {summary(name, entry)}", flush=True)
        if "steps" in report["stages"]:
            merge_traces(ctx, report["stages"]["steps"])
    finally:
        for job in ctx.jobs.values():
            job.stop()
    report["elapsed_s"] = time.perf_counter() - start
    report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"report: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")
    failed = [n for n, st in report["stages"].items() if st.get("status") == "fail"]
    if failed:
        print(f"failed stage(s): {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-time budget of the whole check")
    parser.add_argument("--out", default="build/gpu_check", help="folder for gpu_check.json / .md and work files")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda if available")
    parser.add_argument("--tiny", action="store_true", help="every stage on the tiny model at small sizes")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of a device missing from the table")
    parser.add_argument("--fixture", default=str(FIXTURE), help=argparse.SUPPRESS)
    parser.add_argument("--trace", help=argparse.SUPPRESS)  # background job: one strategy's fake trace
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trace:
        trace_child(args)
        return 0
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
