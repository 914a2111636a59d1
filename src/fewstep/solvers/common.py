"""What every solver shares: the grid's alpha / sigma / lambda, the model-call wrapper, phi functions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..progress import progress

__all__ = ["Grid", "Model", "analytic_x0", "phis", "steps_iter", "final_order", "record_nfe"]


@dataclass
class Grid:
    """alpha, sigma, lambda at each grid time as Python floats (float64 arithmetic)."""

    ts: Tensor
    alpha: list
    sigma: list
    lam: list

    @classmethod
    def of(cls, process, ts) -> "Grid":
        ts = process.check(torch.as_tensor(ts, dtype=torch.float64).flatten())
        if ts.numel() < 2 or not torch.all(ts[1:] < ts[:-1]):
            raise ValueError("the time grid must hold at least 2 strictly decreasing times")
        a, s = process.alpha_sigma(ts)
        lam = [float(v) for v in process.lambda_(ts)]
        return cls(ts, [float(v) for v in a], [float(v) for v in s], lam)

    def __len__(self):
        return self.ts.numel()


def analytic_x0(x: Tensor, t, process, sigma_data: float) -> Tensor:
    """E[x0 | x_t] for zero-mean Gaussian data of std sigma_data: alpha sd^2 x / (alpha^2 sd^2 + sigma^2).

    The "analytical first step" (AFS, Zhou et al. 2024, "Fast ODE-based sampling for diffusion models
    in around 5 steps"): at the start of sampling (VP t = T: alpha ~ 0.006; EDM sigma = 80; flow t = 1)
    the denoiser's output hardly depends on the data beyond its mean, so the first model call can be
    replaced by this closed form and spent on one more step instead.
    """
    a, s = (float(v) for v in process.alpha_sigma(torch.as_tensor(t, dtype=torch.float64)))
    sd2 = float(sigma_data) ** 2
    return x * (a * sd2 / (a * a * sd2 + s * s))


class Model:
    """Calls the denoiser at grid time index i (or any time t) with the solver's conditioning.

    Gives x0 = D(x, t) and eps = (x - alpha x0) / sigma in x's dtype; counts calls in `.nfe`.
    afs=True: the first call is answered by `analytic_x0` (the denoiser's sigma_data, else 0.5)
    and not counted.
    """

    def __init__(self, denoiser: Callable, process, cond: dict | None = None, afs: bool = False):
        self.denoiser = denoiser
        self.process = process
        self.cond = dict(cond or {})
        self.nfe = 0
        self.afs = bool(afs)

    def x0(self, x: Tensor, t) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.afs:
            self.afs = False
            return analytic_x0(x, t, self.process, getattr(self.denoiser, "sigma_data", 0.5))
        self.nfe += 1
        return self.denoiser(x, t, **self.cond).to(x.dtype)

    def data(self, x: Tensor, t, alpha: float, sigma: float, form: str) -> Tensor:
        """The model output in the solver's form: x0 ("data") or eps ("noise")."""
        x0 = self.x0(x, t)
        return x0 if form == "data" else (x - alpha * x0) / sigma


def phis(hh: float) -> tuple[float, float, float]:
    """phi_1 = e^hh - 1, phi_2 = phi_1/hh - 1, phi_3 = phi_2/hh - 1/2 (DPM-Solver Taylor terms).

    hh = -h in the data (DPM-Solver++) form and hh = h in the noise form; computed by series for
    tiny |hh| to avoid cancellation.
    """
    if abs(hh) < 1e-4:
        p1 = math.expm1(hh)
        p2 = hh / 2 + hh**2 / 6 + hh**3 / 24
        p3 = hh / 6 + hh**2 / 24 + hh**3 / 120
        return p1, p2, p3
    if math.isinf(hh):  # a step to sigma = 0 in the data form (hh = -inf)
        return -1.0, -1.0, -0.5
    p1 = math.expm1(hh)
    p2 = p1 / hh - 1.0
    return p1, p2, p2 / hh - 0.5


def steps_iter(n: int, enabled: bool, desc: str):
    return progress(range(n), total=n, desc=desc, enabled=enabled)


def final_order(order: int, i: int, n: int, lower_order_final) -> int:
    """Order of step i of n with lower-order final steps: True (always), False, or an int N (only
    when n < N: the official DPM-Solver uses 10, diffusers 15)."""
    if lower_order_final is True or (lower_order_final and not isinstance(lower_order_final, bool)
                                     and n < lower_order_final):
        return min(order, n - i)
    return order


def record_nfe(denoiser, model) -> None:
    """Record the number of model calls of the last solve (a `Model`'s count, or an int) on the denoiser
    (`last_nfe`)."""
    try:
        denoiser.last_nfe = model if isinstance(model, int) else model.nfe
    except AttributeError:
        pass
