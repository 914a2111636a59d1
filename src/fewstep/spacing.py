"""Step grids: functions returning a decreasing float64 tensor of times for a solver.

A grid for `steps` solver steps has steps + 1 times, from t_start (default process.t_max) to the end:

- end="zero": the last step goes to t = 0 (sigma = 0, "denoise to zero" without an extra model
  call, as diffusers' final_sigmas_type="zero"): the spacing places `steps` points on
  [t_end, t_start] and t = 0 is appended;
- end="t_min": the spacing places steps + 1 points on [t_end, t_start] and sampling stops at t_end.

Spacings: "time" (uniform in t), "quadratic" (uniform in sqrt t, official DPM-Solver
time_quadratic), "logsnr" (uniform in lambda, DPM-Solver's logSNR), "karras" (uniform in
sigma^(1/rho) of the equivalent VE process, EDM eq. 5), "vp-power" (fewstep's default, see
`vp_power`: a fixed lambda grid, the same for every process, with diffusers' trailing end), and
diffusers' integer grids for discrete VP processes: "linspace", "leading", "trailing" (diffusers'
timestep_spacing), plus any user list.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .processes import Process, VPDiscrete, as_time

__all__ = ["SPACINGS", "make_grid", "vp_power", "vp_power_kappa"]

SPACINGS = ("logsnr", "time", "quadratic", "karras", "vp-power", "linspace", "leading", "trailing")

# "vp-power" measures time in the reference process: the continuous linear-beta VP of Song et al. 2021
# (beta 0.1 -> 20 over tau in [0, 1]; tau = t / T of DDPM's linear betas 1e-4..0.02 with T = 1000).
_VP_B0, _VP_B1 = 0.1, 20.0


def _vp_tau(lam: Tensor) -> Tensor:
    """tau(lambda) of the reference VP, closed form for any lambda: its log alpha = -(b1 - b0) tau^2 / 4 - b0 tau / 2
    and sigma^2 / alpha^2 = exp(-2 lambda), so (b1 - b0) tau^2 / 2 + b0 tau = log(1 + exp(-2 lambda))."""
    c = torch.nn.functional.softplus(-2.0 * lam)
    return 2.0 * c / (torch.sqrt(_VP_B0**2 + 2.0 * (_VP_B1 - _VP_B0) * c) + _VP_B0)


def _vp_lambda(tau: Tensor) -> Tensor:
    """lambda(tau) of the reference VP (tau > 0)."""
    log_alpha = -(_VP_B1 - _VP_B0) * tau**2 / 4.0 - _VP_B0 * tau / 2.0
    return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))


def vp_power_kappa(steps: int) -> float:
    """The exponent "vp-power" uses for `steps` solver steps: kappa = min(2, 0.75 + steps / 10)."""
    return min(2.0, 0.75 + steps / 10.0)


def vp_power(process: Process, n: int, t_start: float, t_end: float, kappa: float) -> Tensor:
    """n >= 2 times from t_start to t_end (both included), uniform in tau^(1/kappa):

        tau_i^(1/kappa) = (1 - i/(n-1)) tau(lambda(t_start))^(1/kappa) + i/(n-1) tau(lambda(t_end))^(1/kappa),
        t_i = process.t_of_lambda(lambda_ref(tau_i)),

    where tau(lambda) and its inverse lambda_ref are those of the reference process, the continuous
    linear-beta VP (beta 0.1 -> 20, Song et al. 2021; `_vp_tau` is closed form). So the grid is a fixed
    grid in lambda = log(alpha / sigma), the same for every process with the same lambda range.
    kappa = 1 is (up to DDPM's discretisation) time-uniform on DDPM's linear schedule, the grid of
    diffusers' DDIM / DPM-Solver / UniPC schedulers; kappa = 2 is DPM-Solver's time-quadratic on it;
    larger kappa puts more steps at low noise (large lambda).

    Why (benchmarks/results/solvers.md, exact-oracle Gaussian mixtures): a UniPC-3 / DPM-Solver grid
    must spend its few calls where the trajectories choose their mode (lambda about -2..1 for these
    mixtures) and still resolve the low-noise end. Uniform in lambda ("logsnr") wastes calls near
    t_min (3-4x the error of diffusers' trailing grid at 5-6 calls); Karras' rho = 7 does so even more;
    time-uniform (kappa = 1, diffusers) is close at 5 calls but then converges slowly. The best fixed
    exponent grows with the number of steps (1.25 at 5, 1.5 at 6, 1.75 at 8-10, 2 at 20 over six
    mixtures), hence `vp_power_kappa`.
    """
    f64 = torch.float64
    lam = process.lambda_(torch.tensor([t_start, t_end], dtype=f64))
    r = _vp_tau(lam) ** (1.0 / kappa)
    ts = process.t_of_lambda(_vp_lambda(torch.linspace(float(r[0]), float(r[1]), n, dtype=f64) ** kappa))
    ts[0], ts[-1] = t_start, t_end  # exact endpoints (the round trip through lambda is not)
    return ts


def _points(process: Process, n: int, t_start: float, t_end: float, spacing: str, rho: float) -> Tensor:
    """n >= 1 points from t_start down to t_end (t_start only when n == 1)."""
    f64 = torch.float64
    if n == 1:
        return torch.tensor([t_start], dtype=f64)
    if spacing == "time":
        return torch.linspace(t_start, t_end, n, dtype=f64)
    if spacing == "quadratic":
        return torch.linspace(math.sqrt(t_start), math.sqrt(t_end), n, dtype=f64) ** 2
    lam0, lam1 = float(process.lambda_(t_start)), float(process.lambda_(t_end))
    if spacing == "logsnr":
        return process.t_of_lambda(torch.linspace(lam0, lam1, n, dtype=f64))
    if spacing == "karras":
        s0, s1 = math.exp(-lam0 / rho), math.exp(-lam1 / rho)  # sigma~^(1/rho)
        sig = torch.linspace(s0, s1, n, dtype=f64) ** rho
        return process.t_of_lambda(-torch.log(sig))
    raise ValueError(f"unknown spacing {spacing!r}; known: {', '.join(SPACINGS)}")


def _diffusers_timesteps(N: int, n: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """diffusers' integer timesteps (decreasing) for n inference steps out of N training steps."""
    if spacing == "linspace":
        return np.linspace(0, N - 1, n).round()[::-1].astype(np.int64)
    if spacing == "leading":
        ratio = N // n
        return ((np.arange(0, n) * ratio).round()[::-1] + steps_offset).astype(np.int64)
    return (np.round(np.arange(N, 0, -N / n)) - 1).astype(np.int64)  # trailing


def make_grid(process: Process, steps: int, spacing="logsnr", *, end: str = "zero", t_start=None,
              t_end=None, rho: float = 7.0, kappa: float | None = None) -> Tensor:
    """The decreasing time grid (steps + 1 float64 times) for `steps` solver steps.

    `spacing` is one of SPACINGS or a user sequence of steps + 1 decreasing times (used as given).
    For the diffusers integer spacings with end="zero" the grid is diffusers' timesteps followed by
    t = 0; with end="t_min" it is those of steps + 1 points (the last one ends sampling).

    "vp-power" (the default spacing of sample() and of the DPM-Solver / UniPC solvers): steps + 1
    times on [t_end, t_start] uniform in tau(lambda)^(1/kappa) (`vp_power`), with
    kappa = min(2, 0.75 + steps / 10) unless given. With end="zero" its last time (t_end) is dropped
    and the last step goes to t = 0 from one grid step above t_end: the "trailing" end of diffusers'
    grids, so no model call is spent at t_min, where the denoiser output is already x to within
    sigma(t_min). On benchmarks/solvers.py it has the lowest (or within 2% of the lowest) error of
    the grid rules tried at every NFE 5-25, geometric mean over six oracle mixtures, under every process.
    """
    if not isinstance(spacing, str):
        ts = as_time(torch.as_tensor(spacing, dtype=torch.float64)).flatten()
        ts = process.check(ts)
        if ts.numel() < 2 or not torch.all(ts[1:] < ts[:-1]):
            raise ValueError("a custom grid needs at least 2 strictly decreasing times")
        return ts
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if end not in ("zero", "t_min"):
        raise ValueError(f"end must be 'zero' or 't_min', got {end!r}")
    t_start = float(process.t_max if t_start is None else t_start)
    t_end = float(process.t_min if t_end is None else t_end)
    if not (0 < t_end < t_start):
        raise ValueError(f"need 0 < t_end < t_start, got t_end={t_end}, t_start={t_start}")
    process.check(torch.tensor([t_end, t_start]))
    n = steps if end == "zero" else steps + 1
    if spacing == "vp-power":
        k = vp_power_kappa(steps) if kappa is None else float(kappa)
        if not k > 0:
            raise ValueError(f"kappa must be positive, got {kappa!r}")
        ts = vp_power(process, steps + 1, t_start, t_end, k)
        if end == "zero":
            ts = ts[:-1]
    elif spacing in ("linspace", "leading", "trailing"):
        if not isinstance(process, VPDiscrete):
            raise ValueError(f"spacing {spacing!r} is diffusers' integer grid; it needs a discrete VP process")
        if n > process.N:
            raise ValueError(f"{n} grid points exceed the {process.N} training timesteps")
        ts = process.timestep_to_t(torch.from_numpy(_diffusers_timesteps(process.N, n, spacing).copy()))
    else:
        ts = _points(process, n, t_start, t_end, spacing, rho)
    if end == "zero":
        ts = torch.cat([ts, torch.zeros(1, dtype=torch.float64)])
    if not torch.all(ts[1:] < ts[:-1]):
        raise ValueError(f"the {spacing} grid with {steps} steps has repeated times")
    return ts
