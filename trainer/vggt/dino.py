"""DINOv2 ViT (with register tokens) used as VGGT's patch embedder (``aggregator.patch_embed``).

Only what VGGT needs: the forward returns the final-normed patch tokens (``x_norm_patchtokens``);
cls and register outputs are discarded by the aggregator. ``mask_token`` exists for checkpoint
compatibility and is frozen, as in the official builder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.vggt.layers import Block, init_weights, run_block

DINO_NORM_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` conv; ``[B,3,H,W] -> [B, (H/p)(W/p), C]`` row-major."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    """ViT with cls + register tokens, LayerNorm eps 1e-6, LayerScale, bicubic-antialiased pos embed."""

    def __init__(
        self,
        img_size: int = 518,
        patch_size: int = 14,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_register_tokens: int = 4,
        init_values: float = 1.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_register_tokens = num_register_tokens
        grid = img_size // patch_size
        # Parameter registration order = official state_dict order.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=DINO_NORM_EPS)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=DINO_NORM_EPS)
        self.activation_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)
        self.apply(init_weights)

    def interpolated_pos_embed(self, grid_h: int, grid_w: int, dtype: torch.dtype) -> torch.Tensor:
        """Positional embedding for a ``grid_h x grid_w`` patch grid, cls entry first.

        The stored square grid is used as is only when the request is the same square grid; otherwise
        its patch part is resized in fp32 with bicubic + antialias to an explicit size.
        """
        stored = self.pos_embed.shape[1] - 1
        side = int(round(stored**0.5))
        if grid_h * grid_w == stored and grid_h == grid_w:
            return self.pos_embed.to(dtype)
        pos_embed = self.pos_embed.float()
        dim = pos_embed.shape[-1]
        patch_pos = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat((pos_embed[:, :1], patch_pos), dim=1).to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[N,3,H,W]`` (already mean/std normalised) -> normed patch tokens ``[N, (H/p)(W/p), C]``."""
        H, W = images.shape[-2:]
        x = self.patch_embed(images)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolated_pos_embed(H // self.patch_size, W // self.patch_size, x.dtype)
        x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        checkpointed = self.activation_checkpointing and self.training
        for block in self.blocks:
            x = run_block(block, checkpointed, x)
        return self.norm(x)[:, 1 + self.num_register_tokens :]
