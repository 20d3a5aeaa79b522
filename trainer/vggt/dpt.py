"""DPT dense head (depth / world points): 4 aggregator layers -> reassemble -> RefineNet fusion.

Per layer: shared LayerNorm, 1x1 projection, UV sin-cos embedding (x0.1), resize (x4, x2, x1, x1/2).
Fusion runs coarse to fine with residual conv units whose skip is ``ReLU(x)`` (the official unit
applies an in-place ReLU to its input first). All resampling is bilinear with align_corners=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from trainer.vggt.heads import activate_head

# F.interpolate fails above INT_MAX elements; chunk the batch below this bound (same numbers).
_INTERPOLATE_MAX_ELEMENTS = 1_610_612_736
_HEAD_FEATURES_2 = 32  # fixed width of output_conv2's hidden layer


def interpolate_bilinear(
    x: torch.Tensor, size: tuple[int, int] | None = None, scale_factor: float | None = None
) -> torch.Tensor:
    """``F.interpolate(bilinear, align_corners=True)``, split over the batch when the output is huge."""
    kwargs = dict(size=size, scale_factor=scale_factor, mode="bilinear", align_corners=True)
    out_h, out_w = size if size is not None else (int(x.shape[-2] * scale_factor), int(x.shape[-1] * scale_factor))
    per_item = x.shape[1] * out_h * out_w
    if x.shape[0] * per_item <= _INTERPOLATE_MAX_ELEMENTS:
        return F.interpolate(x, **kwargs)
    step = max(1, _INTERPOLATE_MAX_ELEMENTS // per_item)
    return torch.cat([F.interpolate(chunk, **kwargs) for chunk in x.split(step)], dim=0)


def uv_sincos_embedding(
    height: int, width: int, channels: int, aspect_ratio: float, device: torch.device
) -> torch.Tensor:
    """``[channels, height, width]`` sin-cos embedding of a centred UV grid spanning the image diagonal."""
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, device=device)
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, device=device)
    grid_u, grid_v = torch.meshgrid(u, v, indexing="xy")  # [height, width]

    def sincos(coord: torch.Tensor, dim: int) -> torch.Tensor:
        omega = torch.arange(dim // 2, dtype=torch.float64, device=device) / (dim / 2.0)
        omega = 1.0 / 100.0**omega
        angles = coord.reshape(-1).double()[:, None] * omega[None]
        return torch.cat((angles.sin(), angles.cos()), dim=1).float()

    emb = torch.cat((sincos(grid_u, channels // 2), sincos(grid_v, channels // 2)), dim=-1)
    return emb.view(height, width, channels).permute(2, 0, 1)


class ResidualConvUnit(nn.Module):
    """``conv2(relu(conv1(relu(x)))) + relu(x)``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        return self.conv2(F.relu(self.conv1(x))) + x


class FeatureFusionBlock(nn.Module):
    """``(coarse [+ RCU1(skip)]) -> RCU2 -> bilinear resize -> 1x1 out_conv``."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.has_residual = has_residual
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        if self.has_residual:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = interpolate_bilinear(x, size=size) if size is not None else interpolate_bilinear(x, scale_factor=2.0)
        return self.out_conv(x)


class DPTHead(nn.Module):
    def __init__(
        self,
        dim_in: int,
        patch_size: int = 14,
        output_dim: int = 4,
        activation: str = "inv_log",
        conf_activation: str = "expp1",
        features: int = 256,
        out_channels: tuple[int, ...] = (256, 512, 1024, 1024),
        intermediate_layer_idx: tuple[int, ...] = (4, 11, 17, 23),
        pos_embed: bool = True,
        feature_only: bool = False,
        down_ratio: int = 1,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.activation = activation
        self.conf_activation = conf_activation
        self.intermediate_layer_idx = tuple(intermediate_layer_idx)
        self.pos_embed = pos_embed
        self.feature_only = feature_only
        self.down_ratio = down_ratio
        # Frames per activation-checkpointed chunk while grad is enabled (None: store activations).
        self.checkpoint_frames: int | None = None
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(dim_in, oc, 1) for oc in out_channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for k, oc in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{k}_rn", nn.Conv2d(oc, features, 3, padding=1, bias=False))
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, 3, padding=1)
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, _HEAD_FEATURES_2, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(_HEAD_FEATURES_2, output_dim, 1),
            )

    def forward(
        self,
        aggregated: list[torch.Tensor | None],
        images: torch.Tensor,
        patch_start_idx: int,
        frames_chunk_size: int | None = 8,
    ):
        """-> (values ``[B,S,H,W,C]``, conf ``[B,S,H,W]``), or features ``[B,S,C,H',W']`` if feature_only.

        Frames are independent here, so they are processed ``frames_chunk_size`` at a time to bound
        the memory of the full-resolution maps.
        """
        S = images.shape[1]
        forward = self._forward
        if self.checkpoint_frames and torch.is_grad_enabled():
            # Frames are independent, so recomputing one chunk at a time in backward gives the same
            # gradients while only the chunk being recomputed holds its activations.
            frames_chunk_size = self.checkpoint_frames

            def forward(*args):
                return torch.utils.checkpoint.checkpoint(self._forward, *args, use_reentrant=False)

        if not frames_chunk_size or frames_chunk_size >= S:
            return forward(aggregated, images, patch_start_idx, 0, S)
        chunks = [
            forward(aggregated, images, patch_start_idx, start, min(start + frames_chunk_size, S))
            for start in range(0, S, frames_chunk_size)
        ]
        if self.feature_only:
            return torch.cat(chunks, dim=1)
        return torch.cat([c[0] for c in chunks], dim=1), torch.cat([c[1] for c in chunks], dim=1)

    def _with_pos_embed(self, x: torch.Tensor, aspect_ratio: float) -> torch.Tensor:
        emb = uv_sincos_embedding(x.shape[-2], x.shape[-1], x.shape[1], aspect_ratio, x.device)
        return x + 0.1 * emb.to(x.dtype)[None]

    def _forward(self, aggregated, images, patch_start_idx, start, end):
        B, _, _, H, W = images.shape
        S = end - start
        grid_h, grid_w = H // self.patch_size, W // self.patch_size
        maps = []
        for k, layer in enumerate(self.intermediate_layer_idx):
            x = aggregated[layer][:, start:end, patch_start_idx:]
            x = self.norm(x.reshape(B * S, grid_h * grid_w, x.shape[-1]))
            x = x.permute(0, 2, 1).reshape(B * S, x.shape[-1], grid_h, grid_w)
            x = self.projects[k](x)
            if self.pos_embed:
                x = self._with_pos_embed(x, W / H)
            maps.append(self.resize_layers[k](x))
        out = self._fuse(maps)
        out = interpolate_bilinear(
            out, size=(int(grid_h * self.patch_size / self.down_ratio), int(grid_w * self.patch_size / self.down_ratio))
        )
        if self.pos_embed:
            out = self._with_pos_embed(out, W / H)
        if self.feature_only:
            return out.reshape(B, S, *out.shape[1:])
        values, conf = activate_head(self.scratch.output_conv2(out), self.activation, self.conf_activation)
        return values.reshape(B, S, *values.shape[1:]), conf.reshape(B, S, *conf.shape[1:])

    def _fuse(self, maps: list[torch.Tensor]) -> torch.Tensor:
        s = self.scratch
        l1, l2, l3, l4 = s.layer1_rn(maps[0]), s.layer2_rn(maps[1]), s.layer3_rn(maps[2]), s.layer4_rn(maps[3])
        out = s.refinenet4(l4, size=l3.shape[2:])
        out = s.refinenet3(out, l3, size=l2.shape[2:])
        out = s.refinenet2(out, l2, size=l1.shape[2:])
        out = s.refinenet1(out, l1)
        return s.output_conv1(out)
