"""A small single-process sCT / sCD training loop: optimiser, EMA, non-finite step skipping.

    student = build_student("mlp-2d", sigma_data=0.5)
    loss = SCMLoss(SCMConfig(mode="scd", tangent_warmup=200), TeacherVelocity(teacher, 0.5))
    result = distill(student, loss, data, steps=1000, batch_size=256, lr=1e-3)
    x = consistency_sample(result.ema, torch.randn(64, 2), steps=2)

sCM's optimiser is RAdam, betas (0.9, 0.99) (CIFAR: lr 1e-4, batch 512, EMA half-life 0.5 Mimg).
The EMA is fewstep.training's (half-life in images, EDM2 style); it is used for sampling only, the
loss's target is the stop-gradient current model (scm.py). For checkpoints, DDP and logging use
`fewstep.training.Trainer` with `SCMLoss` as its objective (same call signature as DiffusionLoss).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..progress import progress as _progress
from ..training.ema import EMA

__all__ = ["distill", "DistillResult", "batch_source"]


@dataclass
class DistillResult:
    """student (trained, train mode), ema (the averaged copy, eval mode), history (per-log rows)."""

    student: nn.Module
    ema: nn.Module
    history: list = field(default_factory=list)


def batch_source(data, batch_size: int, generator: torch.Generator) -> Callable[[], tuple]:
    """A function returning (x0, labels or None) batches from:
    a callable(batch_size, generator) -> x0 or (x0, labels); a tensor of samples; an (x, y) pair;
    or a fewstep Dataset (random batches with replacement across steps, without within a batch)."""
    if callable(data) and not isinstance(data, Tensor) and not hasattr(data, "images"):
        def draw():
            out = data(batch_size, generator)
            return out if isinstance(out, tuple) else (out, None)
        return draw
    if hasattr(data, "images"):
        x, y = data.images, data.labels
    elif isinstance(data, (tuple, list)):
        x, y = data
    else:
        x, y = data, None
    if len(x) < 1:
        raise ValueError("distill: no training data")

    def draw():
        idx = torch.randperm(len(x), generator=generator)[:batch_size]
        if len(idx) < batch_size:
            idx = torch.randint(len(x), (batch_size,), generator=generator)
        return x[idx], (None if y is None else y[idx])
    return draw


def distill(student: nn.Module, loss: nn.Module, data, *, steps: int, batch_size: int = 256, lr: float = 1e-4,
            betas=(0.9, 0.99), weight_decay: float = 0.0, optimizer: str = "radam", grad_clip: float | None = None,
            ema_half_life: float | None = None, lr_warmup: int = 0, amp: bool = False, device=None, seed: int = 0,
            log_every: int = 100, progress: bool = False, callback=None) -> DistillResult:
    """Train `student` with `loss` (an SCMLoss) for `steps` iterations; returns a DistillResult.

    ema_half_life: in images (default: 5% of the images seen in the run); lr_warmup: linear warm-up
    iterations; amp: bfloat16 autocast for the gradient pass (the JVP stays float32); grad_clip:
    global-norm clipping; callback(step, stats) after each step. Steps whose loss or gradient is not
    finite are skipped (no optimiser or EMA update).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if optimizer not in ("radam", "adam", "adamw"):
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: radam, adam, adamw")
    device = torch.device(device) if device is not None else next(student.parameters()).device
    student.to(device).train()
    loss.to(device)
    params = [p for p in list(student.parameters()) + list(loss.parameters()) if p.requires_grad]
    opt_cls = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    opt = opt_cls(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    half_life = ema_half_life if ema_half_life is not None else 0.05 * steps * batch_size
    ema = EMA(student, batch_size, half_life)
    gen = torch.Generator().manual_seed(seed)
    if getattr(loss, "generator", None) is None:
        loss.generator = torch.Generator().manual_seed(seed + 1)
    draw = batch_source(data, batch_size, gen)
    history, acc, n_acc = [], {"loss": 0.0, "mse": 0.0}, 0
    for step in _progress(range(steps), total=steps, desc="distill", enabled=progress):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / lr_warmup) if lr_warmup else lr
        x0, labels = draw()
        x0 = x0.to(device)
        labels = labels.to(device) if labels is not None else None
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            value, stats = loss(student, x0, labels, step)
        opt.zero_grad(set_to_none=True)
        value.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else math.inf)
        if not (torch.isfinite(value) and torch.isfinite(norm)):
            continue
        opt.step()
        ema.update(student, (step + 1) * batch_size)
        acc["loss"] += float(value.detach())
        acc["mse"] += float(stats["mse"].mean())
        n_acc += 1
        if callback is not None:
            callback(step, stats)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            history.append({"step": step + 1, **{k: v / max(n_acc, 1) for k, v in acc.items()}})
            acc, n_acc = {"loss": 0.0, "mse": 0.0}, 0
    return DistillResult(student, ema.module, history)


def copy_student(student: nn.Module) -> nn.Module:
    """A detached deep copy (e.g. the initial student, for before/after comparisons)."""
    return copy.deepcopy(student).eval().requires_grad_(False)
