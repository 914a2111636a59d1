"""`sample()`: the one entry point that turns noise into samples with any solver by name.

`steps` always counts model calls (NFE), whatever the solver, so settings compare fairly:
Heun takes (steps + 1) // 2 grid steps (2N - 1 calls ending at sigma = 0), singlestep solvers use
the official "fast" order pattern, and the adaptive solver ignores it (its calls are reported).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .guidance import CFG, ClassifierGuidance, LabelCFG, Thresholded
from .predictions import Denoiser, wrap
from .processes import Process, get_process
from .solvers.common import record_nfe
from .solvers.ddim import ddim
from .solvers.dpm_solver import dpm_adaptive, dpm_multistep, dpm_singlestep, sde_dpmpp_2m
from .solvers.edm import edm_sampler
from .solvers.fitted import FittedSolver, fitted_solve, guidance_key
from .solvers.implicit_first_step import (FirstOutput, ifs_grid, ifs_lambda, ifs_reaches,
                                         implicit_first_step)
from .solvers.unipc import unipc
from .spacing import make_grid

__all__ = ["sample", "SOLVERS", "default_solver", "SolverSpec"]


@dataclass(frozen=True)
class SolverSpec:
    """How a solver name maps to a function: its default spacing and the orders it has."""

    fn: object
    spacing: str
    orders: tuple
    default_order: int | None
    fixed: dict


SOLVERS = {
    "ddim": SolverSpec(ddim, "time", (1,), None, {}),
    "dpm-solver": SolverSpec(dpm_multistep, "vp-power", (1, 2, 3), 3, {"form": "noise"}),
    "dpm-solver-singlestep": SolverSpec(dpm_singlestep, "vp-power", (1, 2, 3), 3, {"form": "noise"}),
    "dpm-solver-adaptive": SolverSpec(dpm_adaptive, "logsnr", (2, 3), 3, {"form": "noise"}),
    "dpm++2m": SolverSpec(dpm_multistep, "vp-power", (2,), 2, {"form": "data"}),
    "dpm++3m": SolverSpec(dpm_multistep, "vp-power", (3,), 3, {"form": "data"}),
    "dpm++2s": SolverSpec(dpm_singlestep, "vp-power", (2,), 2, {"form": "data"}),
    "dpm++3s": SolverSpec(dpm_singlestep, "vp-power", (3,), 3, {"form": "data"}),
    "sde-dpm++2m": SolverSpec(sde_dpmpp_2m, "logsnr", (2,), None, {}),
    "unipc": SolverSpec(unipc, "vp-power", (1, 2, 3), 2, {"variant": "bh2"}),
    "unipc-bh1": SolverSpec(unipc, "vp-power", (1, 2, 3), 2, {"variant": "bh1"}),
    "euler": SolverSpec(edm_sampler, "karras", (1,), None, {"heun": False}),
    "heun": SolverSpec(edm_sampler, "karras", (2,), None, {"heun": True}),
}


def default_solver(process: Process, steps: int | None = None, guided: bool = False) -> dict:
    """The default setting for `steps` model calls (None: 10) without / with guidance, the same for every
    process (a fixed grid in lambda, "vp-power", spacing.py, which ends at sigma = 0 from one grid step
    above t_min). Chosen on the exact-oracle benchmarks (benchmarks/solvers.py, solvers_guided.py):

    - unguided: UniPC-3 (bh2, data prediction, corrector, lower_order_final); at <= 5 calls UniPC-3 bh1
      (B(h) = h), which has 0.74-0.97x bh2's error at 4-5 calls on every benchmark mixture and is no
      better from 6 on. Among the fixed recipes measured (UniPC bh1 / bh2, data / noise form, order
      2 / 3, corrector, lower_order_final; logsnr / quadratic / karras / time grids, trailing or not, the
      grid's exponent and end point) this has the lowest error over the mixtures at 5-25 calls.
      With the implicit first step (ifs=True, solvers/implicit_first_step.py): the first step, from the
      start to lambda = -2.5 (-3.5 from 11 calls, -4.5 from 15), takes its model output from its end,
      which is also the solver's first, so all the calls go to the vp-power grid from there; 0.73-0.85x
      the error without it at 4-14 calls, 0.88-0.99x from 15 (geometric mean over seven oracle mixtures).
      Only where the process starts at least 0.5 below that lambda (`ifs_reaches`): EDM, flow and
      TrigFlow start at -4.38, so they take it up to 14 calls.
    - guided (classifier-free guidance at a scale other than 1, or classifier guidance): the guided
      ODE is stiffer and third-order multistep steps overshoot at few calls (UniPC-3 at CFG scale 7.5
      on the sharp mixture: RMSE 5.2 at 5 calls and 9.6 at 10, where DPM-Solver++(2M) gets 0.18 /
      0.07), so DPM-Solver++(2M) up to 6 calls, UniPC-2 (bh2) up to 14, then UniPC-3. No implicit
      first step: under guidance it helps at 5-6 calls up to CFG 3 but hurts at 7.5 and from 8 calls
      (benchmarks/solvers_ifs.py, part 4).
    """
    n = 10 if steps is None else steps
    if guided:
        if n <= 6:
            return {"solver": "dpm++2m", "order": 2, "spacing": "vp-power"}
        if n <= 14:
            return {"solver": "unipc", "order": 2, "spacing": "vp-power"}
        return {"solver": "unipc", "order": 3, "spacing": "vp-power"}
    if n <= 5:
        return {"solver": "unipc-bh1", "order": 3, "spacing": "vp-power", "ifs": True}
    return {"solver": "unipc", "order": 3, "spacing": "vp-power", "ifs": True}


def _is_guided(D) -> bool:
    """Whether a given denoiser already carries guidance (a CFG / LabelCFG at scale != 1 or a
    ClassifierGuidance anywhere in its chain of wrappers)."""
    while D is not None:
        if isinstance(D, ClassifierGuidance) or (isinstance(D, (CFG, LabelCFG)) and D.scale != 1.0):
            return True
        D = getattr(D, "inner", None)
    return False


def _consistency(D, noise, steps, spacing, cond, class_labels, guidance_scale, order, end, generator, callback,
                 progress, return_nfe, scale_noise, t_mid: float | None = None, t_max: float | None = None,
                 step_cond: dict | None = None):
    """solver="consistency": 1-step / 2-step / multistep consistency sampling (distill/sampling.py) of a
    consistency model's denoiser; `spacing` may be a list of TrigFlow times [t_max, t_1, ...];
    step_cond: per-step model inputs ({"guidance": [w_1, w_2]} for a guidance-conditioned student)."""
    from .distill.sampling import DEFAULT_T_MID, consistency, consistency_times, custom_times

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer (model calls), got {steps!r}")
    if order is not None:
        raise ValueError("solver 'consistency' has no order")
    if guidance_scale is not None:
        raise ValueError("solver 'consistency' takes no guidance_scale: distil a guidance-conditioned student and "
                         "pass guidance= in cond")
    if end != "zero":
        raise ValueError("solver 'consistency' always ends at sigma = 0 (end='zero')")
    proc = D.process
    sd = float(getattr(proc, "sigma_data", None) or getattr(D, "sigma_data", None) or 0.5)
    if spacing is None:
        ts = consistency_times(steps, DEFAULT_T_MID if t_mid is None else t_mid, t_max, sd, proc)
    elif isinstance(spacing, str):
        raise ValueError(f"solver 'consistency' takes spacing=None or a list of times, not {spacing!r}")
    else:
        ts = custom_times(spacing, proc, sd)
    cond = dict(cond or {})
    if class_labels is not None:
        cond["class_labels"] = class_labels
    x = noise * (proc.prior_std(float(ts[0])) if scale_noise else 1.0)
    out = consistency(D, x, ts, generator=generator, cond=cond, step_cond=step_cond, callback=callback,
                      progress=progress)
    nfe = ts.numel() - 1
    return (out, nfe) if return_nfe else out


def _grid_options(order, spacing, end, t_start, options) -> list:
    """The options given that a fitted solver (own calls, times, weights, end at sigma = 0) cannot take."""
    given = {"order": order, "spacing": spacing, "t_start": t_start}
    bad = [k for k, v in given.items() if v is not None] + sorted(options)
    return bad + (["end"] if end != "zero" else [])


def _check_fitted(fitted: FittedSolver, steps, order, spacing, end, t_start, options) -> None:
    """A fitted solver fixes its calls, times and end: refuse options that would contradict it."""
    if steps != fitted.nfe:
        raise ValueError(f"this fitted solver makes {fitted.nfe} model calls; steps={steps} was asked")
    bad = _grid_options(order, spacing, end, t_start, options)
    if bad:
        raise ValueError(f"a fitted solver has its own times and weights; it takes no {', '.join(bad)}")


def _as_denoiser(model, process, prediction, sigma_data, model_dtype):
    if isinstance(model, Denoiser) or hasattr(model, "process"):
        return model
    if process is None:
        raise ValueError("sample(): give process= (a Process or a name such as 'vp', 'edm', 'flow') for a raw model")
    return wrap(model, get_process(process), prediction, sigma_data=sigma_data, model_dtype=model_dtype)


def sample(model, noise: Tensor, *, process=None, prediction: str = "eps", solver=None,
           steps: int | None = None, order: int | None = None, spacing=None, end: str = "zero", t_start=None,
           t_end=None,
           rho: float = 7.0, cond: dict | None = None, uncond: dict | None = None, guidance_scale: float | None = None,
           guidance_interval=None,
           classifier=None, classifier_scale: float = 1.0, class_labels=None, thresholding: str | None = None,
           threshold_ratio: float = 0.995, threshold_max: float = 1.0, sigma_data: float = 0.5,
           model_dtype: torch.dtype | None = None, scale_noise: bool = True, generator: torch.Generator | None = None,
           callback=None, progress: bool = False, return_nfe: bool = False, **solver_options):
    """Samples from `model` starting at `noise` (N(0, I), scaled to the process's prior std).

    model: a network (wrapped with `process` and `prediction`) or a denoiser.
    solver: one of SOLVERS, or a `FittedSolver` (`fewstep.fit_solver`, fitted to this model). Default:
    the fitted solver the model carries for these calls and guidance scale (`D.fitted_solvers`,
    pretrained.py) when no grid option is given, else `default_solver(process, steps, guided)`, which
    depends on the number of calls and on guidance (guidance_scale / classifier given here, or a
    denoiser already wrapped in CFG / ClassifierGuidance); steps: model calls (default 10, or the
    fitted solver's);
    order: the solver's order; spacing: a spacing name or a list of times (see spacing.py);
    end: "zero" (last step to sigma = 0, no extra call), "t_min" (stop at t_end), or "denoise"
    (stop at t_end and take one more call x0 = D(x, t_end), the official denoise_to_zero).
    Guidance: cond / uncond dicts with guidance_scale (CFG), or class_labels with
    guidance_scale (uncond = the null class, index num_classes, given as `uncond`);
    guidance_interval=(lo, hi): CFG only where sigma / alpha is in (lo, hi] (Kynkaanniemi et al. 2024),
    the conditional model alone elsewhere (guidance.CFG); or a
    classifier(x, t, y) -> log p(y|x_t) with classifier_scale. thresholding: "static" | "dynamic".
    afs=True (solver option, any fixed-grid solver): the analytical first step (solvers/common.py
    `analytic_x0`) stands in for the first model call, which buys one more step at the same calls.
    ifs=True (the same): the implicit first step (solvers/implicit_first_step.py) takes the first step
    with the model output at its end, so that call is also the solver's first: one more step at the
    same calls, with no assumption on the data (a callback then starts at the step's end). Part of the
    unguided default (when neither solver nor spacing is given); ifs=False turns it off.
    Returns the samples (and the model calls used when return_nfe=True).
    """
    D = _as_denoiser(model, process, prediction, sigma_data, model_dtype)
    proc = D.process
    if guidance_interval is not None and guidance_scale is None:
        raise ValueError("guidance_interval needs guidance_scale (classifier-free guidance)")
    if not isinstance(noise, Tensor) or noise.ndim < 1 or noise.shape[0] < 1:
        raise ValueError("noise must be a tensor shaped [batch, ...]")
    fitted = solver if isinstance(solver, FittedSolver) else None
    if steps is None:
        steps = fitted.nfe if fitted is not None else 10
    if fitted is not None:
        _check_fitted(fitted, steps, order, spacing, end, t_start, solver_options)
        solver = None
    guided = (classifier is not None or (guidance_scale is not None and float(guidance_scale) != 1.0)
              or _is_guided(D))
    defaults = default_solver(proc, steps if isinstance(steps, int) else None, guided)
    if solver is None and fitted is None and getattr(D, "method", "diffusion") in ("sct", "scd"):
        solver = "consistency"  # a loaded consistency model (pretrained.load_denoiser)
    if (solver is None and fitted is None and classifier is None and isinstance(steps, int)
            and not _grid_options(order, spacing, end, t_start, solver_options)):
        # a fitted solver the model carries (pretrained.load_denoiser) for these calls and this guidance
        fitted = getattr(D, "fitted_solvers", {}).get((steps, guidance_key(guidance_scale)))
    name = solver or defaults["solver"]
    if not isinstance(name, str):
        raise ValueError(f"solver must be a name (one of {', '.join(SOLVERS)}) or a FittedSolver, got {name!r}")
    if name == "consistency":
        return _consistency(D, noise, steps, spacing, cond, class_labels, guidance_scale, order, end, generator,
                            callback, progress, return_nfe, scale_noise, **solver_options)
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; known: {', '.join(SOLVERS)} (and 'consistency')")
    if solver is None and order is not None and order not in SOLVERS[name].orders:
        name = "unipc"  # an order the step-dependent default lacks (dpm++2m): the UniPC family has 1-3
    spec = SOLVERS[name]
    if order is None:
        order = defaults["order"] if solver is None else spec.default_order
    if order is not None and order not in spec.orders:
        raise ValueError(f"solver {name!r} has orders {spec.orders}, not {order}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer (model calls), got {steps!r}")
    if end not in ("zero", "t_min", "denoise"):
        raise ValueError(f"end must be 'zero', 't_min' or 'denoise', got {end!r}")

    cond = dict(cond or {})
    if class_labels is not None:
        cond["class_labels"] = class_labels
    if guidance_scale is not None:
        if uncond is None:
            raise ValueError("guidance_scale needs uncond= (e.g. {'class_labels': null labels})")
        D = CFG(D, guidance_scale, cond, uncond, guidance_interval)
        cond = {}
    if classifier is not None:
        if "class_labels" not in cond and class_labels is None:
            raise ValueError("classifier guidance needs class_labels=")
        D = ClassifierGuidance(D, classifier, cond.get("class_labels", class_labels), classifier_scale)
    if thresholding is not None:
        D = Thresholded(D, thresholding, threshold_ratio, threshold_max)

    if fitted is not None:
        lam_max_noise = float(proc.lambda_(torch.tensor(proc.t_max, dtype=torch.float64)))
        if float(fitted.lambdas[0]) < lam_max_noise - 1e-9:
            raise ValueError(f"the fitted solver starts at lambda = {float(fitted.lambdas[0]):.4g}, noisier than this "
                             f"process reaches (lambda(t_max) = {lam_max_noise:.4g}); fit it on this process")
        t0 = float(proc.t_of_lambda(fitted.lambdas[:1])[0])
        x = noise * (proc.prior_std(t0) if scale_noise else 1.0)
        out = fitted_solve(D, x, fitted.lambdas, fitted.weights, cond=cond, callback=callback, progress=progress)
        return (out, fitted.nfe) if return_nfe else out
    t0 = float(proc.t_max if t_start is None else t_start)
    x = noise * (proc.prior_std(t0) if scale_noise else 1.0)
    common = dict(cond=cond, callback=callback)
    opts = {**spec.fixed, **solver_options}
    if solver is None and spacing is None and not ({"afs", "ifs"} & set(solver_options)):
        # the default's implicit first step (unguided), where the process starts noisy enough for it
        opts["ifs"] = defaults.get("ifs", False) and ifs_reaches(proc, t0, t_end, ifs_lambda(steps))
    if order is not None and spec.default_order is not None:  # solvers with a choice of order take it
        opts["order"] = order
    if spec.fn in (ddim, sde_dpmpp_2m, edm_sampler) and "generator" not in opts:
        opts["generator"] = generator
    grid_end = "t_min" if end in ("t_min", "denoise") else "zero"
    afs = opts.get("afs", False)
    ifs = opts.pop("ifs", False)
    for key, val in (("afs", afs), ("ifs", ifs)):
        if not isinstance(val, bool):
            raise ValueError(f"{key} must be True or False, got {val!r}")
    if afs and ifs:
        raise ValueError("afs and ifs both replace the first model call: choose one")
    if (afs or ifs) and spec.fn is dpm_adaptive:
        raise ValueError(f"{'afs' if afs else 'ifs'} (a first step without its own model call) needs a fixed grid; "
                         "'dpm-solver-adaptive' has none")
    if spec.fn is dpm_adaptive:
        t1 = float(proc.t_min if t_end is None else t_end)
        out = dpm_adaptive(D, x, t0, t1, **common, **opts)
        nfe = D.last_nfe
    else:
        n = steps + afs  # afs: the first call is analytic, so one more step for the same calls
        if spec.fn is edm_sampler and opts.get("heun", True):
            n = (steps + 1 + afs) // 2 if grid_end == "zero" else max(1, (steps + afs) // 2)
        sp = spacing if spacing is not None else spec.spacing
        if ifs:  # the first step's model call is the solver's first output: the solver takes n steps after it
            ts = ifs_grid(proc, n, sp, end=grid_end, t_start=t0, t_end=t_end, rho=rho, lam_first=ifs_lambda(steps))
            x, x0_1 = implicit_first_step(D, x, ts[0], ts[1], cond)
            D_run, ts = FirstOutput(D, x0_1), ts[1:]
        else:
            ts = make_grid(proc, n, sp, end=grid_end, t_start=t0, t_end=t_end, rho=rho)
            D_run = D
        out = spec.fn(D_run, x, ts, **common, progress=progress, **opts)
        nfe = getattr(D_run, "last_nfe", None)
        nfe = nfe if nfe is not None else steps
        if D_run is not D:  # ifs: the solver's first output was the implicit step's call, so the count stands
            record_nfe(D, nfe)
    if end == "denoise":
        t1 = torch.tensor(float(proc.t_min if t_end is None else t_end), dtype=torch.float64)
        out = D(out, t1, **cond) * float(proc.alpha(0.0))
        nfe += 1
    return (out, nfe) if return_nfe else out

