"""Peak memory of one training step, traced without allocating it (plan a GPU before renting one).

The model is built with fake tensors (`torch._subclasses.FakeTensorMode`: shapes, dtypes and
storage sizes, no data), the strategy's LoRA is applied, and two training steps run through the
trainer's own code path: forward under bf16 autocast (heads in fp32, as on a GPU), backward,
AdamW step, zero_grad. A dispatch-level tracker adds up the bytes of every live tensor storage, so
activation checkpointing, the autocast casts, saved tensors and optimizer state count exactly as
the code creates them; the second step is the steady state (AdamW state exists throughout).

The loss indexes with boolean masks (data-dependent shapes), which fake tensors cannot trace, so its
own working set is measured separately on real tensors of the prediction shapes and added on top
of what the forward keeps alive. Not modelled: the CUDA context (~0.5 GB), the caching allocator's
fragmentation, DDP gradient buckets, and op lists where CUDA autocast differs from CPU autocast.
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from trainer.builders import bf16_autocast
from trainer.config import TrainConfig

GIB = 2**30


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages created inside the mode and still alive: current and peak."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def ignore(self, tensors) -> None:
        """Storages that exist already (weights, inputs): views of them must not count as new."""
        for t in tensors:
            self._sizes.setdefault(id(t.untyped_storage()), 0)

    def reset_peak(self) -> None:
        self.peak = self.current

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()  # one Python object per storage for its whole life
        key = id(storage)
        if key in self._sizes:
            return
        size = storage.nbytes()
        self._sizes[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.current -= self._sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


@dataclass
class StepMemory:
    """Bytes; `total` = weights + max(step peak, kept after forward + loss working set)."""

    model: str
    strategy: str
    frames: int
    size: int
    batch_size: int
    checkpointing: bool
    bf16: bool
    trainable: int
    weights: int  # every parameter and buffer (frozen fp32 base + LoRA)
    persistent_state: int  # what outlives a step: AdamW exp_avg + exp_avg_sq (+ small caches)
    kept_after_forward: int  # saved activations + outputs + persistent state, when backward starts
    step_peak: int  # forward, backward, optimizer step (without the loss graph)
    loss_working_set: int
    total: int

    def lines(self) -> list[str]:
        def gib(n):
            return f"{n / GIB:6.2f} GiB ({n / 1e9:.2f} GB)"

        return [
            f"{self.model}, strategy {self.strategy}, batch {self.batch_size} x {self.frames} frames x {self.size}², "
            f"{'bf16 autocast' if self.bf16 else 'fp32'}, "
            f"activation checkpointing {'on' if self.checkpointing else 'off'}",
            f"  weights (frozen base + LoRA)   {gib(self.weights)}",
            f"  AdamW state ({self.trainable:,} trainable) {gib(self.persistent_state)}",
            f"  kept for backward             {gib(self.kept_after_forward - self.persistent_state)}",
            f"  loss working set              {gib(self.loss_working_set)}",
            f"  peak tensor memory            {gib(self.total)}",
        ]


def _build(cfg: TrainConfig, device: str) -> torch.nn.Module:
    from trainer.builders import TRAIN_HEADS
    from trainer.lora import apply_strategy
    from trainer.vggt import VGGT, VGGTConfig

    with torch.device(device):
        peft_model = apply_strategy(VGGT(VGGTConfig.preset(cfg.model).with_heads(TRAIN_HEADS)), cfg.lora)
    base = peft_model.get_base_model()
    base.set_activation_checkpointing(cfg.activation_checkpointing, cfg.dpt_checkpoint_frames)
    return peft_model


def _loss_working_set(predictions: dict[str, torch.Tensor], cfg: TrainConfig) -> int:
    """Peak bytes the loss adds (forward + backward) on real tensors shaped like `predictions`."""
    from trainer.losses import compute_loss, prepare_batch

    gen = torch.Generator().manual_seed(0)
    B, S, H, W = predictions["depth"].shape[:4]
    preds = {
        "depth": (torch.rand(B, S, H, W, 1, generator=gen) * 5 + 1).requires_grad_(),
        "depth_conf": (torch.rand(B, S, H, W, generator=gen) + 1).requires_grad_(),
        "pose_enc_list": [torch.rand(B, S, 9, generator=gen).requires_grad_() for _ in predictions["pose_enc_list"]],
    }
    depths = torch.rand(B, S, H, W, generator=gen) * 20 + 1
    depths[torch.rand(B, S, H, W, generator=gen) < 0.3] = 0  # holes, as in laser GT
    extrinsics = torch.eye(3, 4).repeat(B, S, 1, 1)
    extrinsics[..., 3] = torch.rand(B, S, 3, generator=gen)
    intrinsics = torch.tensor([[W, 0, W / 2], [0, W, H / 2], [0, 0, 1]], dtype=torch.float32).repeat(B, S, 1, 1)
    batch = prepare_batch(
        {"depths": depths, "point_masks": depths > 0, "extrinsics": extrinsics, "intrinsics": intrinsics}
    )
    tracker = LiveTensorBytes()
    tracker.ignore([t for t in tree_flatten((preds, batch))[0] if isinstance(t, torch.Tensor)])
    with tracker:
        loss, _ = compute_loss(preds, batch, cfg.loss)
        loss.backward()
    return tracker.peak


def estimate_step_memory(
    cfg: TrainConfig, frames: int = 8, size: int = 518, fake: bool = True, bf16: bool | None = None
) -> StepMemory:
    """Peak tensor memory of a training step of `cfg` (model, strategy, checkpointing, batch size).

    `fake=False` runs the same trace on real tensors (slow for VGGT-1B; used to check the fake trace).
    `bf16` defaults to the GPU behaviour of `cfg.precision` (auto/bf16: autocast; fp32: none).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    bf16 = cfg.precision != "fp32" if bf16 is None else bf16
    batch_size = cfg.data.batch_size
    from trainer.builders import freeze_modes

    # Fake: built on the meta device (no init, no memory), then given fake storages inside the mode.
    model = _build(cfg, "meta" if fake else "cpu")
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else nullcontext():
        if fake:
            model.to_empty(device="cpu")
        freeze_modes(model)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        images = torch.rand(batch_size, frames, 3, size, size)
        weights = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()])
        tracker = LiveTensorBytes()
        tracker.ignore([*model.parameters(), *model.buffers(), images])
        with tracker:
            for step in range(2):  # step 2 = steady state: AdamW state lives through the whole step
                if step == 1:
                    persistent_state = tracker.current
                    tracker.reset_peak()
                with bf16_autocast("cpu", bf16):
                    predictions = model(images)
                kept = tracker.current
                outputs = [
                    o
                    for o in (predictions["depth"], predictions["depth_conf"], *predictions["pose_enc_list"])
                    if o.requires_grad
                ]  # strategy A: nothing upstream of the camera head trains
                torch.autograd.backward(outputs, [torch.ones_like(o) for o in outputs])
                del outputs
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                shapes = {"depth": predictions["depth"], "pose_enc_list": predictions["pose_enc_list"]}
                del predictions
            step_peak = tracker.peak
    loss = _loss_working_set(shapes, cfg)
    return StepMemory(
        model=cfg.model,
        strategy=cfg.lora.strategy,
        frames=frames,
        size=size,
        batch_size=batch_size,
        checkpointing=cfg.activation_checkpointing,
        bf16=bf16,
        trainable=sum(p.numel() for p in params),
        weights=weights,
        persistent_state=persistent_state,
        kept_after_forward=kept,
        step_peak=step_peak,
        loss_working_set=loss,
        total=weights + max(step_peak, kept + loss),
    )
