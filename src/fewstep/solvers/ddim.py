"""DDIM (Song et al. 2021), for any process.

x_t = alpha_t x0 + sqrt(sigma_t^2 - c^2) eps + c z with c = eta sigma_t sqrt(1 - e^(-2h)),
h = lambda_t - lambda_s: eta = 0 is the deterministic DDIM (= DPM-Solver-1), eta = 1 ancestral
DDPM sampling. (For VP this c is DDIM's sigma_t(eta), eq. 16, written in log-SNR form.)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Grid, Model, record_nfe, steps_iter

__all__ = ["ddim"]


def ddim(denoiser, x: Tensor, ts, *, eta: float = 0.0, generator: torch.Generator | None = None,
         cond: dict | None = None, callback=None, progress: bool = False, afs: bool = False) -> Tensor:
    """DDIM with stochasticity eta >= 0 (noise z drawn from `generator`)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    process = denoiser.process
    g = Grid.of(process, ts)
    model = Model(denoiser, process, cond, afs)
    for i in steps_iter(len(g) - 1, progress, "DDIM"):
        x0 = model.x0(x, g.ts[i])
        if callback is not None:
            callback(i, g.ts[i], x, x0)
        a_t, s_t = g.alpha[i + 1], g.sigma[i + 1]
        if s_t == 0.0:
            x = a_t * x0
            continue
        eps = (x - g.alpha[i] * x0) / g.sigma[i]
        h = g.lam[i + 1] - g.lam[i]
        c = eta * s_t * math.sqrt(-math.expm1(-2.0 * h))
        x = a_t * x0 + math.sqrt(max(s_t**2 - c**2, 0.0)) * eps
        if c > 0:
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            x = x + c * z
    record_nfe(denoiser, model)
    return x
