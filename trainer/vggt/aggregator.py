"""Alternating-attention aggregator: per-frame DINO patch tokens -> frame/global attention stack.

Token layout per frame: ``[camera(1), register(R), patches(h*w)]``; special-token index 0 of the
learned ``camera_token``/``register_token`` marks frame 0 of each sequence, index 1 all other frames.
Each of the ``depth`` iterations runs one frame block (attention within a frame) then one global
block (attention over all frames of a sequence); layer ``i``'s output is ``cat(frame_i, global_i)``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from trainer.vggt.config import VGGTConfig
from trainer.vggt.dino import DinoVisionTransformer
from trainer.vggt.layers import Block, RotaryEmbedding2D, init_weights, run_block

RESNET_MEAN = (0.485, 0.456, 0.406)
RESNET_STD = (0.229, 0.224, 0.225)


class Aggregator(nn.Module):
    def __init__(self, config: VGGTConfig) -> None:
        super().__init__()
        c = config
        self.patch_size = c.patch_size
        self.depth = c.depth
        self.patch_start_idx = 1 + c.num_register_tokens
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, c.embed_dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, c.num_register_tokens, c.embed_dim) * 1e-6)
        if c.patch_embed == "dinov2":
            self.patch_embed = DinoVisionTransformer(
                img_size=c.img_size,
                patch_size=c.patch_size,
                embed_dim=c.embed_dim,
                depth=c.dino_depth,
                num_heads=c.dino_num_heads,
                mlp_ratio=c.mlp_ratio,
                num_register_tokens=c.num_register_tokens,
                init_values=1.0,
            )
        else:
            # A plain Conv2d (not a subclass) so LoRA targeting by type still sees it.
            self.patch_embed = nn.Conv2d(3, c.embed_dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.rope = RotaryEmbedding2D(c.rope_freq) if c.rope_freq > 0 else None
        self.frame_blocks = nn.ModuleList(self._block(c) for _ in range(c.depth))
        self.global_blocks = nn.ModuleList(self._block(c) for _ in range(c.depth))
        self.register_buffer("_resnet_mean", torch.tensor(RESNET_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(RESNET_STD).view(1, 1, 3, 1, 1), persistent=False)
        self.activation_checkpointing = c.activation_checkpointing

    @staticmethod
    def _block(c: VGGTConfig) -> Block:
        block = Block(c.embed_dim, c.num_heads, c.mlp_ratio, init_values=c.init_values, qk_norm=c.qk_norm)
        block.apply(init_weights)
        return block

    def reset_buffers(self, device: torch.device | str = "cpu") -> None:
        """Recreate the non-persistent normalisation buffers (after meta-device construction)."""
        self._resnet_mean = torch.tensor(RESNET_MEAN, device=device).view(1, 1, 3, 1, 1)
        self._resnet_std = torch.tensor(RESNET_STD, device=device).view(1, 1, 3, 1, 1)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.activation_checkpointing = bool(enabled)
        if isinstance(self.patch_embed, DinoVisionTransformer):
            self.patch_embed.activation_checkpointing = bool(enabled)

    def _special_tokens(self, token: torch.Tensor, B: int, S: int) -> torch.Tensor:
        """``[1,2,n,C]`` -> ``[B*S,n,C]``: index 0 for frame 0, index 1 for frames 1..S-1."""
        first = token[:, :1].expand(B, 1, *token.shape[2:])
        others = token[:, 1:].expand(B, S - 1, *token.shape[2:])
        return torch.cat((first, others), dim=1).reshape(B * S, *token.shape[2:])

    def _positions(self, grid_h: int, grid_w: int, device: torch.device) -> torch.Tensor:
        """(y, x) per token of one frame: special tokens (0,0), patches (row+1, col+1)."""
        ys = torch.arange(grid_h, device=device).repeat_interleave(grid_w)
        xs = torch.arange(grid_w, device=device).repeat(grid_h)
        patches = torch.stack((ys, xs), dim=-1) + 1
        special = torch.zeros(self.patch_start_idx, 2, dtype=patches.dtype, device=device)
        return torch.cat((special, patches), dim=0)

    def forward(
        self, images: torch.Tensor, keep_layers: Iterable[int] | None = None
    ) -> tuple[list[torch.Tensor | None], int]:
        """``images [B,S,3,H,W]`` in [0,1] -> (per-layer ``[B,S,P,2C]`` outputs, patch_start_idx).

        Only the layers in ``keep_layers`` (default: all) are kept; the others are ``None``, so a
        head indexing ``outputs[i]`` sees the official list layout without the memory of 24 layers.
        """
        B, S, _, H, W = images.shape
        keep = set(range(self.depth)) if keep_layers is None else {i % self.depth for i in keep_layers}
        images = (images - self._resnet_mean) / self._resnet_std
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        patch_tokens = self.patch_embed(images.reshape(B * S, 3, H, W))
        if patch_tokens.ndim == 4:  # "conv" patch embed: [N,C,h,w] -> row-major tokens
            patch_tokens = patch_tokens.flatten(2).transpose(1, 2)
        C = patch_tokens.shape[-1]
        tokens = torch.cat(
            (
                self._special_tokens(self.camera_token, B, S),
                self._special_tokens(self.register_token, B, S),
                patch_tokens,
            ),
            dim=1,
        )
        P = tokens.shape[1]
        rope_frame = rope_global = (None, None)
        if self.rope is not None:
            head_dim = self.frame_blocks[0].attn.head_dim
            grid_h, grid_w = H // self.patch_size, W // self.patch_size
            # Patch positions are shifted by one, so they run up to max(grid_h, grid_w).
            cos, sin = self.rope.tables(
                self._positions(grid_h, grid_w, images.device), head_dim, num_positions=max(grid_h, grid_w) + 1
            )
            rope_frame = (cos, sin)
            # Global attention reuses each frame's positions for all S frames of a sequence.
            rope_global = (cos.repeat(S, 1), sin.repeat(S, 1))
        checkpointed = self.activation_checkpointing and self.training
        outputs: list[torch.Tensor | None] = []
        for i in range(self.depth):
            tokens = run_block(self.frame_blocks[i], checkpointed, tokens.reshape(B * S, P, C), *rope_frame)
            frame_out = tokens.reshape(B, S, P, C)
            tokens = run_block(self.global_blocks[i], checkpointed, tokens.reshape(B, S * P, C), *rope_global)
            global_out = tokens.reshape(B, S, P, C)
            outputs.append(torch.cat((frame_out, global_out), dim=-1) if i in keep else None)
        return outputs, self.patch_start_idx
