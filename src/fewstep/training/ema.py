"""Exponential moving average of model weights with a half-life counted in training images.

EDM2 style (Karras et al. 2024, Sec. 3 / the EDM training loop): after a step that consumed
`batch_size` images, theta_ema <- beta theta_ema + (1 - beta) theta with
beta = 0.5 ** (batch_size / half_life_images), so the weight of an update halves after
`half_life_images` images whatever the batch size. Warm-up (EDM's ema_rampup_ratio): the half-life
used is min(half_life_images, warmup_ratio * images_seen), so early on the average follows the
model closely instead of remembering its random initialisation.

Floating parameters are averaged; buffers (e.g. running statistics) are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "ema_beta"]


def ema_beta(batch_size: int, half_life_images: float, images_seen: float | None = None,
             warmup_ratio: float | None = None) -> float:
    """beta = 0.5 ** (batch_size / h), h = half_life_images or, with warm-up,
    min(half_life_images, warmup_ratio * images_seen). h = 0 gives beta = 0 (no averaging)."""
    h = float(half_life_images)
    if warmup_ratio is not None and images_seen is not None:
        h = min(h, float(warmup_ratio) * float(images_seen))
    if h <= 0:
        return 0.0
    return 0.5 ** (batch_size / h)


class EMA:
    """An averaged copy of `model` (`ema.module`, eval mode, no gradients).

    update(model, images_seen) after each optimiser step; `state_dict()` / `load_state_dict()`
    give the averaged weights (the module's own state dict) for checkpoints.
    """

    def __init__(self, model: nn.Module, batch_size: int, half_life_images: float,
                 warmup_ratio: float | None = None):
        if batch_size < 1:
            raise ValueError(f"EMA batch_size must be positive, got {batch_size}")
        if not half_life_images >= 0:
            raise ValueError(f"EMA half_life_images must be >= 0, got {half_life_images}")
        if warmup_ratio is not None and not warmup_ratio > 0:
            raise ValueError(f"EMA warmup_ratio must be positive (or None), got {warmup_ratio}")
        self.batch_size, self.half_life_images, self.warmup_ratio = int(batch_size), float(half_life_images), warmup_ratio
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def beta(self, images_seen: float) -> float:
        return ema_beta(self.batch_size, self.half_life_images, images_seen, self.warmup_ratio)

    @torch.no_grad()
    def update(self, model: nn.Module, images_seen: float) -> float:
        """Average in the current weights of `model`; images_seen counts images *including* this step.
        Returns the beta used."""
        beta = self.beta(images_seen)
        for p_ema, p in zip(self.module.parameters(), model.parameters()):
            if p_ema.is_floating_point():
                p_ema.lerp_(p.detach().to(p_ema.dtype), 1.0 - beta)
            else:
                p_ema.copy_(p.detach())
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b.detach())
        return beta

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)

    def to(self, device) -> "EMA":
        self.module.to(device)
        return self
