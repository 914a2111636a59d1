"""Step grids: functions returning a decreasing float64 tensor of times for a solver.

A grid for `steps` solver steps has steps + 1 times, from t_start (default process.t_max) to the end:

- end="zero": the last step goes to t = 0 (sigma = 0, "denoise to zero" without an extra model
  call, as diffusers' final_sigmas_type="zero"): the spacing places `steps` points on
  [t_end, t_start] and t = 0 is appended;
- end="t_min": the spacing places steps + 1 points on [t_end, t_start] and sampling stops at t_end.

Spacings: "time" (uniform in t), "quadratic" (uniform in sqrt t, official DPM-Solver
time_quadratic), "logsnr" (uniform in lambda, DPM-Solver's logSNR), "karras" (uniform in
sigma^(1/rho) of the equivalent VE process, EDM eq. 5), and diffusers' integer grids for discrete
VP processes: "linspace", "leading", "trailing" (diffusers' timestep_spacing), plus any user list.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .processes import Process, VPDiscrete, as_time

__all__ = ["SPACINGS", "make_grid"]

SPACINGS = ("logsnr", "time", "quadratic", "karras", "linspace", "leading", "trailing")


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
              t_end=None, rho: float = 7.0) -> Tensor:
    """The decreasing time grid (steps + 1 float64 times) for `steps` solver steps.

    `spacing` is one of SPACINGS or a user sequence of steps + 1 decreasing times (used as given).
    For the diffusers integer spacings with end="zero" the grid is diffusers' timesteps followed by
    t = 0; with end="t_min" it is those of steps + 1 points (the last one ends sampling).
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
    if spacing in ("linspace", "leading", "trailing"):
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
