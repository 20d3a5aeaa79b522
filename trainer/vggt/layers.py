"""Transformer building blocks shared by DINOv2, the aggregator and the camera trunk.

Module and parameter names follow the official VGGT tree (``norm1``, ``attn.qkv``, ``attn.q_norm``,
``ls1.gamma``, ``mlp.fc1`` ...) so checkpoints load strictly and PEFT target regexes match. Every
LoRA-able projection is a plain ``nn.Linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn


class LayerScale(nn.Module):
    """Per-channel residual scaling ``x * gamma``."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """``fc1 -> GELU (exact erf) -> fc2``."""

    def __init__(
        self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RotaryEmbedding2D:
    """2-D RoPE tables: y rotates the first half of each head, x the second (NeoX half split).

    ``inv_freq[j] = base^(-2j/(hd/2))`` per half. The cos/sin tables are built once per forward for a
    patch grid and reused by every block (the positions only depend on the grid), which avoids the
    per-block ``positions.max()`` device sync of a position-indexed implementation.
    """

    def __init__(self, base: float = 100.0) -> None:
        self.base = float(base)

    def tables(
        self, positions: torch.Tensor, head_dim: int, num_positions: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape ``[N, head_dim]`` for integer ``positions`` ``[N, 2]`` = (y, x).

        ``num_positions`` (> every position) avoids reading ``positions.max()`` back from the device.
        """
        half = head_dim // 2
        exponents = torch.arange(0, half, 2, device=positions.device).float() / half
        inv_freq = 1.0 / (self.base**exponents)
        if num_positions is None:
            num_positions = int(positions.max()) + 1
        angles = torch.arange(num_positions, device=positions.device, dtype=torch.float32)[:, None] * inv_freq[None]
        angles = torch.cat((angles, angles), dim=-1)
        cos_table, sin_table = angles.cos(), angles.sin()
        pos_y, pos_x = positions[:, 0].long(), positions[:, 1].long()
        cos = torch.cat((cos_table[pos_y], cos_table[pos_x]), dim=-1)
        sin = torch.cat((sin_table[pos_y], sin_table[pos_x]), dim=-1)
        return cos, sin


def apply_rope_2d(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``t`` ``[..., N, hd]`` with tables ``[N, hd]``; each half rotates with ``cat(-b, a)``."""
    *lead, hd = t.shape
    quarters = t.reshape(*lead, 2, 2, hd // 4)  # (half: y|x, quarter: a|b, hd/4)
    rotated = torch.stack((-quarters[..., 1, :], quarters[..., 0, :]), dim=-2).reshape(t.shape)
    return t * cos.to(t.dtype) + rotated * sin.to(t.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with optional per-head qk LayerNorm and 2-D RoPE, via SDPA."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(
        self, x: torch.Tensor, rope_cos: torch.Tensor | None = None, rope_sin: torch.Tensor | None = None
    ) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope_cos is not None:
            q = apply_rope_2d(q, rope_cos, rope_sin)
            k = apply_rope_2d(k, rope_cos, rope_sin)
        # Under autocast the qk LayerNorm returns fp32 while v is bf16; SDPA needs one dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale: ``x += ls1(attn(norm1 x)); x += ls2(mlp(norm2 x))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        qk_norm: bool = False,
        norm_eps: float = 1e-5,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        # qk_norm LayerNorms keep torch's default eps (1e-5) in both DINO and the aggregator.
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values)

    def forward(
        self, x: torch.Tensor, rope_cos: torch.Tensor | None = None, rope_sin: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope_cos, rope_sin))
        return x + self.ls2(self.mlp(self.norm2(x)))


def run_block(block: nn.Module, checkpointed: bool, *args: torch.Tensor | None) -> torch.Tensor:
    """Run ``block(*args)``, through non-reentrant activation checkpointing when asked."""
    if checkpointed and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def init_weights(module: nn.Module) -> None:
    """Random init for training from scratch / benchmarks: truncated-normal Linear, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
