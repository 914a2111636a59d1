#!/usr/bin/env python
"""Solver benchmark: fewstep's training-free solvers and diffusers' schedulers against the exact
probability-flow ODE of a Gaussian mixture (fewstep.testing.GaussianMixture).

Measures, under the linear-beta DDPM process (VPDiscrete.linear(): betas 1e-4..0.02, 1000 steps)
on a sharp (component std 0.05-0.3) and a smooth (0.2-0.5) mixture, d = 16, K = 8:

* RMSE of the sigma = 0 end point to the exact PF-ODE end point g.ode(x_T, t_max, 0) at 5-25 model
  calls (NFE), for every fewstep solver / order / spacing / end / lower_order_final setting, and
  for diffusers' schedulers with their default settings (clip_sample off) driving the exact eps
  model, in float64 (diffusers' float32 tables are patched to float64 at run time, see `_float64`);
* besides RMSE: the fraction of samples that end in a different mixture component than the exact
  end point ("flips"; one flip moves a sample by a whole inter-mode distance, so RMSE at >= 10 NFE
  is mostly a count of flips) and whether each setting's error falls monotonically with NFE;
* the levers at 5-10 NFE: step grids (incl. grids optimised on the oracle itself, GITS-style
  dynamic programming and direct end-point optimisation), the exponent of the default "vp-power"
  grid, lower-order final steps, UniPC's variants (bh1 / bh2, data / noise form, order, corrector),
  the 3M coefficient, where the last model call sits; grid rules are checked on held-out mixtures
  (other d, spread, component widths) and under every process (VP discrete / continuous, EDM, flow,
  TrigFlow);
* solver overhead per step (everything outside the network) against a UNet forward at batch 64.

fewstep's default (`sample()` with no solver) is UniPC-3 (bh1 at <= 5 calls) on the library's "vp-power" grid
(fewstep.spacing); the headline compares it, and the previous default (UniPC-3 on the logSNR grid to
t_min), with the best diffusers scheduler at its default settings.

    python benchmarks/solvers.py --out benchmarks/results --raw-out benchmarks/out   # full run (~15 min, 1 thread)
    python benchmarks/solvers.py --quick --out /tmp/solq                             # smoke run (~1 min)
    python benchmarks/solvers.py --out DIR --samples 1000 --skip timing,optimise

Writes DIR/solvers.md (all tables, also printed) and PNG plots DIR/solvers_*.png, and to --raw-out
(default DIR) solvers.json (raw results) and solvers_full.csv (every fewstep and diffusers setting).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from fewstep import sample
from fewstep.processes import VPDiscrete
from fewstep.sample import SOLVERS, default_solver
from fewstep.spacing import make_grid
from fewstep.testing import GaussianMixture

NFES = (5, 6, 8, 10, 15, 20, 25)
QUICK_NFES = (5, 10, 20)
MIXTURES = {"sharp": (0.05, 0.3), "smooth": (0.2, 0.5)}  # component std ranges
MIX_SEED = 0  # both mixtures share means and weights (seed 0); only the component widths differ
NOISE_SEED = 1000  # test noise
TRAIN_SEED = 1  # noise the optimised grids are fitted on (never the test noise)
# held-out oracles for checking grid rules (other dimension, spread, widths; linear-beta VP)
HELD_OUT = {
    "d4": dict(d=4, std_range=(0.1, 0.4), seed=3),
    "d64": dict(d=64, std_range=(0.1, 0.4), seed=4),
    "spread0.5": dict(d=16, std_range=(0.05, 0.2), spread=0.5, seed=6),
    "spread2": dict(d=16, std_range=(0.2, 0.8), spread=2.0, seed=7),
}
F64 = torch.float64


# ------------------------------------------------------------------------------------------------
# problems and metrics
# ------------------------------------------------------------------------------------------------


def components(g: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """Index of the most likely mixture component of each clean sample x (sigma = 0)."""
    xf = x.reshape(x.shape[0], -1).to(F64)
    res = xf[:, None, :] - g.means[None]
    logp = -0.5 * (res**2 / g.var[None] + g.var[None].log()).sum(-1) + g.weights.log()[None]
    return logp.argmax(1)


@dataclass
class Problem:
    """One mixture under one process, with its test noise and exact end points."""

    name: str
    g: GaussianMixture
    process: object
    noise: torch.Tensor
    ref: torch.Tensor
    comp: torch.Tensor = field(init=False)

    def __post_init__(self):
        self.comp = components(self.g, self.ref)

    @classmethod
    def make(cls, name, g, process, n, seed):
        noise = torch.randn(n, g.d, generator=torch.Generator().manual_seed(seed), dtype=F64)
        x_T = noise * process.prior_std()
        ref = g.ode(x_T, process.t_max, 0.0, process)
        return cls(name, g, process, noise, ref)

    def sq_err(self, out: torch.Tensor) -> torch.Tensor:
        """Per-sample mean squared error (over coordinates)."""
        return ((out.to(F64) - self.ref) ** 2).reshape(out.shape[0], -1).mean(1)

    def score(self, out: torch.Tensor) -> dict:
        se = self.sq_err(out)
        flip = components(self.g, out) != self.comp
        kept = se[~flip]
        return {"rmse": float(se.mean().sqrt()) if torch.isfinite(se).all() else float("nan"),
                "flips": float(flip.double().mean()),
                "rmse_kept": float(kept.mean().sqrt()) if kept.numel() else float("nan")}


# ------------------------------------------------------------------------------------------------
# fewstep settings
# ------------------------------------------------------------------------------------------------

MULTISTEP = {"dpm-solver", "dpm++2m", "dpm++3m", "unipc", "unipc-bh1"}  # take lower_order_final
SPACING_COLUMNS = ("logsnr", "logsnr+trailing", "quadratic", "quadratic+trailing", "time", "time+trailing", "karras",
                   "karras+trailing", "trailing", "vp-power")


@dataclass(frozen=True)
class Setting:
    """A fewstep sample() configuration. spacing: a name, or a callable (process, nfe) -> grid."""

    solver: str | None
    order: int | None = None
    spacing: object = None
    end: str = "zero"
    lof: object = None  # lower_order_final (None: the solver's default)
    opts: tuple = ()
    label: str = ""

    @property
    def spacing_name(self) -> str:
        if self.spacing is None:
            return "(default)"
        return self.spacing if isinstance(self.spacing, str) else getattr(self.spacing, "__name__", "custom")

    def name(self) -> str:
        if self.label:
            return self.label
        s = self.solver or "default"
        if self.order is not None and self.solver not in ("dpm++2m", "dpm++3m", "dpm++2s", "dpm++3s"):
            s += f"-{self.order}"
        parts = [s, self.spacing_name, f"end={self.end}"]
        if self.lof is not None:
            parts.append(f"lof={self.lof}")
        parts += [f"{k}={v}" for k, v in self.opts]
        return " ".join(parts)


def default_setting(solver: str, order) -> Setting:
    """The solver at its own default spacing, end='zero', lower_order_final=True where it applies."""
    return Setting(solver, order, SOLVERS[solver].spacing, "zero", True if solver in MULTISTEP else None)


def run_setting(pb: Problem, st: Setting, nfe: int) -> tuple[dict, torch.Tensor | None]:
    """Runs `st` with a budget of `nfe` model calls; returns (metrics incl. the calls used, samples)."""
    D = pb.g.denoiser(pb.process)
    kw = dict(st.opts)
    if st.lof is not None:
        kw["lower_order_final"] = st.lof
    spacing = st.spacing
    if callable(spacing):  # a custom grid of the steps that spend `nfe` calls (Heun: 2 per step but the last)
        spacing = spacing(pb.process, (nfe + 1) // 2 if SOLVERS[st.solver].fn is SOLVERS["heun"].fn else nfe)
    steps = nfe - 1 if st.end == "denoise" else nfe
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, used = sample(D, pb.noise, solver=st.solver, order=st.order, steps=steps, spacing=spacing,
                               end=st.end, return_nfe=True, **kw)
    except Exception as e:  # a setting that cannot run is reported, not fatal
        return {"error": f"{type(e).__name__}: {e}", "nfe": None}, None
    m = pb.score(out)
    m["nfe"] = int(used)
    if D.calls != used:
        m["error"] = f"sample() reported nfe={used} but the denoiser was called {D.calls} times"
    return m, out


def fewstep_settings(quick: bool) -> list[Setting]:
    """The benchmark matrix of fewstep settings."""
    cases = [("ddim", None), ("dpm-solver", 2), ("dpm-solver", 3), ("dpm-solver-singlestep", 3),
             ("dpm++2m", 2), ("dpm++3m", 3), ("dpm++2s", 2), ("dpm++3s", 3), ("unipc", 2), ("unipc", 3),
             ("unipc-bh1", 2), ("unipc-bh1", 3), ("heun", None)]
    spacings = ("logsnr", "quadratic", "time", "karras", "trailing", "vp-power")
    out = [Setting(None, label="fewstep default")]
    if quick:
        for solver, order in cases:
            out.append(default_setting(solver, order))
        for sp in spacings:
            out.append(Setting("unipc", 3, sp, "zero", True))
        out += [Setting("unipc", 3, "logsnr", "denoise", True), Setting("unipc", 3, "logsnr", "zero", False),
                Setting("unipc", 3, "vp-power", "zero", False)]
        return list(dict.fromkeys(out))
    for solver, order in cases:
        for sp in spacings:
            for end in ("zero", "denoise", "trailing"):
                if end == "trailing" and sp in ("trailing", "vp-power"):  # vp-power's end='zero' is trailing already
                    continue
                for lof in ((True, False) if solver in MULTISTEP else (None,)):
                    if end == "trailing":
                        out.append(Setting(solver, order, trailing_of(sp), "zero", lof))
                    else:
                        out.append(Setting(solver, order, sp, end, lof))
    return out


def trailing_of(spacing: str):
    """The spacing's grid of steps + 1 points on [t_min, t_max] with its last point (t_min) dropped: the
    last model call sits one grid step above t_min and the last step goes to sigma = 0 (diffusers'
    'trailing' convention for any spacing). Named '<spacing>+trailing'."""
    def grid(process, n):
        return torch.cat([make_grid(process, n, spacing, end="t_min")[:-1], torch.zeros(1, dtype=F64)])
    grid.__name__ = f"{spacing}+trailing"
    return _CACHE.setdefault(grid.__name__, grid)


_CACHE: dict = {}


# ------------------------------------------------------------------------------------------------
# grid rules and optimised grids (all in lambda = log(alpha / sigma); the last step goes to sigma = 0)
# ------------------------------------------------------------------------------------------------


def _grid_from_lambdas(process, lams) -> torch.Tensor:
    lam_max = float(process.lambda_(process.t_min))
    lams = torch.as_tensor(np.minimum(np.asarray(lams, dtype=np.float64), lam_max), dtype=F64)
    ts = process.t_of_lambda(lams)
    ts[0] = float(process.t_max)
    return torch.cat([ts, torch.zeros(1, dtype=F64)])


def logsnr_trailing(process, n, lam_stop=None):
    """logSNR-uniform grid of n + 1 points on [lambda(t_max), lam_stop] whose last point is dropped:
    the n-th model call sits one step before lam_stop and the last step goes to sigma = 0 (the
    'trailing' convention of diffusers' multistep grids, taken in lambda instead of t)."""
    lam0 = float(process.lambda_(process.t_max))
    lam_stop = float(process.lambda_(process.t_min)) if lam_stop is None else lam_stop
    return _grid_from_lambdas(process, np.linspace(lam0, lam_stop, n + 1)[:-1])


def logsnr_to(process, n, lam_end):
    """logSNR-uniform grid of n points on [lambda(t_max), lam_end], then sigma = 0."""
    return _grid_from_lambdas(process, np.linspace(float(process.lambda_(process.t_max)), lam_end, n))


def _rule(fn, name, **kw):
    def rule(process, n):
        return fn(process, n, **kw)
    rule.__name__ = name
    return rule


def quadratic_trailing(process, n):
    """time-quadratic grid of n + 1 points on [t_min, t_max] whose last point is dropped."""
    ts = torch.linspace(math.sqrt(process.t_max), math.sqrt(process.t_min), n + 1, dtype=F64)[:-1] ** 2
    return torch.cat([ts, torch.zeros(1, dtype=F64)])


GRID_RULES = {
    "logsnr (t_min)": _rule(lambda p, n: make_grid(p, n, "logsnr"), "logsnr"),
    "quadratic (t_min)": _rule(lambda p, n: make_grid(p, n, "quadratic"), "quadratic"),
    "karras (t_min)": _rule(lambda p, n: make_grid(p, n, "karras"), "karras"),
    "trailing (diffusers)": _rule(lambda p, n: make_grid(p, n, "trailing"), "trailing"),
    "logsnr to lambda=2": _rule(logsnr_to, "logsnr-to-2", lam_end=2.0),
    "logsnr+trailing": _rule(logsnr_trailing, "logsnr+trailing"),
    "logsnr+trailing stop=3": _rule(logsnr_trailing, "logsnr+trailing-stop3", lam_stop=3.0),
    "quadratic+trailing": _rule(quadratic_trailing, "quadratic+trailing"),
    # the library's "vp-power" spacing (fewstep.spacing.vp_power) with a fixed exponent kappa, and with the
    # exponent rule of an earlier draft (kappa = 1 + n / 20)
    "vp-power kappa=1 (time+trailing)": _rule(lambda p, n: make_grid(p, n, "vp-power", kappa=1.0), "vp-power-k1"),
    "vp-power kappa=1.5": _rule(lambda p, n: make_grid(p, n, "vp-power", kappa=1.5), "vp-power-k1.5"),
    "vp-power kappa=2 (quadratic+trailing)": _rule(lambda p, n: make_grid(p, n, "vp-power", kappa=2.0), "vp-power-k2"),
    "vp-power kappa=1+n/20 (draft)": _rule(lambda p, n: make_grid(p, n, "vp-power", kappa=1.0 + n / 20),
                                           "vp-power-draft"),
    "vp-power (default: kappa=min(2, 0.75+n/10))": _rule(lambda p, n: make_grid(p, n, "vp-power"), "vp-power"),
}
DEFAULT_RULE = "vp-power (default: kappa=min(2, 0.75+n/10))"  # the library's default spacing
ALT_RULE = "vp-power kappa=2 (quadratic+trailing)"  # the simplest runner-up (fixed kappa = 2)
KAPPAS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)  # exponents swept in 'Research: the grid's exponent'


def exact_trajectory(g, process, noise, lams):
    """Exact PF-ODE states at the given increasing lambdas (from t_max), plus the sigma = 0 end."""
    ts = _grid_from_lambdas(process, lams)
    xs = [noise * process.prior_std()]
    for t0, t1 in zip(ts[:-1].tolist(), ts[1:].tolist()):
        xs.append(g.ode(xs[-1], t0, t1, process))
    return ts, xs


def gits_grid(g, process, noise, n_steps: list[int], M: int = 60) -> dict:
    """GITS-style grids (Chen et al. 2024): dynamic programming over a fine logSNR-uniform grid of M
    times for the path of n steps (the last one to sigma = 0) with the least summed local DDIM error
    against the oracle's exact trajectory (fitted on `noise`)."""
    lam0, lam1 = float(process.lambda_(process.t_max)), float(process.lambda_(process.t_min))
    lams = np.linspace(lam0, lam1, M)
    ts, xs = exact_trajectory(g, process, noise, lams)  # M states + the end point
    a, s = process.alpha_sigma(ts)
    a, s = a.tolist(), s.tolist()
    D = g.denoiser(process)
    x0 = [D(xs[i], ts[i]) for i in range(M)]
    # cost[i, j]: RMSE of one DDIM (first-order exponential integrator) step i -> j (j = M: sigma = 0)
    cost = np.full((M, M + 1), np.inf)
    for i in range(M):
        for j in range(i + 1, M + 1):
            pred = a[j] * x0[i] + (s[j] / s[i]) * (xs[i] - a[i] * x0[i]) if s[j] > 0 else a[j] * x0[i]
            cost[i, j] = float(((pred - xs[j]) ** 2).mean().sqrt())
    out = {}
    for n in n_steps:
        best = np.full((n + 1, M + 1), np.inf)
        arg = np.zeros((n + 1, M + 1), dtype=int)
        best[0, 0] = 0.0
        for k in range(1, n + 1):
            for j in range(1, M + 1):
                if k < n and j == M:
                    continue  # only the last step may reach sigma = 0
                c = best[k - 1, :j] + cost[:j, j]
                arg[k, j] = int(np.argmin(c))
                best[k, j] = c[arg[k, j]]
        path, j = [M], M
        for k in range(n, 0, -1):
            j = arg[k, j]
            path.append(j)
        path = path[::-1][:-1]  # the n model-call indices
        out[n] = [float(lams[i]) for i in path]
    return out


def optimise_grid(pb_train: Problem, setting: Setting, n: int, init_lams, maxfev: int) -> tuple[list, float]:
    """Direct minimisation of the end-point RMSE over the n - 1 free lambdas (AYS-like in spirit,
    but the objective is the oracle's exact error): Nelder-Mead on softplus increments."""
    from scipy.optimize import minimize

    p = pb_train.process
    lam0, lam_max = float(p.lambda_(p.t_max)), float(p.lambda_(p.t_min))

    def lams_of(u):
        lam = lam0 + np.cumsum(np.logaddexp(0.0, u))
        lam = np.minimum(lam, lam_max - 1e-6 * np.arange(len(lam))[::-1])
        return np.concatenate([[lam0], lam])

    def f(u):
        st = Setting(setting.solver, setting.order, lambda proc, nfe: _grid_from_lambdas(proc, lams_of(u)),
                     setting.end, setting.lof)
        m, _ = run_setting(pb_train, st, n)
        return m.get("rmse", np.inf) if math.isfinite(m.get("rmse", np.inf)) else 1e3

    u0 = np.log(np.expm1(np.maximum(np.diff(init_lams), 1e-3)))
    r = minimize(f, u0, method="Nelder-Mead", options=dict(maxfev=maxfev, xatol=1e-3, fatol=1e-7))
    return lams_of(r.x).tolist(), float(r.fun)


# ------------------------------------------------------------------------------------------------
# diffusers
# ------------------------------------------------------------------------------------------------

BETAS = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def diffusers_cases(quick: bool):
    """(label, class name, kwargs, default?) for diffusers schedulers. `default` marks the schedulers
    with their constructor defaults (clip_sample off, solver_order set where named): these form the
    target. The others use a non-default option and are reported for information."""
    cases = [
        ("DDIM", "DDIMScheduler", dict(clip_sample=False), True),
        ("DPM++2M", "DPMSolverMultistepScheduler", {}, True),
        ("DPM++3M", "DPMSolverMultistepScheduler", dict(solver_order=3), True),
        ("DPM++2S singlestep", "DPMSolverSinglestepScheduler", {}, True),
        ("DPM++3S singlestep", "DPMSolverSinglestepScheduler", dict(solver_order=3), True),
        ("UniPC-2 bh2", "UniPCMultistepScheduler", {}, True),
        ("UniPC-3 bh2", "UniPCMultistepScheduler", dict(solver_order=3), True),
        ("DEIS-2", "DEISMultistepScheduler", {}, True),
        ("DEIS-3", "DEISMultistepScheduler", dict(solver_order=3), True),
        ("Euler", "EulerDiscreteScheduler", {}, True),
        ("Heun", "HeunDiscreteScheduler", {}, True),
        ("LMS", "LMSDiscreteScheduler", {}, True),
    ]
    if not quick:
        cases += [
            ("DDIM trailing", "DDIMScheduler", dict(clip_sample=False, timestep_spacing="trailing"), False),
            ("DPM++2M karras", "DPMSolverMultistepScheduler", dict(use_karras_sigmas=True), False),
            ("DPM++2M lu-lambdas", "DPMSolverMultistepScheduler", dict(use_lu_lambdas=True), False),
            ("DPM++3M karras", "DPMSolverMultistepScheduler", dict(solver_order=3, use_karras_sigmas=True), False),
            ("UniPC-2 bh1", "UniPCMultistepScheduler", dict(solver_type="bh1"), False),
            ("UniPC-3 karras", "UniPCMultistepScheduler", dict(solver_order=3, use_karras_sigmas=True), False),
            ("Euler karras", "EulerDiscreteScheduler", dict(use_karras_sigmas=True), False),
        ]
    return cases


class _Proxy:
    """A module stand-in that answers `float32` with float64 and forwards everything else."""

    def __init__(self, module, **overrides):
        self._module, self._overrides = module, overrides

    def __getattr__(self, key):
        return self._overrides[key] if key in self._overrides else getattr(self._module, key)


@contextlib.contextmanager
def _float64(cls):
    """Runs a diffusers scheduler in float64: its module's `torch.float32` / `np.float32` (betas,
    sigma tables, the step's own up-casts) read as float64, and new tensors default to float64.
    Checked against fewstep's solvers on diffusers' own grid (DPM++2M parity ~1e-13, see --check)."""
    mod = importlib.import_module(cls.__module__)
    saved = (mod.torch, mod.np, torch.get_default_dtype())
    mod.torch, mod.np = _Proxy(torch, float32=torch.float64), _Proxy(np, float32=np.float64)
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        mod.torch, mod.np = saved[0], saved[1]
        torch.set_default_dtype(saved[2])


def drive_diffusers(cls_name: str, kwargs: dict, steps: int, noise: torch.Tensor, eps_fn, double: bool = True):
    """Runs a diffusers scheduler as diffusers pipelines do, `eps_fn(x_in, t)` answering each model call
    at the scheduler's timestep t (in float64 when `double`, see `_float64`); returns (samples, scheduler)."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    ctx = _float64(cls) if double else contextlib.nullcontext()
    dtype = F64 if double else torch.float32
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sch = cls(**BETAS, **kwargs)
        sch.set_timesteps(steps)
        x = noise.to(dtype) * sch.init_noise_sigma
        for t in sch.timesteps:
            x = sch.step(eps_fn(sch.scale_model_input(x, t), t).to(dtype), t, x).prev_sample
    return x, sch


def run_diffusers(pb: Problem, cls_name: str, kwargs: dict, nfe: int, double: bool = True):
    """Drives a diffusers scheduler with the exact eps model (`drive_diffusers`); returns (metrics incl.
    the model calls used, samples, scheduler). Heun gets the step count that spends at most the budget
    (2 calls per step, the last step to sigma = 0 takes one)."""
    eps_model = pb.g.as_model(pb.process, "eps")  # takes the (fractional) discrete index
    steps = (nfe + 1) // 2 if cls_name == "HeunDiscreteScheduler" else nfe
    calls = 0

    def eps(x_in, t):
        nonlocal calls
        out = eps_model(x_in, torch.full((x_in.shape[0],), float(t), dtype=F64))
        calls += 1
        return out

    try:
        x, sch = drive_diffusers(cls_name, kwargs, steps, pb.noise, eps, double)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}", "nfe": calls}, None, None
    m = pb.score(x)
    m["nfe"] = calls
    return m, x, sch


def parity_check(pb: Problem) -> list[str]:
    """fewstep's solvers on diffusers' own grids reproduce diffusers (float64 patch and float32)."""
    from fewstep.solvers import dpm_multistep, unipc

    lines = []
    for label, cls_name, kw, fn in (
        ("DPM++2M", "DPMSolverMultistepScheduler", {},
         lambda D, x, ts: dpm_multistep(D, x, ts, order=2, lower_order_final=15)),
        ("UniPC-2 bh2", "UniPCMultistepScheduler", {}, lambda D, x, ts: unipc(D, x, ts, order=2)),
    ):
        for nfe in (5, 10, 20):
            m64, x64, sch = run_diffusers(pb, cls_name, kw, nfe, double=True)
            _, x32, _ = run_diffusers(pb, cls_name, kw, nfe, double=False)
            ts = torch.cat([pb.process.timestep_to_t(sch.timesteps.to(F64)), torch.zeros(1, dtype=F64)])
            ours = fn(pb.g.denoiser(pb.process), pb.noise, ts)
            lines.append(f"| {label} | {nfe} | {float((x64 - ours).abs().max()):.1e} | "
                         f"{float((x32.to(F64) - ours).abs().max()):.1e} |")
    return ["| diffusers scheduler | steps | max abs diff to fewstep, float64 patch | float32 |",
            "|---|---|---|---|"] + lines


# ------------------------------------------------------------------------------------------------
# solver overhead
# ------------------------------------------------------------------------------------------------


def timing(quick: bool, reps: int) -> dict:
    from fewstep.models import build_model

    out = {"threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(), "nets": {},
           "solvers": {}}
    nets = [("unet-mnist", (64, 1, 28, 28))] + ([] if quick else [("unet-cifar", (64, 3, 32, 32))])
    for name, shape in nets:  # solver overhead first: big network activations freed just before skew it
        out["solvers"][name] = _solver_overhead(shape, reps)
    for name, shape in nets:
        net = build_model(name, num_classes=0).eval()
        x = torch.randn(shape)
        t = torch.full((shape[0],), 500.0)
        with torch.inference_mode():
            net(x, t)  # warm-up
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                net(x, t)
                ts.append(time.perf_counter() - t0)
        out["nets"][name] = {"shape": list(shape), "forward_s": min(ts),
                             "params": sum(p.numel() for p in net.parameters())}
        del net
    return out


def _solver_overhead(shape, reps: int) -> dict:
    """Per-step time of sample() outside the network: an identity eps "network" at the given shape."""
    p = VPDiscrete.linear()
    noise = torch.randn(shape)
    res = {}

    def standin(x, t, **kw):  # the cheap stand-in network: identity (an eps prediction)
        return x

    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(100):
            standin(noise, None)
        call_s = (time.perf_counter() - t0) / 100
    cases = [("ddim", None), ("dpm-solver", 3), ("dpm-solver-singlestep", 3), ("dpm++2m", 2), ("dpm++3m", 3),
             ("dpm++2s", 2), ("unipc", 2), ("unipc", 3), ("unipc-bh1", 3), ("heun", None),
             (None, None)]  # sample()'s default: unipc-3 with the implicit first step
    nfe = 10
    with torch.inference_mode():  # warm-up of the whole path (allocator, first-call costs)
        for _ in range(2):
            sample(standin, noise, process=p, prediction="eps", solver="ddim", steps=nfe)
    for solver, order in cases:
        ts = []
        with torch.inference_mode():
            for _ in range(reps + 3):
                t0 = time.perf_counter()
                _, used = sample(standin, noise, process=p, prediction="eps", solver=solver, order=order, steps=nfe,
                                 return_nfe=True)
                ts.append(time.perf_counter() - t0)
        total = min(ts[1:])
        key = "default (unipc-3 + ifs)" if solver is None else solver
        res[key + (f"-{order}" if order and solver not in ("dpm++2m", "dpm++3m", "dpm++2s") else "")] = {
            "nfe": used, "total_s": total, "per_step_s": (total - used * call_s) / used}
    return res


# ------------------------------------------------------------------------------------------------
# tables and plots
# ------------------------------------------------------------------------------------------------


def fmt(v, digits=4):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "nan" if isinstance(v, float) else "-"
    return f"{v:.{digits}f}" if v >= 10 ** -(digits - 1) else f"{v:.1e}"


def md_table(headers, rows) -> list[str]:
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return lines


def geomean(vals) -> float:
    """Geometric mean of positive numbers (of RMSE ratios, over mixtures)."""
    return math.exp(float(np.mean([math.log(v) for v in vals])))


def write_md(out: str, name: str, lines: list) -> str:
    """Print the report `lines` and write them to out/name (the folder is created); returns the path."""
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def monotone(vals: list) -> bool:
    v = [x for x in vals if x is not None]
    return all(b < a for a, b in zip(v, v[1:]))


def bootstrap_ratio(se_a: torch.Tensor, se_b: torch.Tensor, reps: int = 2000, seed: int = 0):
    """Paired bootstrap 90% interval of RMSE(a) / RMSE(b) over samples."""
    g = torch.Generator().manual_seed(seed)
    n = se_a.numel()
    idx = torch.randint(0, n, (reps, n), generator=g)
    r = (se_a[idx].mean(1) / se_b[idx].mean(1)).sqrt()
    return float(torch.quantile(r, 0.05)), float(torch.quantile(r, 0.95))


def plot_rmse(path, series: dict, nfes, title):
    """series: {mixture: {label: (rmse list, style dict)}}; one log-log panel per mixture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixes = list(series)
    fig, axes = plt.subplots(1, len(mixes), figsize=(6.5 * len(mixes), 5), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, mix in zip(axes[0], mixes):
        for i, (label, (vals, style)) in enumerate(series[mix].items()):
            style = {"color": colors[i % len(colors)], **style}
            xs = [n for n, v in zip(nfes, vals) if v is not None and math.isfinite(v)]
            ys = [v for v in vals if v is not None and math.isfinite(v)]
            ax.plot(xs, ys, label=label, marker="o", ms=3, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(nfes))
        ax.set_xticklabels([str(n) for n in nfes])
        ax.set_xlabel("model calls (NFE)")
        ax.set_ylabel("RMSE to the exact sigma = 0 end point")
        ax.set_title(f"{title}: {mix} mixture")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grids(path, grids: dict, title):
    """grids: {label: lambdas}; one row per grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.42 * len(grids) + 1.2))
    for i, (label, lams) in enumerate(grids.items()):
        ax.plot(lams, [i] * len(lams), "|", ms=14, mew=2)
    ax.set_yticks(range(len(grids)))
    ax.set_yticklabels(list(grids), fontsize=8)
    ax.set_xlabel("lambda = log(alpha / sigma) of each model call (the last step goes to sigma = 0)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


class Report:
    def __init__(self):
        self.lines: list[str] = []

    def add(self, *lines):
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def table(self, headers, rows):
        self.add(*md_table(headers, rows), "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples, NFEs and settings (smoke run)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
                    help="output folder (default benchmarks/out)")
    ap.add_argument("--raw-out", default=None,
                    help="folder for the raw solvers.json and solvers_full.csv (default: --out)")
    ap.add_argument("--samples", type=int, default=None, help="test samples per mixture (default 1000, quick 200)")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: matrix,diffusers,research,"
                    "optimise,heldout,processes,timing")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the oracle runs (timing uses all)")
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    quick = args.quick
    n_samples = args.samples or (200 if quick else 1000)
    nfes = QUICK_NFES if quick else NFES
    os.makedirs(args.out, exist_ok=True)
    all_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    t_start = time.time()
    R = Report()
    results: dict = {"config": {"samples": n_samples, "nfes": list(nfes), "quick": quick,
                                "mixtures": {k: {"std_range": v, "seed": MIX_SEED, "d": 16, "K": 8}
                                             for k, v in MIXTURES.items()},
                                "noise_seed": NOISE_SEED, "torch": torch.__version__, "python": sys.version.split()[0]},
                     "fewstep": {}, "diffusers": {}}

    process = VPDiscrete.linear()
    problems = {}
    for name, std_range in MIXTURES.items():
        g = GaussianMixture.random(d=16, K=8, std_range=std_range, seed=MIX_SEED)
        problems[name] = Problem.make(name, g, process, n_samples, NOISE_SEED)
    try:
        import diffusers

        dver = diffusers.__version__
    except ImportError:
        dver = None
        skip.add("diffusers")
    results["config"]["diffusers"] = dver
    R.add("# Solver benchmark (benchmarks/solvers.py)", "",
          f"Exact-oracle RMSE of the sigma = 0 end point; linear-beta DDPM process (1000 steps, betas 1e-4..0.02);"
          f" mixtures d = 16, K = 8, seed {MIX_SEED}: sharp (component std {MIXTURES['sharp']}), smooth "
          f"({MIXTURES['smooth']}); {n_samples} noise samples (seed {NOISE_SEED}); float64 throughout "
          f"(diffusers {dver} patched to float64). torch {torch.__version__}. "
          f"Command: `python benchmarks/solvers.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "")

    # -------------------------------------------------------------- fewstep matrix
    settings = fewstep_settings(quick) if "matrix" not in skip else [Setting(None, label="fewstep default")]
    # labelled rows of the headline (per-sample errors kept for bootstrap intervals)
    previous = Setting("unipc", 3, "logsnr", "zero", True, label="previous default: unipc-3 logsnr end=zero lof=True")
    alternative = Setting("unipc-bh1", 3, "vp-power", "zero", True,
                          label="alternative: unipc-bh1-3 vp-power end=zero lof=True")
    # the analytical first step (solvers/common.py analytic_x0) on the default and the alternative
    afs_default = Setting("unipc", 3, "vp-power", "zero", True, (("afs", True),),
                          label="default + afs: unipc-3 vp-power afs=True")
    afs_alternative = Setting("unipc-bh1", 3, "vp-power", "zero", True, (("afs", True),),
                              label="alternative + afs: unipc-bh1-3 vp-power afs=True")
    # the default without its implicit first step (solvers/implicit_first_step.py): the default before it
    no_ifs = Setting(None, opts=(("ifs", False),), label="default without ifs: unipc-3 vp-power ifs=False")
    settings += [previous, alternative, afs_default, afs_alternative, no_ifs]
    fs = results["fewstep"]
    per_sample = {}  # (mixture, label, nfe) -> per-sample squared errors, for bootstrap intervals
    t0 = time.time()
    for mix, pb in problems.items():
        for st in settings:
            key = st.name()
            row = fs.setdefault(mix, {}).setdefault(key, {"solver": st.solver, "order": st.order,
                                                          "spacing": st.spacing_name, "end": st.end,
                                                          "lof": st.lof, "by_nfe": {}})
            for nfe in nfes:
                m, out = run_setting(pb, st, nfe)
                row["by_nfe"][str(nfe)] = m
                if out is not None and st.label:
                    per_sample[(mix, key, nfe)] = pb.sq_err(out)
        print(f"[fewstep matrix {mix}: {len(settings)} settings, {time.time() - t0:.0f}s]", flush=True)

    # -------------------------------------------------------------- diffusers
    ds = results["diffusers"]
    if "diffusers" not in skip:
        t0 = time.time()
        for mix, pb in problems.items():
            for label, cls_name, kw, is_default in diffusers_cases(quick):
                row = ds.setdefault(mix, {}).setdefault(label, {"class": cls_name, "kwargs": kw, "default": is_default,
                                                                "by_nfe": {}})
                for nfe in nfes:
                    m, out, _ = run_diffusers(pb, cls_name, kw, nfe)
                    row["by_nfe"][str(nfe)] = m
                    if out is not None and is_default:
                        per_sample[(mix, "diffusers:" + label, nfe)] = pb.sq_err(out)
            print(f"[diffusers {mix}: {time.time() - t0:.0f}s]", flush=True)

    def val(row, nfe, key="rmse"):
        m = row["by_nfe"].get(str(nfe), {})
        return m.get(key) if "error" not in m else None

    def best_of(rows, nfe):
        """(label, rmse) of the lowest finite RMSE among rows that spend at most `nfe` calls, or None."""
        best = None
        for label, row in rows:
            m = row["by_nfe"].get(str(nfe), {})
            if "error" in m or m.get("nfe") is None or m["nfe"] > nfe or not math.isfinite(m.get("rmse", math.nan)):
                continue
            if best is None or m["rmse"] < best[1]:
                best = (label, m["rmse"])
        return best

    def best_diffusers(mix, nfe, defaults_only=True):
        return best_of(((k, r) for k, r in ds.get(mix, {}).items() if r["default"] or not defaults_only), nfe)

    def best_fewstep(mix, nfe):
        return best_of(fs.get(mix, {}).items(), nfe)

    # -------------------------------------------------------------- headline
    dflt = {n: default_solver(process, n)["solver"] + (" + ifs" if default_solver(process, n).get("ifs") else "")
            for n in nfes}
    R.add("## Headline: fewstep vs the best diffusers scheduler", "",
          f"fewstep default: `sample()` with no solver given (per NFE: {dflt}), end='zero': UniPC-3 (bh1 at <= 5 "
          "calls, bh2 from 6; data form, corrector on, lower_order_final=True) on the library's `vp-power` grid (fewstep.spacing: NFE + 1 times "
          "uniform in tau(lambda)^(1/kappa) of the reference linear-beta VP, kappa = min(2, 0.75 + NFE/10), the "
          "last one dropped so the last step goes to sigma = 0 from one grid step above t_min), with the implicit "
          "first step (ifs, solvers/implicit_first_step.py: the step from t_max to lambda = -2.5, -3.5 from 11 "
          "calls, -4.5 from 15, takes x0 from one call at its end, which is also the solver's first model output, "
          "and the NFE calls follow on the vp-power grid from there). 'default without ifs': the same with "
          "ifs=False (the default before ifs). Previous default: "
          "the same solver on the logSNR-uniform grid whose last model call sits at t_min = 1/N. Alternative: "
          "UniPC-3 bh1 on the same grid. 'default + analytical first step': UniPC-3 bh2 with `afs=True` (from 6 calls the default + afs), 'alternative + analytical first step': UniPC-3 bh1 with `afs=True` (at <= 5 calls the default + afs) (the first model call is replaced by the closed-form E[x0 | x_T] of zero-mean Gaussian data, sd 0.5, and spent on one more step). Best diffusers = lowest RMSE among the default-setting schedulers "
          "at the same or a smaller number of model calls. Ratio = fewstep / best diffusers, with a paired "
          "bootstrap 90% interval over samples; target <= 0.75.", "")
    headline = {}
    cands = [("fewstep default", "fewstep default"), ("default without ifs", no_ifs.name()),
             ("alternative (unipc-bh1-3, vp-power)", alternative.name()),
             ("previous default (unipc-3, logsnr)", previous.name()),
             ("default + analytical first step", afs_default.name()),
             ("alternative + analytical first step", afs_alternative.name())]
    for mix in problems:
        lines = {k: [] for k in ("bd", "bestf")}
        for _, key in cands:
            lines[key], lines["ratio " + key] = [], []
        for nfe in nfes:
            bd = best_diffusers(mix, nfe)
            bf = best_fewstep(mix, nfe)
            lines["bestf"].append(f"{fmt(bf[1])} {bf[0]}" if bf else "-")
            if bd:
                fl = ds[mix][bd[0]]["by_nfe"][str(nfe)].get("flips")
                lines["bd"].append(f"{fmt(bd[1])} ({fmt(fl * 100, 2)}%) {bd[0]}")
            else:
                lines["bd"].append("-")
            for _, key in cands:
                row = fs[mix][key]
                v = val(row, nfe)
                lines[key].append(f"{fmt(v)} ({fmt(val(row, nfe, 'flips') * 100, 2)}%)" if v is not None else "-")
                if bd and v is not None:
                    a = per_sample.get((mix, key, nfe))
                    b = per_sample.get((mix, "diffusers:" + bd[0], nfe))
                    ci = bootstrap_ratio(a, b) if a is not None and b is not None else None
                    lines["ratio " + key].append(f"{v / bd[1]:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""))
                    headline.setdefault(mix, {}).setdefault(key, {})[str(nfe)] = {
                        "rmse": v, "ratio": v / bd[1], "ci90": ci, "best_diffusers": bd}
                else:
                    lines["ratio " + key].append("-")
        rows = [[f"{label} (flips %)"] + lines[key] for label, key in cands]
        rows.append(["best diffusers, default settings (flips %)"] + lines["bd"])
        rows += [[f"ratio {label.split(' (')[0]} / diffusers"] + lines["ratio " + key] for label, key in cands]
        rows.append(["best fewstep setting of the matrix"] + lines["bestf"])
        R.add(f"### {mix} mixture", "")
        R.table(["RMSE"] + [f"NFE {n}" for n in nfes], rows)
    results["headline"] = headline

    # -------------------------------------------------------------- fewstep solvers, default spacing
    R.add("## fewstep solvers (RMSE; each at its default spacing, end='zero', lower_order_final=True)", "",
          "Mark `*`: RMSE not strictly decreasing in NFE. NFE used differs from the budget only for Heun "
          "(2N - 1 calls; even budgets use one call less).", "")
    for mix in problems:
        rows = []
        keys = ["fewstep default"] + list(dict.fromkeys(default_setting(r["solver"], r["order"]).name()
                                                        for r in fs[mix].values() if r["solver"]))
        keys += [no_ifs.name(), previous.name(), alternative.name()]
        for key in keys:
            row = fs[mix].get(key)
            if row is None:
                continue
            vals = [val(row, n) for n in nfes]
            nf = [row["by_nfe"].get(str(n), {}).get("nfe") for n in nfes]
            note = "" if all(a == n for a, n in zip(nf, nfes)) else " (NFE " + "/".join(map(str, nf)) + ")"
            rows.append([key + note] + [fmt(v) for v in vals] + ["" if monotone(vals) else "*"])
        R.add(f"### {mix}", "")
        R.table(["setting"] + [f"{n}" for n in nfes] + ["non-monotone"], rows)

    # -------------------------------------------------------------- spacing x solver at 5 and 10
    if not quick and "matrix" not in skip:
        R.add("## Spacing x solver (RMSE at 5 / 10 / 20 NFE; end='zero', lower_order_final=True)", "",
              "'X+trailing': spacing X with NFE + 1 points down to t_min and its last point dropped (the last "
              "call one step above t_min, then sigma = 0); 'trailing' is diffusers' integer grid "
              "round(arange(N, 0, -N/n)) - 1 (= DPMSolverMultistep's default grid up to rounding).", "")
        for mix in problems:
            rows = []
            solvers = []
            for key, row in fs[mix].items():
                if row["solver"] and (row["solver"], row["order"]) not in solvers:
                    solvers.append((row["solver"], row["order"]))
            for solver, order in solvers:
                cells = []
                for sp in SPACING_COLUMNS:
                    if sp.endswith("+trailing"):
                        sp = trailing_of(sp[:-9])
                    st = Setting(solver, order, sp, "zero", True if solver in MULTISTEP else None)
                    row = fs[mix].get(st.name())
                    cells.append(" / ".join(fmt(val(row, n), 3) for n in (5, 10, 20)) if row else "-")
                rows.append([Setting(solver, order).name().split(" ")[0]] + cells)
            R.add(f"### {mix}", "")
            R.table(["solver"] + list(SPACING_COLUMNS), rows)

        # levers: end and lower_order_final
        R.add("## Levers: where the last call sits and lower_order_final (RMSE at 5 / 10 / 20 NFE, logsnr grid)", "",
              "zero: the last call at t_min, then x = D(x, t_min) (no extra call); denoise: NFE - 1 solver steps "
              "to t_min and one more call D(x, t_min) (official denoise_to_zero); logsnr+trailing: the grid "
              "of NFE + 1 logSNR-uniform points to t_min without its last point, so the last call sits one "
              "step above t_min and the last step goes to sigma = 0.", "")
        for mix in problems:
            rows = []
            for solver, order in (("dpm-solver", 3), ("dpm++2m", 2), ("dpm++3m", 3), ("unipc", 2), ("unipc", 3),
                                  ("unipc-bh1", 3)):
                cells = []
                for sp, end in (("logsnr", "zero"), ("logsnr", "denoise"), (trailing_of("logsnr"), "zero")):
                    for lof in (True, False):
                        row = fs[mix].get(Setting(solver, order, sp, end, lof).name())
                        cells.append(" / ".join(fmt(val(row, n), 3) for n in (5, 10, 20)) if row else "-")
                rows.append([Setting(solver, order).name().split(" ")[0]] + cells)
            R.add(f"### {mix}", "")
            R.table(["solver", "zero, lof", "zero, no lof", "denoise, lof", "denoise, no lof", "logsnr+trailing, lof",
                     "logsnr+trailing, no lof"], rows)

    # -------------------------------------------------------------- diffusers table
    if ds:
        R.add("## diffusers schedulers (default settings unless marked; float64; RMSE)", "",
              "NFE used in brackets where it differs from the budget. `*`: not strictly decreasing in NFE.", "")
        for mix in problems:
            rows = []
            for label, row in ds[mix].items():
                vals = [val(row, n) for n in nfes]
                nf = [row["by_nfe"].get(str(n), {}).get("nfe") for n in nfes]
                cells = []
                for v, a, n in zip(vals, nf, nfes):
                    err = row["by_nfe"].get(str(n), {}).get("error")
                    cells.append(("ERR" if err else fmt(v)) + ("" if a == n or a is None else f" [{a}]"))
                name = label + ("" if row["default"] else " (non-default)")
                rows.append([name] + cells + ["" if monotone([v for v in vals if v is not None and math.isfinite(v)]) else "*"])
            R.add(f"### {mix}", "")
            R.table(["scheduler"] + [f"{n}" for n in nfes] + ["non-monotone"], rows)
        errs = sorted({(label, row["by_nfe"][k]["error"]) for mix in ds for label, row in ds[mix].items()
                       for k in row["by_nfe"] if "error" in row["by_nfe"][k]})
        if errs:
            R.add("diffusers errors:", *[f"- {a}: {b}" for a, b in errs], "")
        R.add("### float64 patch check: fewstep on diffusers' own grid vs diffusers", "")
        R.add(*parity_check(problems["smooth"]), "")

    # -------------------------------------------------------------- monotonicity summary
    mono_f = [(mix, k) for mix in fs for k, r in fs[mix].items() if not monotone([val(r, n) for n in nfes])]
    mono_d = [(mix, k) for mix in ds for k, r in ds[mix].items()
              if not monotone([v for v in (val(r, n) for n in nfes) if v is not None and math.isfinite(v)])]
    n_f = sum(len(fs[m]) for m in fs)
    n_d = sum(len(ds[m]) for m in ds)
    fam = {}
    for mix in fs:
        for k, r in fs[mix].items():
            f = k.split(":")[0] if k.startswith(("previous", "alternative", "fewstep")) else k.split(" ")[0]
            tot, bad = fam.get(f, (0, 0))
            fam[f] = (tot + 1, bad + ((mix, k) in mono_f))
    R.add("## Monotonicity in NFE", "",
          f"fewstep: {n_f - len(mono_f)} of {n_f} settings (both mixtures) strictly decreasing over NFE {list(nfes)}; "
          f"diffusers: {n_d - len(mono_d)} of {n_d}. Non-monotone diffusers schedulers: "
          + (", ".join(f"{k} ({m})" for m, k in mono_d) or "none") + ".", "",
          "Non-monotone fewstep settings per solver (of all its spacing / end / lower_order_final variants): "
          + ", ".join(f"{f} {b}/{t}" for f, (t, b) in fam.items()) + ".", "")
    results["non_monotone"] = {"fewstep": mono_f, "diffusers": mono_d}

    # -------------------------------------------------------------- research
    if "research" not in skip:
        research(R, results, problems, nfes, quick, skip)

    # -------------------------------------------------------------- timing
    if "timing" not in skip:
        torch.set_num_threads(all_threads)
        tm = timing(quick, reps=2 if quick else 3)
        results["timing"] = tm
        R.add("## Solver overhead (CPU, float32, batch 64)", "",
              f"torch threads {tm['threads']} (shared machine: wall-clock, min over repeats); network forward "
              "times: " + ", ".join(f"{k} ({v['params'] / 1e6:.1f}M params, input {v['shape']}): "
                                    f"{v['forward_s'] * 1e3:.0f} ms" for k, v in tm["nets"].items())
              + ". Solver overhead = (time of sample() with an identity stand-in network at the same tensor "
              "size - stand-in calls) / NFE, at NFE 10; it includes the denoiser wrapper's eps -> x0 conversion.", "")
        rows = []
        first = next(iter(tm["solvers"].values()))
        for k in first:
            row = [k]
            for name, net in tm["nets"].items():
                v = tm["solvers"][name][k]["per_step_s"]
                row += [f"{v * 1e3:.2f}", f"{100 * v / net['forward_s']:.3f}%"]
            rows.append(row)
        R.table(["solver"] + [c for name in tm["nets"] for c in (f"ms/step at {name} size", f"% of {name} forward")],
                rows)

    results["elapsed_s"] = time.time() - t_start
    R.add(f"_Total time {results['elapsed_s'] / 60:.1f} min._")

    # -------------------------------------------------------------- plots and files
    plots(args.out, results, problems, nfes, previous.name())
    with open(os.path.join(args.out, "solvers.md"), "w") as f:
        f.write("\n".join(R.lines) + "\n")
    raw = args.raw_out or args.out
    os.makedirs(raw, exist_ok=True)
    with open(os.path.join(raw, "solvers.json"), "w") as f:
        json.dump(results, f, separators=(",", ":"), default=str)
    with open(os.path.join(raw, "solvers_full.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["library", "mixture", "setting", "solver", "order", "spacing", "end", "lower_order_final",
                    "nfe_budget", "nfe_used", "rmse", "flips", "rmse_no_flip", "error"])
        for mix in fs:
            for key, r in fs[mix].items():
                for n, m in r["by_nfe"].items():
                    w.writerow(["fewstep", mix, key, r["solver"], r["order"], r["spacing"], r["end"], r["lof"], n,
                                m.get("nfe"), m.get("rmse"), m.get("flips"), m.get("rmse_kept"), m.get("error", "")])
        for mix in ds:
            for key, r in ds[mix].items():
                for n, m in r["by_nfe"].items():
                    w.writerow(["diffusers", mix, key, r["class"], "", json.dumps(r["kwargs"]), "", "", n,
                                m.get("nfe"), m.get("rmse"), m.get("flips"), m.get("rmse_kept"), m.get("error", "")])
    print(f"wrote {args.out}/solvers.md and plots, {raw}/solvers.json and solvers_full.csv", flush=True)


def research(R: Report, results: dict, problems: dict, nfes, quick: bool, skip: set):
    """Levers at 5-10 NFE: where the grid ends, grid rules on held-out mixtures, optimised grids,
    UniPC's corrector, the 3M coefficient."""
    res = results.setdefault("research", {})
    process = next(iter(problems.values())).process
    lam_T, lam_min = float(process.lambda_(process.t_max)), float(process.lambda_(process.t_min))
    small = tuple(n for n in nfes if n <= 10)
    solvers = [("unipc", 3), ("dpm++3m", 3), ("dpm++2m", 2)] if not quick else [("unipc", 3)]

    # ---- 1. where the last model call sits: logSNR-uniform to lambda_end, then sigma = 0
    ends = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, round(lam_min, 2)] if not quick else [1.0, 2.0, 3.0, round(lam_min, 2)]
    R.add("## Research: where the last model call sits", "",
          f"logSNR-uniform grid of NFE points on [lambda(t_max) = {lam_T:.2f}, lambda_end], then the last step to "
          f"sigma = 0 (x = D(x, t_end), no extra call). lambda_end = {lam_min:.2f} is t_min = 1/N (the current "
          f"default). RMSE; best per column in bold.", "")
    sweep = res.setdefault("lambda_end", {})
    for mix, pb in problems.items():
        for solver, order in solvers:
            rows = []
            table = {}
            for le in ends:
                st = Setting(solver, order, _rule(logsnr_to, f"logsnr-to-{le}", lam_end=le), "zero", True)
                table[le] = [run_setting(pb, st, n)[0].get("rmse") for n in nfes]
            for le in ends:
                row = [f"{le}"]
                for j, n in enumerate(nfes):
                    col = [table[e][j] for e in ends]
                    v = table[le][j]
                    row.append(f"**{fmt(v)}**" if v == min(col) else fmt(v))
                rows.append(row)
            sweep[f"{mix}|{solver}-{order}"] = table
            R.add(f"### {mix}, {Setting(solver, order).name().split(' ')[0]}", "")
            R.table(["lambda_end"] + [f"{n}" for n in nfes], rows)

    # ---- 2. grid rules on the main and held-out mixtures
    if "heldout" not in skip:
        R.add("## Research: grid rules on held-out mixtures", "",
              "Each rule is a fixed recipe (no tuning per mixture). Entries: RMSE ratio to the best rule on that "
              "mixture and NFE (1.00 = best), for unipc-3 (lower_order_final=True, end='zero'). Held-out mixtures "
              "(K = 8): " + "; ".join(f"{k}: {v}" for k, v in HELD_OUT.items()) + ". Last column: geometric mean "
              "over all mixtures and NFE <= 10 (then over NFE > 10).", "")
        oracles = dict(problems)
        n_ho = 200 if quick else 500
        for name, kw in (HELD_OUT.items() if not quick else list(HELD_OUT.items())[:2]):
            kw = dict(kw)
            g = GaussianMixture.random(K=8, **kw)
            oracles[name] = Problem.make(name, g, process, n_ho, NOISE_SEED)
        table = {}
        for rname, rl in GRID_RULES.items():
            st = Setting("unipc", 3, rl, "zero", True)
            for oname, pb in oracles.items():
                for n in nfes:
                    table[(rname, oname, n)] = run_setting(pb, st, n)[0].get("rmse")
        res["rules"] = {f"{a}|{b}|{c}": v for (a, b, c), v in table.items()}
        rows = []
        for rname in GRID_RULES:
            row = [rname]
            lo, hi = [], []
            for oname in oracles:
                cells = []
                for n in nfes:
                    best = min(table[(r, oname, n)] for r in GRID_RULES)
                    ratio = table[(rname, oname, n)] / best
                    (lo if n <= 10 else hi).append(math.log(ratio))
                    if n in (5, 10, 20):
                        cells.append(f"{ratio:.2f}")
                row.append(" / ".join(cells))
            row.append(f"{math.exp(np.mean(lo)):.2f} / {math.exp(np.mean(hi)) if hi else float('nan'):.2f}")
            rows.append(row)
        R.add("Ratios at NFE 5 / 10 / 20:", "")
        R.table(["rule"] + list(oracles) + ["geo-mean NFE<=10 / >10"], rows)

        # against the best diffusers scheduler (default settings) on every oracle
        bd = {}
        if "diffusers" not in skip:
            for oname, pb in oracles.items():
                for n in nfes:
                    for label, cls_name, kw, is_default in diffusers_cases(True):
                        m, _, _ = run_diffusers(pb, cls_name, kw, n)
                        if "error" in m or m["nfe"] > n or not math.isfinite(m["rmse"]):
                            continue
                        if (oname, n) not in bd or m["rmse"] < bd[(oname, n)][1]:
                            bd[(oname, n)] = (label, m["rmse"])
            res["best_diffusers_per_oracle"] = {f"{a}|{b}": v for (a, b), v in bd.items()}

            def ratio_row(label, vals_of):
                cells, logs = [], {}
                for oname in oracles:
                    r = [vals_of(oname, n) / bd[(oname, n)][1] for n in nfes]
                    cells.append(" / ".join(f"{x:.2f}" for x, n in zip(r, nfes) if n in (5, 10, 20)))
                    for x, n in zip(r, nfes):
                        logs.setdefault(n, []).append(math.log(x))
                return [label] + cells, {n: math.exp(np.mean(v)) for n, v in logs.items()}

            R.add("### Grid rules against the best diffusers scheduler on every oracle", "",
                  "RMSE of unipc-3 on each rule / RMSE of the best default-setting diffusers scheduler on that oracle "
                  "and NFE (< 1: fewstep better), at NFE 5 / 10 / 20; last columns: geometric mean over the "
                  f"{len(oracles)} oracles at each NFE.", "")
            rows = []
            for rname in GRID_RULES:
                row, geo = ratio_row(rname, lambda o, n, r=rname: table[(r, o, n)])
                rows.append(row + [f"{geo[n]:.2f}" for n in nfes])
            R.table(["rule"] + list(oracles) + [f"geo {n}" for n in nfes], rows)

            # ---- 2b. the grid's exponent: vp-power with a fixed kappa, per NFE
            R.add("## Research: the grid's exponent (vp-power with a fixed kappa)", "",
                  "unipc-3 (lower_order_final=True) on `make_grid(p, n, 'vp-power', kappa=k)`. Cells: geometric mean "
                  f"over the {len(oracles)} oracles of the RMSE ratio to the best diffusers scheduler (sharp / smooth "
                  "in brackets); best kappa per NFE in bold. The default's kappa = min(2, 0.75 + n/10) follows the "
                  "best column: 1.25 at 5 steps, 1.75 at 10, 2 from 13 on.", "")
            ktab = {}
            for k in KAPPAS:
                rl = _rule(lambda p, n, k=k: make_grid(p, n, "vp-power", kappa=k), f"vp-power-k{k}")
                st = Setting("unipc", 3, rl, "zero", True)
                for oname, pb in oracles.items():
                    for n in nfes:
                        ktab[(k, oname, n)] = run_setting(pb, st, n)[0].get("rmse") / bd[(oname, n)][1]
            res["kappa_sweep"] = {f"{a}|{b}|{c}": v for (a, b, c), v in ktab.items()}
            geo = {(k, n): math.exp(np.mean([math.log(ktab[(k, o, n)]) for o in oracles]))
                   for k in KAPPAS for n in nfes}
            rows = []
            for k in KAPPAS:
                row = [f"{k}"]
                for n in nfes:
                    cell = f"{geo[(k, n)]:.2f} ({ktab[(k, 'sharp', n)]:.2f} / {ktab[(k, 'smooth', n)]:.2f})"
                    row.append(f"**{cell}**" if geo[(k, n)] == min(geo[(kk, n)] for kk in KAPPAS) else cell)
                rows.append(row)
            dk = [f"{table[(DEFAULT_RULE, 'sharp', n)] / bd[('sharp', n)][1]:.2f} / "
                  f"{table[(DEFAULT_RULE, 'smooth', n)] / bd[('smooth', n)][1]:.2f}" for n in nfes]
            _, dgeo = ratio_row(DEFAULT_RULE, lambda o, n: table[(DEFAULT_RULE, o, n)])
            rows.append(["default: min(2, 0.75 + n/10)"] + [f"{dgeo[n]:.2f} ({c})" for n, c in zip(nfes, dk)])
            R.table(["kappa"] + [f"NFE {n}" for n in nfes], rows)

    # ---- 3. optimised grids (GITS-style DP and direct optimisation on the oracle)
    if "optimise" not in skip:
        opt_n = (5, 10) if quick else (5, 6, 8, 10)
        R.add("## Research: grids optimised on the oracle", "",
              "Fitted on separate noise (seed 1, 500 samples), evaluated on the test noise; 'transfer' = the grid "
              "fitted on the other mixture. GITS-DP: dynamic programming over a 60-point logSNR-uniform fine grid "
              "minimising the summed local DDIM error along the exact trajectory, used for every solver. "
              "Direct: Nelder-Mead on the end-point RMSE of that solver itself (an upper bound on what any grid "
              "can give, and over-fitted to this mixture).", "")
        fitted = {}
        trains = {mix: Problem.make(mix, pb.g, process, 200 if quick else 500, TRAIN_SEED)
                  for mix, pb in problems.items()}
        for mix, pb in problems.items():
            fitted[(mix, "gits")] = gits_grid(pb.g, process, trains[mix].noise, list(opt_n), M=40 if quick else 60)
        opt_solvers = [("unipc", 3)] if quick else [("unipc", 3), ("dpm++2m", 2)]
        for mix in problems:
            for solver, order in opt_solvers:
                st = Setting(solver, order, None, "zero", True)
                grids = {}
                for n in opt_n:
                    init = process.lambda_(GRID_RULES[DEFAULT_RULE](process, n)[:-1]).tolist()
                    init[0] = lam_T
                    t0 = time.time()
                    lams, ftrain = optimise_grid(trains[mix], st, n, init, maxfev=(60 if quick else 250) * (n - 1))
                    grids[n] = lams
                    print(f"[optimised {mix} {solver}-{order} n={n}: train rmse {ftrain:.4f}, {time.time() - t0:.0f}s]",
                          flush=True)
                fitted[(mix, f"direct {solver}-{order}")] = grids
        res["fitted_grids"] = {f"{a}|{b}": v for (a, b), v in fitted.items()}
        rows = []
        for mix, pb in problems.items():
            other = [m for m in problems if m != mix][0]
            for solver, order in [("unipc", 3), ("dpm++3m", 3), ("dpm++2m", 2), ("ddim", None)][: 1 if quick else 4]:
                for source, label in (("gits", "GITS-DP"), (f"direct {solver}-{order}", "direct")):
                    for fit_mix, tag in ((mix, "own"), (other, "transfer")):
                        grids = fitted.get((fit_mix, source))
                        if grids is None:
                            continue
                        cells = []
                        for n in opt_n:
                            lams = grids[n]
                            st = Setting(solver, order, lambda proc, nfe, L=lams: _grid_from_lambdas(proc, L), "zero",
                                         True if solver in MULTISTEP else None)
                            cells.append(fmt(run_setting(pb, st, n)[0].get("rmse")))
                        rows.append([mix, Setting(solver, order).name().split(" ")[0], f"{label} ({tag})"] + cells)
                # reference row: the default grid
                st = Setting(solver, order, GRID_RULES[DEFAULT_RULE], "zero", True if solver in MULTISTEP else None)
                rows.append([mix, Setting(solver, order).name().split(" ")[0], "vp-power (default)"] +
                            [fmt(run_setting(pb, st, n)[0].get("rmse")) for n in opt_n])
        R.table(["test mixture", "solver", "grid"] + [f"NFE {n}" for n in opt_n], rows)
        R.add("Fitted grids (lambda of each model call; the last step goes to sigma = 0):", "")
        rows = []
        for (mix, source), grids in fitted.items():
            for n in opt_n:
                rows.append([mix, source, n, ", ".join(f"{v:.2f}" for v in grids[n])])
        for n in opt_n:
            rows.append(["-", "vp-power (default)", n, ", ".join(f"{v:.2f}" for v in
                                                        process.lambda_(GRID_RULES[DEFAULT_RULE](process, n)[:-1]).tolist())])
        R.table(["fitted on", "grid", "NFE", "lambdas"], rows)

    # ---- 4. other processes: the same mixtures under every process fewstep has
    if "processes" not in skip:
        from fewstep.processes import EDM, Flow, TrigFlow, VPCosine, VPLinear

        procs = {"vp-discrete linear (above)": process, "vp-discrete cosine": VPDiscrete.cosine(),
                 "vp-linear (continuous)": VPLinear(), "vp-cosine (continuous)": VPCosine(), "edm": EDM(),
                 "flow": Flow(), "trigflow": TrigFlow()}
        pn = (5, 10, 20) if not quick else (5, 10)
        PROCESS_GRIDS = (("logsnr (t_min), today", "logsnr"), ("quadratic", "quadratic"),
                         ("quadratic+trailing", trailing_of("quadratic")), ("karras", "karras"),
                         ("vp-power (default)", "vp-power"), ("vp-power kappa=2", GRID_RULES[ALT_RULE]),
                         ("logsnr+trailing stop=3", GRID_RULES["logsnr+trailing stop=3"]))
        R.add("## Research: other processes (unipc-3, lower_order_final=True, end='zero'; RMSE at NFE "
              + " / ".join(map(str, pn)) + ")", "",
              "The same two mixtures and test noise (scaled by each process's prior std), exact end point per process. "
              "'vp-power' grids are fixed lambda grids, the same for every process; 'quadratic' "
              "is uniform in the square root of each process's own time (sigma for EDM).", "")
        rows = []
        pres = res.setdefault("processes", {})
        for pname, proc in procs.items():
            lamT = float(proc.lambda_(proc.t_max))
            for mix, pb0 in problems.items():
                pb = pb0 if proc is process else Problem(mix, pb0.g, proc, pb0.noise,
                                                         pb0.g.ode(pb0.noise * proc.prior_std(), proc.t_max, 0.0, proc))
                cells = []
                for label, sp in PROCESS_GRIDS:
                    v = [run_setting(pb, Setting("unipc", 3, sp, "zero", True), n)[0].get("rmse") for n in pn]
                    pres[f"{pname}|{mix}|{label}"] = v
                    cells.append(" / ".join(fmt(x, 3) for x in v))
                rows.append([pname, f"{lamT:.2f}", mix] + cells)
        R.table(["process", "lambda(t_max)", "mixture"] + [label for label, _ in PROCESS_GRIDS], rows)

    # ---- 5. other levers: UniPC corrector, 3M coefficient, bh1 vs bh2, solver_type
    R.add("## Research: other levers (RMSE at NFE " + " / ".join(map(str, small)) + "; grid vp-power (default), "
          "end='zero')", "")
    rule = GRID_RULES[DEFAULT_RULE]
    cases = []
    for solver in ("unipc", "unipc-bh1"):
        for form in ("data", "noise"):
            for order in (3, 2):
                for lof in (True, False):
                    for corr in (True, False):
                        label = (f"{solver}-{order} {form} form" + ("" if lof else " lower_order_final=False")
                                 + ("" if corr else " corrector off"))
                        if (solver, form, order, lof, corr) == ("unipc", "data", 3, True, True):
                            label += " (the default)"
                        cases.append((label, Setting(solver, order, rule, "zero", lof,
                                                     (("form", form), ("corrector", corr)))))
    cases += [
        ("dpm++3m (2 phi_3 D2, fewstep)", Setting("dpm++3m", 3, rule, "zero", True)),
        ("dpm++3m diffusers_3m=True (phi_3 D2)", Setting("dpm++3m", 3, rule, "zero", True, (("diffusers_3m", True),))),
        ("dpm++2m midpoint", Setting("dpm++2m", 2, rule, "zero", True)),
        ("dpm++2m heun", Setting("dpm++2m", 2, rule, "zero", True, (("solver_type", "heun"),))),
        ("dpm-solver-3 (noise form)", Setting("dpm-solver", 3, rule, "zero", True)),
    ]
    rows = []
    lev = res.setdefault("levers", {})

    def best_d(mix, n):
        vals = [r["by_nfe"][str(n)]["rmse"] for r in results["diffusers"].get(mix, {}).values()
                if r["default"] and "error" not in r["by_nfe"].get(str(n), {"error": 1})
                and r["by_nfe"][str(n)]["nfe"] <= n and math.isfinite(r["by_nfe"][str(n)]["rmse"])]
        return min(vals) if vals else None

    for label, st in cases:
        cells, logs = [], []
        for mix, pb in problems.items():
            v = [run_setting(pb, st, n)[0].get("rmse") for n in small]
            lev[f"{mix}|{label}"] = v
            cells.append(" / ".join(fmt(x, 3) for x in v))
            logs += [math.log(x / best_d(mix, n)) for x, n in zip(v, small) if best_d(mix, n)]
        rows.append([label] + cells + [f"{math.exp(np.mean(logs)):.2f}" if logs else "-"])
    rows.sort(key=lambda r: float(r[-1]) if r[-1] != "-" else 9.0)
    R.add("Last column: geometric mean over both mixtures and these NFE of the RMSE ratio to the best diffusers "
          "scheduler (sorted by it). 'form': UniPC's data (x0) or noise (eps) prediction form; bh1 / bh2: "
          "UniPC's B(h) = h or e^h - 1.", "")
    R.table(["setting"] + list(problems) + ["geo ratio to best diffusers"], rows)


def plots(outdir, results, problems, nfes, previous_key):
    fs, ds = results["fewstep"], results["diffusers"]

    def vals(row):
        return [row["by_nfe"].get(str(n), {}).get("rmse") for n in nfes]

    series = {}
    for mix in problems:
        s = {}
        for key, row in fs[mix].items():
            if key == "fewstep default":
                s["fewstep default (unipc-3 vp-power + ifs)"] = (vals(row), dict(color="r", lw=2.5))
            elif key.startswith("default without ifs"):
                s["default without ifs"] = (vals(row), dict(color="m", lw=1.5, ls=":"))
            elif key == previous_key:
                s["previous default (unipc-3 logsnr)"] = (vals(row), dict(color="k", lw=2))
            elif row["solver"] and key == default_setting(row["solver"], row["order"]).name():
                s[key.replace(" end=zero", "").replace(" lof=True", "")] = (vals(row), dict(lw=1, alpha=0.8))
        best = []
        for n in nfes:
            b = None
            for label, row in ds.get(mix, {}).items():
                m = row["by_nfe"].get(str(n), {})
                if row["default"] and "error" not in m and m.get("nfe", 99) <= n and math.isfinite(m.get("rmse", math.nan)):
                    b = m["rmse"] if b is None else min(b, m["rmse"])
            best.append(b)
        if any(v is not None for v in best):
            s["best diffusers (defaults)"] = (best, dict(color="gray", lw=2.5, ls="--"))
        series[mix] = s
    plot_rmse(os.path.join(outdir, "solvers_rmse.png"), series, nfes, "fewstep solvers")
    if ds:
        series = {}
        for mix in problems:
            s = {label + ("" if row["default"] else " (non-default)"):
                 (vals(row), dict(lw=1, ls="-" if row["default"] else ":")) for label, row in ds[mix].items()}
            s["fewstep default"] = (vals(fs[mix]["fewstep default"]), dict(color="r", lw=2.5))
            series[mix] = s
        plot_rmse(os.path.join(outdir, "solvers_diffusers.png"), series, nfes, "diffusers schedulers")
    sweep = results.get("research", {}).get("lambda_end")
    if sweep:
        series = {}
        for mix in problems:
            key = f"{mix}|unipc-3"
            if key in sweep:
                series[mix] = {f"logSNR to lambda_end={le}": (v, dict(lw=1)) for le, v in sweep[key].items()}
                series[mix]["fewstep default (vp-power)"] = (vals(fs[mix]["fewstep default"]), dict(color="r", lw=2.5))
        if series:
            plot_rmse(os.path.join(outdir, "solvers_lambda_end.png"), series, nfes, "unipc-3, where the grid ends")
    process = next(iter(problems.values())).process
    for n in (5, 10):
        grids = {}
        for sp in ("logsnr", "quadratic", "time", "karras", "trailing"):
            grids[sp] = process.lambda_(make_grid(process, n, sp)[:-1]).tolist()
        grids["vp-power (default)"] = process.lambda_(make_grid(process, n, "vp-power")[:-1]).tolist()
        for key, g in results.get("research", {}).get("fitted_grids", {}).items():
            if str(n) in map(str, g):
                grids["fitted: " + key.replace("|", " ")] = g[n] if n in g else g[str(n)]
        plot_grids(os.path.join(outdir, f"solvers_grids_{n}.png"), grids, f"step grids at {n} NFE (lambda of each call)")


if __name__ == "__main__":
    main()
