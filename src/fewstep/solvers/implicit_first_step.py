"""The implicit first step: the first step from pure noise takes no model call of its own.

Over a step from lambda_0 to lambda_1 the probability-flow ODE in the data form is exactly

    x_1 = (sigma_1 / sigma_0) x_0 + sigma_1 int_{lambda_0}^{lambda_1} e^lambda x0(lambda) dlambda,

x0(lambda) = D(x_lambda, lambda) the denoiser's output along the path (DPM-Solver++, Lu et al. 2022).
From the start of sampling (VP t = T, lambda ~ -5) to lambda_1 = -2.5, x0 is still nearly the data
mean (its dependence on x_t is of order alpha / sigma^2), so one value of x0 serves the whole step,
and the weight e^lambda puts most of the integral at the step's end anyway (the last unit of lambda
carries 69% of it). Solvers spend their first call on x0 at t_0; taken at t_1 instead, the same call
is also the next step's first model output. The implicit first step

    x~_1 = (sigma_1 / sigma_0) x_0,   x0_1 = D(x~_1, t_1),
    x_1  = x~_1 + alpha_1 (1 - e^-(lambda_1 - lambda_0)) x0_1

is the exponential (DDIM) step with x0 taken at its end: one fixed-point iteration of the implicit
exponential Euler step from the guess x0 = 0 (exact when x0 is constant, as DDIM is). Its one model
call is also the solver's first output at t_1, so the call at t_0 is saved and spent on one more step.
On Gaussian data of mean 0.7 the step to lambda = -2.5 is as close to the exact ODE as the DDIM step
with its own call at t_0 (tests/test_implicit_first_step.py). The analytical first step (afs, Zhou
et al. 2024) saves the same call by assuming zero-mean Gaussian data; here the model supplies the
mean. Evaluating at x~_1 instead of x_1 errs by the model's sensitivity to x at t_1 times
alpha_1 (1 - e^-h) |x0|: small while alpha_1 is (~0.08 at -2.5), but a floor once the rest of the
solve is accurate (from ~13 calls on the oracle mixtures, ending at -2.5), hence `ifs_lambda`: the
step ends earlier as the calls grow.

Measured on the exact-oracle mixtures: benchmarks/solvers.py (headline) and benchmarks/solvers_ifs.py.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..spacing import make_grid
from .common import Grid

__all__ = ["implicit_first_step", "ifs_grid", "ifs_lambda", "ifs_reaches", "FirstOutput", "IFS_LAMBDA"]

# lambda = log(alpha / sigma) at which the implicit first step ends by default at <= 10 calls (alpha ~ 0.08):
# the best of -3.5..-1.5 in the geometric mean over seven oracle mixtures at 5-10 calls
# (benchmarks/solvers_ifs.py); the solver's spacing places the remaining calls from there.
IFS_LAMBDA = -2.5


def ifs_lambda(calls: int) -> float:
    """Where the implicit first step ends for a solve of `calls` model calls: -2.5 up to 10 calls, -3.5
    up to 14, -4.5 beyond. Its error (x0 taken at the predicted point, the model's sensitivity times
    alpha_1 (1 - e^-h) |x0|) becomes a floor as the rest of the solve gets accurate; ending the step
    earlier shrinks it with alpha_1 (0.08 / 0.03 / 0.011), and the gain fades smoothly with the calls
    instead of stopping at a threshold, where the error would jump up by one call
    (benchmarks/solvers_ifs.py, part 2)."""
    return IFS_LAMBDA if calls <= 10 else -3.5 if calls <= 14 else -4.5


class FirstOutput:
    """A denoiser whose first call returns a precomputed x0 (the implicit first step's model output at
    t_1) instead of calling `inner`; every later call goes to `inner`. Forwards `process` and the
    attributes solvers and samplers read (calls, sigma_data)."""

    def __init__(self, inner, x0: Tensor):
        self.inner = inner
        self.process = inner.process
        self._x0 = x0

    def __call__(self, x: Tensor, t, **kw) -> Tensor:
        if self._x0 is not None:
            x0, self._x0 = self._x0, None
            return x0
        return self.inner(x, t, **kw)

    def __getattr__(self, key):
        if key == "inner":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(key)
        return getattr(self.inner, key)


def implicit_first_step(denoiser, x: Tensor, t0, t1, cond: dict | None = None) -> tuple[Tensor, Tensor]:
    """One data-form exponential step from t0 to t1 < t0 with x0 = D(x~_1, t1) at the predicted point
    x~_1 = (sigma_1 / sigma_0) x; one model call. Returns (x_1, x0_1)."""
    g = Grid.of(denoiser.process, [float(t0), float(t1)])
    if g.sigma[1] <= 0.0:
        raise ValueError("the implicit first step must end above sigma = 0 (give at least 2 steps)")
    x_pred = (g.sigma[1] / g.sigma[0]) * x
    x0 = denoiser(x_pred, torch.as_tensor(g.ts[1], dtype=torch.float64), **(cond or {})).to(x.dtype)
    h = g.lam[1] - g.lam[0]
    return x_pred - g.alpha[1] * math.expm1(-h) * x0, x0


def ifs_reaches(process, t_start=None, t_end=None, lam_first: float = IFS_LAMBDA) -> bool:
    """Whether a solve from t_start to t_end has room for the implicit step to end at lam_first: the
    process starts at least 0.5 below it in lambda, and it lies at least 1.0 before the end."""
    t0 = float(process.t_max if t_start is None else t_start)
    t1 = float(process.t_min if t_end is None else t_end)
    lam0, lam1 = (float(v) for v in process.lambda_(torch.tensor([t0, t1], dtype=torch.float64)))
    return lam0 < lam_first - 0.5 and lam_first < lam1 - 1.0


def ifs_grid(process, n: int, spacing, *, end: str = "zero", t_start=None, t_end=None, rho: float = 7.0,
             lam_first: float | None = None) -> torch.Tensor:
    """The grid of an implicit first step followed by `n` solver steps (n + 2 times).

    A list of times is used as given (its first interval is the implicit step). For a spacing name the
    implicit step goes from t_start to lambda = lam_first (default `ifs_lambda(n)`; `sample` passes
    ifs_lambda of its model calls) and the spacing's grid of n steps follows from there; where there
    is no room for it (`ifs_reaches`) the spacing's own grid of n + 1 steps is used, its first step
    being the implicit one.
    """
    if not isinstance(spacing, str):
        ts = make_grid(process, n + 1, spacing)
        if ts.numel() < 3:
            raise ValueError("the implicit first step (ifs) needs a grid of at least 3 times")
        return ts
    f64 = torch.float64
    lam_first = ifs_lambda(n) if lam_first is None else float(lam_first)
    t0 = float(process.t_max if t_start is None else t_start)
    if ifs_reaches(process, t0, t_end, lam_first):
        t1 = float(process.t_of_lambda(torch.tensor(lam_first, dtype=f64)))
        rest = make_grid(process, n, spacing, end=end, t_start=t1, t_end=t_end, rho=rho)
        return torch.cat([torch.tensor([t0], dtype=f64), rest])
    return make_grid(process, n + 1, spacing, end=end, t_start=t0, t_end=t_end, rho=rho)
