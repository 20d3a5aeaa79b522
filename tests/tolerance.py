"""Float tolerances that follow from the arithmetic, not from one CPU's rounding (see tests/README.md).

Two computations of the same value that differ only in the order or fusion of their roundings
(thread count, SIMD width, FMA, blocking of a matmul, chunking of a head) differ by rounding error,
which scales with the magnitude of the values and with the number of operations that round:

* worst case (Higham, Accuracy and Stability of Numerical Algorithms, §3.1): a sum or dot product of
  n terms is off by at most γ_n ≈ n·u times the sum of the magnitudes, u = eps/2;
* probabilistic (Higham & Mary 2019): independent roundings grow like a random walk, λ·√n·u with
  probability ≥ 1 − 2·exp(−λ²/2); λ = 8 makes a spurious failure a ~1e-14 event per value.

`rounding_bound` turns "n operations on values of this magnitude" into an absolute tolerance. The
scale is the reference tensor's largest magnitude (an element-wise relative test would demand exact
results for elements near zero that come out of cancellation). A real bug (a wrong sign, a missing
term, a wrong index) changes results by O(1) of that scale, many orders above these bounds.
"""

from __future__ import annotations

import math

import numpy as np
import torch

EPS = {
    torch.float32: float(torch.finfo(torch.float32).eps),
    torch.float64: float(torch.finfo(torch.float64).eps),
    np.dtype("float32"): float(np.finfo(np.float32).eps),
    np.dtype("float64"): float(np.finfo(np.float64).eps),
}
LAMBDA = 8.0  # probabilistic bound's confidence factor
# A forward pass of the tiny VGGT (tests/assets): its longest reductions have 4·64 terms (MLP, attention over
# <= 4 frames of 24 tokens sums fewer), and an output depends on ~32 rounding layers (DINO, frame/global
# blocks, the DPT head's convolutions).
FORWARD_OPS = 256 * 32


def _eps(dtype) -> float:
    return EPS[dtype if isinstance(dtype, torch.dtype) else np.dtype(dtype)]


def _scale(reference) -> float:
    if torch.is_tensor(reference):
        return float(reference.detach().double().abs().max()) if reference.numel() else 0.0
    array = np.asarray(reference, dtype=np.float64)
    return float(np.abs(array).max()) if array.size else 0.0


def rounding_bound(
    reference, ops: int, dtype=torch.float32, worst_case: bool = False, scale: float | None = None
) -> float:
    """Absolute tolerance for values of the magnitude of `reference` computed with `ops` roundings each:
    ops·u·scale (worst case) or λ·√ops·u·scale (probabilistic), u = eps/2."""
    u = _eps(dtype) / 2
    growth = ops if worst_case else LAMBDA * math.sqrt(ops)
    return growth * u * (_scale(reference) if scale is None else scale)


def assert_within_rounding(
    actual,
    expected,
    ops: int,
    dtype=torch.float32,
    worst_case: bool = False,
    scale: float | None = None,
    what: str = "",
) -> None:
    """max |actual − expected| ≤ rounding_bound(expected, ops); the message shows both numbers."""
    if torch.is_tensor(actual):
        diff = float((actual.detach().double() - torch.as_tensor(expected).detach().double()).abs().max())
    else:
        diff = float(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64)).max())
    bound = rounding_bound(expected, ops, dtype, worst_case, scale)
    assert diff <= bound, (
        f"{what}: max abs difference {diff:.3g} exceeds the rounding bound {bound:.3g} "
        f"({'worst case' if worst_case else 'probabilistic'}, {ops} ops, "
        f"scale {scale if scale is not None else _scale(expected):.3g})"
    )
