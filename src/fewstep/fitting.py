"""`fit_solver()`: learn a few-call solver's model-call times and multistep weights on the model itself.

Starting from the default solver for `steps` calls (UniPC-3 on the vp-power grid, read off as a linear
multistep map by `solvers.fitted.solver_weights`), the n - 1 free call log-SNRs and the weights W
(solvers/fitted.py) are fitted by full-batch L-BFGS to minimise the mean squared distance between the
fitted solver's end points and the model's own accurate end points (`reference`, by default UniPC-3
with `reference_steps` calls) from calibration noise, in the spirit of LD3 (Tong et al. 2024, learned
time steps) and S4S (Frankel et al. 2025, learned solver coefficients). A held-out part of the noise
picks the iterate; when no iterate beats the starting solver there, the starting solver is returned,
so fitting never makes a solver worse on the held-out noise.

Cost: `reference_steps` calls per calibration sample once, then per L-BFGS evaluation one forward and
backward pass of `steps` calls over the training part (in chunks of `batch_size`).
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from .progress import progress as progress_bar
from .sample import SOLVERS, _as_denoiser, _is_guided, default_solver, sample
from .solvers.fitted import FittedSolver, fitted_solve, solver_weights
from .spacing import make_grid

__all__ = ["fit_solver"]

F64 = torch.float64


def _lambdas(lam0: float, span: float, u: Tensor) -> Tensor:
    """n increasing lambdas from lam0 inside (lam0, lam0 + span): increments span * softmax(u) (u has n
    entries; the last increment is the unused rest, so the last call stays below lam0 + span)."""
    inc = span * torch.softmax(u, 0)
    return torch.cat([torch.full((1,), lam0, dtype=F64), lam0 + torch.cumsum(inc, 0)[:-1]])


def fit_solver(model, noise: Tensor, steps: int, *, reference: Tensor | None = None, reference_steps: int = 100,
               val_fraction: float = 0.25, max_iter: int = 100, batch_size: int = 1024, cond: dict | None = None,
               history: int | None = None, init: dict | None = None, process=None, prediction: str = "eps",
               sigma_data: float = 0.5, seed: int = 0, progress: bool = True) -> FittedSolver:
    """Fit a `steps`-call solver to `model` on calibration `noise` ([B, ...], N(0, I) like `sample`'s).

    reference: the end points of `noise` under an accurate solve of the same model (default: UniPC-3
    with `reference_steps` calls, computed here); val_fraction of the noise (at least 1 sample) is held
    out to pick the iterate; max_iter L-BFGS iterations over the rest, in chunks of batch_size samples;
    cond: conditioning passed to every call, tensors with a batch dimension B indexed with the noise
    (e.g. {"class_labels": y}); for a guided solver pass `guidance.LabelCFG(model, scale, null_label)`
    as the model (its labels come with each call, so chunks work); history: learn only the weights of
    the last `history` model outputs in each row (the others keep the starting solver's; None: all);
    init: the starting setting {"solver", "order", "spacing"} (default: `default_solver(process, steps,
    guided)`, guided when the model is wrapped in guidance, without its implicit first step: a fitted
    solver's first call is at its start); process / prediction / sigma_data wrap a
    raw network as `sample` does. Returns a `FittedSolver` (`sample(model, noise, solver=fitted)`)
    with its train / held-out RMSE before and after in `.meta`.
    """
    if not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2 (model calls), got {steps!r}")
    if not isinstance(noise, Tensor) or noise.ndim < 2 or noise.shape[0] < 2:
        raise ValueError("noise must be a tensor shaped [batch >= 2, ...]")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if not (isinstance(max_iter, int) and max_iter >= 0):
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    if history is not None and not (isinstance(history, int) and history >= 1):
        raise ValueError(f"history must be a positive integer or None, got {history!r}")
    D = _as_denoiser(model, process, prediction, sigma_data, None)
    proc = D.process
    cond = dict(cond or {})

    # the starting solver: the default for `steps` calls, as a multistep map
    spec = dict(init) if init is not None else default_solver(proc, steps, _is_guided(D))
    if spec.get("solver") not in SOLVERS:
        raise ValueError(f"init must name a solver of SOLVERS, got {spec.get('solver')!r}")
    solver = SOLVERS[spec["solver"]]
    spec.setdefault("order", solver.default_order)
    spec.setdefault("spacing", solver.spacing)
    opts = {**solver.fixed, **({"order": spec["order"]} if spec["order"] is not None else {})}
    start = solver_weights(solver.fn, proc, make_grid(proc, steps, spec["spacing"]), **opts)

    given = reference is not None
    if reference is None:
        with torch.no_grad():
            reference = sample(D, noise, solver="unipc", order=3, steps=reference_steps, cond=cond,
                               progress=progress)
    if reference.shape != noise.shape:
        raise ValueError(f"reference has shape {tuple(reference.shape)}, noise {tuple(noise.shape)}")

    lam_start = float(start.lambdas[0])
    lam_stop = float(proc.lambda_(torch.tensor(proc.t_min, dtype=F64)))
    span = lam_stop - lam_start
    inc = torch.diff(torch.cat([start.lambdas, torch.tensor([lam_stop], dtype=F64)]))
    u = torch.log(inc.clamp_min(1e-6 * span) / span).clone().requires_grad_(True)
    mask = torch.tril(torch.ones_like(start.weights), -1)
    if history is not None:
        mask = mask - torch.tril(torch.ones_like(mask), -1 - history)
    W = start.weights.clone().requires_grad_(True)

    x_T = noise * proc.prior_std(float(proc.t_of_lambda(torch.tensor(lam_start, dtype=F64))))
    B = noise.shape[0]
    n_val = max(1, int(round(B * val_fraction)))
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val], perm[n_val:]

    def params():
        return _lambdas(lam_start, span, u), start.weights + (W - start.weights) * mask

    def mse(idx, of, grad: bool) -> float:
        """Mean squared error to the reference on the samples idx; of() gives (lambdas, weights), built
        per chunk so that each chunk's backward pass has its own graph."""
        total = 0.0
        for c in range(0, idx.numel(), batch_size):
            i = idx[c:c + batch_size]
            with torch.set_grad_enabled(grad):
                lam, weights = of()
                out = fitted_solve(D, x_T[i], lam, weights, cond=_take(cond, i, B))
                loss = ((out - reference[i]) ** 2).sum() / (idx.numel() * out[0].numel())
                if grad:
                    loss.backward()
            total += float(loss.detach())
        return total

    def rmse(idx, lam, weights) -> float:
        return math.sqrt(mse(idx, lambda: (lam, weights), False))

    train0, val0 = rmse(train_idx, start.lambdas, start.weights), rmse(val_idx, start.lambdas, start.weights)
    opt = torch.optim.LBFGS([u, W], lr=1.0, max_iter=1, max_eval=25, history_size=50,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        opt.zero_grad()
        loss = mse(train_idx, params, True)
        if not math.isfinite(loss):
            raise FloatingPointError("the fitted solver diverged (non-finite loss)")
        return torch.tensor(loss, dtype=F64)

    best = (val0, start.lambdas.clone(), start.weights.clone(), 0)
    t0 = time.time()
    bar = progress_bar(range(max_iter), total=max_iter, desc=f"fitting a {steps}-call solver", enabled=progress)
    for it in bar:
        opt.step(closure)
        with torch.no_grad():
            lam, weights = params()
            val = rmse(val_idx, lam, weights)
        if val < best[0]:
            best = (val, lam.detach().clone(), weights.detach().clone(), it + 1)
    val, lam, weights, best_it = best
    with torch.no_grad():
        train = rmse(train_idx, lam, weights)
    meta = {"init": f"{spec['solver']}-{spec['order']} {spec['spacing']}", "steps": steps,
            "process": type(proc).__name__, "n_train": int(train_idx.numel()), "n_val": n_val,
            "train_rmse_init": train0, "val_rmse_init": val0, "train_rmse": train, "val_rmse": val,
            "iterations": max_iter, "best_iteration": best_it, "seconds": round(time.time() - t0, 1),
            "reference": "given" if given else f"unipc-3, {reference_steps} calls"}
    return FittedSolver(lam, weights, meta)


def _take(cond: dict, idx: Tensor, B: int) -> dict:
    """The conditioning of the samples idx (tensors with a batch dimension B are indexed)."""
    return {k: (v[idx] if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == B else v) for k, v in cond.items()}
