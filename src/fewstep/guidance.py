"""Guidance and thresholding as denoiser transforms: each wraps a denoiser and is one.

- `CFG`: classifier-free guidance (Ho & Salimans 2022), D = D_u + w (D_c - D_u), with the
  conditional and unconditional inputs in one batched model call; w = 1 is the conditional model.
  `LabelCFG`: the same against a null class label, with the labels given at each call (so that a
  batch can be split, as `fit_solver` does). Both take a guidance interval (Kynkaanniemi et al.
  2024, "Applying guidance in a limited interval improves sample and distribution quality"): guide
  only where the noise level sigma / alpha lies in (lo, hi], and use the conditional model alone
  (one call of the batch size, not two) elsewhere.
- `ClassifierGuidance`: grad_x log p(y | x_t) of a noisy classifier added to the score with scale
  s (Dhariwal & Nichol 2021): x0 <- x0 + s (sigma^2 / alpha) grad log p(y | x_t).
- `Thresholded`: static clipping or dynamic thresholding of x0 (Imagen; the official DPM-Solver
  semantics: s = max(quantile(|x0|, ratio), max_val), x0 <- clamp(x0, -s, s) / s).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .processes import _bcast

__all__ = ["CFG", "LabelCFG", "ClassifierGuidance", "Thresholded"]


class _Transform:
    """A denoiser wrapping another; forwards `process` and call counts."""

    def __init__(self, inner):
        self.inner = inner
        self.process = inner.process

    @property
    def calls(self):
        return getattr(self.inner, "calls", 0)


def check_interval(interval) -> tuple | None:
    """A guidance interval (lo, hi) of noise levels sigma / alpha with 0 <= lo < hi (hi may be inf), or None."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance interval must be a pair (lo, hi) of noise levels sigma / alpha, got {interval!r}")
    if not (0.0 <= lo < hi):
        raise ValueError(f"guidance interval needs 0 <= lo < hi, got ({lo:g}, {hi:g})")
    return lo, hi


def in_interval(process, t: Tensor, interval: tuple) -> Tensor:
    """Whether the noise level sigma / alpha of `process` at time(s) t lies in the interval (lo, hi]."""
    s = torch.exp(-process.lambda_(t))
    return (s > interval[0]) & (s <= interval[1])


def _guided(process, t: Tensor, interval) -> Tensor | bool:
    """Where guidance applies at time(s) t: True without an interval, else sigma / alpha in (lo, hi]
    (a bool when all the times agree, else a [B] mask for per-sample times)."""
    if interval is None:
        return True
    inside = in_interval(process, t, interval)
    if bool(inside.all()) or not bool(inside.any()):
        return bool(inside.all())
    return inside


def _cat(a, b):
    if isinstance(a, Tensor):
        return torch.cat([a, b.to(a.device)], 0)
    if a != b:
        raise ValueError("CFG: non-tensor conditioning must be equal in cond and uncond")
    return a


class CFG(_Transform):
    """Classifier-free guidance at `scale` with conditioning `cond` and `uncond` (dicts of model kwargs);
    interval=(lo, hi): guide only where sigma / alpha is in (lo, hi], the conditional model elsewhere.

    Example: CFG(denoiser, 3.0, {"class_labels": y}, {"class_labels": torch.full_like(y, num_classes)}).
    """

    def __init__(self, denoiser, scale: float, cond: dict, uncond: dict, interval=None):
        super().__init__(denoiser)
        if set(cond) != set(uncond):
            raise ValueError(f"CFG: cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
        self.scale = float(scale)
        self.cond, self.uncond = cond, uncond
        self.interval = check_interval(interval)

    def __call__(self, x: Tensor, t, **extra) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        guided = _guided(self.process, t, self.interval)
        if self.scale == 1.0 or guided is False:
            return self.inner(x, t, **self.cond, **extra)
        if self.scale == 0.0 and guided is True:
            return self.inner(x, t, **self.uncond, **extra)
        kw = {k: _cat(self.cond[k], self.uncond[k]) for k in self.cond}
        tt = torch.cat([t, t]) if t.ndim == 1 else t
        both = self.inner(torch.cat([x, x], 0), tt, **kw, **extra)
        d_c, d_u = both.chunk(2, 0)
        out = d_u + self.scale * (d_c - d_u)
        if guided is True:
            return out
        return torch.where(guided.to(out.device).reshape(-1, *([1] * (out.ndim - 1))), out, d_c)


class LabelCFG(_Transform):
    """CFG at `scale` for class labels given per call: D(x, t, class_labels=y) = D_u + scale (D_c - D_u),
    with D_u the model at the label `null_label` (e.g. num_classes)."""

    def __init__(self, denoiser, scale: float, null_label: int, interval=None):
        super().__init__(denoiser)
        self.scale, self.null_label = float(scale), int(null_label)
        self.interval = check_interval(interval)

    def __call__(self, x: Tensor, t, class_labels: Tensor, **extra) -> Tensor:
        null = torch.full_like(class_labels, self.null_label)
        return CFG(self.inner, self.scale, {"class_labels": class_labels}, {"class_labels": null},
                   self.interval)(x, t, **extra)


class ClassifierGuidance(_Transform):
    """Classifier guidance: `log_prob(x, t, y) -> [B]` is log p(y | x_t) (differentiable in x)."""

    def __init__(self, denoiser, log_prob: Callable, y, scale: float = 1.0):
        super().__init__(denoiser)
        self.log_prob, self.y, self.scale = log_prob, y, float(scale)

    def __call__(self, x: Tensor, t, **cond) -> Tensor:
        x0 = self.inner(x, t, **cond)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(xg, t, self.y).sum(), xg)
        alpha, sigma = self.process.alpha_sigma(self.process.check(t))
        return x0 + self.scale * _bcast(sigma**2 / alpha, x) * grad.to(x.dtype)


class Thresholded(_Transform):
    """Clip x0: kind="static" clamps to [-max_val, max_val]; kind="dynamic" as the official DPM-Solver."""

    def __init__(self, denoiser, kind: str = "dynamic", ratio: float = 0.995, max_val: float = 1.0):
        super().__init__(denoiser)
        if kind not in ("static", "dynamic"):
            raise ValueError(f"thresholding must be 'static' or 'dynamic', got {kind!r}")
        if not (0 < ratio <= 1) or not max_val > 0:
            raise ValueError("thresholding needs 0 < ratio <= 1 and max_val > 0")
        self.kind, self.ratio, self.max_val = kind, ratio, max_val

    def __call__(self, x: Tensor, t, **cond) -> Tensor:
        x0 = self.inner(x, t, **cond)
        if self.kind == "static":
            return x0.clamp(-self.max_val, self.max_val)
        s = torch.quantile(x0.abs().reshape(x0.shape[0], -1).float(), self.ratio, dim=1).to(x0.dtype)
        s = _bcast(torch.clamp(s, min=self.max_val), x0)
        return torch.clamp(x0, -s, s) / s
