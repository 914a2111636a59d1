"""EDM samplers (Karras et al. 2022, Algorithm 2): Euler and Heun with stochastic churn.

They run in the equivalent VE coordinates of any process: x~ = x / alpha, sigma~ = sigma / alpha
= e^-lambda, where the PF-ODE is dx~/dsigma~ = (x~ - D(x~)) / sigma~. Heun costs 2 calls per
step except the last step to sigma = 0 (2N - 1 calls on a grid ending at zero).
Churn: for S_min <= sigma~ <= S_max, sigma~_hat = sigma~ (1 + gamma) with
gamma = min(S_churn / N, sqrt 2 - 1), adding noise of std sqrt(sigma~_hat^2 - sigma~^2) S_noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Grid, Model, record_nfe, steps_iter

__all__ = ["edm_sampler"]


def edm_sampler(denoiser, x: Tensor, ts, *, heun: bool = True, S_churn: float = 0.0, S_min: float = 0.0,
                S_max: float = float("inf"), S_noise: float = 1.0, generator: torch.Generator | None = None,
                cond: dict | None = None, callback=None, progress: bool = False, afs: bool = False) -> Tensor:
    """EDM Euler (heun=False) or Heun (heun=True) sampler on the grid `ts` (e.g. spacing "karras")."""
    if S_churn < 0 or S_noise < 0:
        raise ValueError("S_churn and S_noise must be >= 0")
    process = denoiser.process
    g = Grid.of(process, ts)
    model = Model(denoiser, process, cond, afs)
    n = len(g) - 1
    sig = [math.exp(-lam) for lam in g.lam]  # sigma~ (0 where lambda = inf)
    xt = x / g.alpha[0]  # VE coordinates
    gamma_max = min(S_churn / n, math.sqrt(2.0) - 1.0)

    def d_at(y: Tensor, s_ve: float, t) -> tuple[Tensor, Tensor]:
        a = float(process.alpha(t))
        x0 = model.x0(a * y, t)
        return (y - x0) / s_ve, x0

    for i in steps_iter(n, progress, f"EDM {'Heun' if heun else 'Euler'}"):
        s_cur, s_next = sig[i], sig[i + 1]
        t_cur = g.ts[i]
        gamma = gamma_max if S_min <= s_cur <= S_max else 0.0
        if gamma > 0:
            s_hat = s_cur * (1.0 + gamma)
            z = torch.randn(xt.shape, generator=generator, dtype=xt.dtype, device="cpu").to(xt.device)
            xt = xt + math.sqrt(s_hat**2 - s_cur**2) * S_noise * z
            s_cur = s_hat
            t_cur = process.t_of_lambda(torch.tensor(-math.log(s_hat), dtype=torch.float64))
        d, x0 = d_at(xt, s_cur, t_cur)
        if callback is not None:
            callback(i, t_cur, xt * g.alpha[i], x0)
        x_next = xt + (s_next - s_cur) * d
        if heun and s_next > 0:
            d2, _ = d_at(x_next, s_next, g.ts[i + 1])
            x_next = xt + (s_next - s_cur) * 0.5 * (d + d2)
        xt = x_next
    record_nfe(denoiser, model)
    return xt * g.alpha[-1]
