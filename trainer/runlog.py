"""What a run writes about itself: train.log, metrics.jsonl + TensorBoard scalars, the progress bar,
and the statistics of the steps between two log lines."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from trainer.distributed import Dist, mean_over_ranks

log = logging.getLogger("trainer")


@contextmanager
def run_logging(run_dir: Path, main: bool) -> Iterator[None]:
    """The `trainer` logger to train.log and stdout on rank 0; warnings only on the other ranks."""
    handlers: list[logging.Handler] = []
    if main:
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
        for handler in (logging.FileHandler(run_dir / "train.log"), logging.StreamHandler(sys.stdout)):
            handler.setFormatter(fmt)
            handlers.append(handler)
            log.addHandler(handler)
    old_level, log.propagate = log.level, False
    log.setLevel(logging.INFO if main else logging.WARNING)
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        log.setLevel(old_level)
        log.propagate = True


class ScalarLog:
    """TensorBoard scalars + metrics.jsonl (one JSON record per write), rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.jsonl = (run_dir / "metrics.jsonl").open("a") if enabled else None
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self.tb.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()


def drop_records_after(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their metrics.jsonl records written
    before the interruption (they would be duplicates), atomically."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)


class StepStats:
    """Sums over the optimizer steps since the last log line; `scalars()` turns them into averages
    (over ranks too) and starts a new window."""

    def __init__(self, samples_per_step: int) -> None:
        self.samples_per_step = samples_per_step
        self._reset()

    def _reset(self) -> None:
        self.sums: dict[str, float] = {}  # loss terms and grad_norm of the finite steps
        self.finite = self.steps = 0
        self.seconds = self.wait = 0.0

    def add(self, terms: dict[str, float], grad_norm: float, finite: bool, seconds: float, wait: float) -> None:
        self.steps, self.seconds, self.wait = self.steps + 1, self.seconds + seconds, self.wait + wait
        if finite:
            for name, value in terms.items():
                self.sums[name] = self.sums.get(name, 0.0) + value
            self.sums["grad_norm"] = self.sums.get("grad_norm", 0.0) + grad_norm
            self.finite += 1

    def scalars(self, lr: float, skipped: int, d: Dist) -> dict[str, float]:
        names = sorted(self.sums)
        values = torch.tensor(
            [self.sums[k] for k in names] + [self.finite, self.seconds, self.wait], dtype=torch.float64
        )
        *terms, finite, seconds, wait = mean_over_ranks(values, d).tolist()  # time and wait averaged too
        n = self.steps
        scalars = {f"train/{k}": v / finite for k, v in zip(names, terms, strict=True)} if finite else {}
        scalars.update(
            {
                "train/lr": lr,
                "train/skipped_steps": float(skipped),
                "perf/step_time_s": seconds / max(n, 1),
                "perf/samples_per_s": self.samples_per_step * n / max(seconds, 1e-9),
                "perf/data_wait_pct": 100.0 * wait / max(seconds, 1e-9),
            }
        )
        if d.device.type == "cuda":
            scalars["perf/peak_mem_gb"] = torch.cuda.max_memory_allocated(d.device) / 1e9
        self._reset()
        return scalars


def progress_bar(step: int, total: int, main: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, initial=step, disable=not main, dynamic_ncols=True, desc="train", file=sys.stderr, mininterval=1.0
    )
