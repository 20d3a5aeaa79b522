"""Camera head (iterative adaLN-modulated trunk) and the output activations shared by the heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.vggt.layers import Block, Mlp, init_weights

POSE_ENCODING_DIM = 9  # absT_quaR_FoV: [tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w]


def inverse_log_transform(y: torch.Tensor) -> torch.Tensor:
    """``sign(y) * (exp|y| - 1)``, the point head's ``inv_log`` activation."""
    return torch.sign(y) * torch.expm1(torch.abs(y))


def activate_head(fmap: torch.Tensor, activation: str, conf_activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N,C,H,W]`` head map -> (values ``[N,H,W,C-1]``, confidence ``[N,H,W]``), channels-last."""
    fmap = fmap.permute(0, 2, 3, 1)
    values, conf = fmap[..., :-1], fmap[..., -1]
    value_acts = {
        "exp": torch.exp,
        "inv_log": inverse_log_transform,
        "linear": lambda t: t,
        "relu": F.relu,
        "sigmoid": torch.sigmoid,
    }
    conf_acts = {"expp1": lambda t: 1 + t.exp(), "expp0": torch.exp, "sigmoid": torch.sigmoid}
    if activation not in value_acts:
        raise ValueError(f"unknown head activation {activation!r}; choose from {sorted(value_acts)}")
    if conf_activation not in conf_acts:
        raise ValueError(f"unknown confidence activation {conf_activation!r}; choose from {sorted(conf_acts)}")
    return value_acts[activation](values), conf_acts[conf_activation](conf)


def activate_pose(pose_enc: torch.Tensor) -> torch.Tensor:
    """Translation and quaternion linear, field of view through ReLU (VGGT-1B's choice)."""
    return torch.cat((pose_enc[..., :7], F.relu(pose_enc[..., 7:])), dim=-1)


class CameraHead(nn.Module):
    """Refines a pose encoding over ``num_iterations`` passes of an adaLN-modulated trunk.

    The camera token of the last aggregator layer is normed once; each pass embeds the (detached,
    raw) current estimate, modulates the tokens with ``gate * (LN(x)(1+scale) + shift) + x``, runs the
    trunk (attention across the frames of a sequence) and adds a predicted delta.
    """

    def __init__(
        self,
        dim_in: int = 2048,
        trunk_depth: int = 4,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
    ) -> None:
        super().__init__()
        target = POSE_ENCODING_DIM
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, target))
        self.trunk = nn.Sequential(
            *(Block(dim_in, num_heads, mlp_ratio, init_values=init_values) for _ in range(trunk_depth))
        )
        self.token_norm = nn.LayerNorm(dim_in)
        self.trunk_norm = nn.LayerNorm(dim_in)
        self.embed_pose = nn.Linear(target, dim_in)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim_in, 3 * dim_in))
        self.adaln_norm = nn.LayerNorm(dim_in, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim_in, dim_in // 2, target)
        self.apply(init_weights)

    def forward(self, aggregated: list[torch.Tensor | None], num_iterations: int = 4) -> list[torch.Tensor]:
        """Returns the activated encoding ``[B,S,9]`` after each iteration."""
        pose_tokens = self.token_norm(aggregated[-1][:, :, 0])
        B, S, _ = pose_tokens.shape
        normed_tokens = self.adaln_norm(pose_tokens)
        pred: torch.Tensor | None = None
        outputs = []
        for _ in range(num_iterations):
            if pred is None:
                embedded = self.embed_pose(self.empty_pose_tokens.expand(B, S, -1))
            else:
                embedded = self.embed_pose(pred.detach())
            shift, scale, gate = self.poseLN_modulation(embedded).chunk(3, dim=-1)
            tokens = gate * (normed_tokens * (1 + scale) + shift) + pose_tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(tokens)))
            pred = delta if pred is None else pred + delta
            outputs.append(activate_pose(pred))
        return outputs
