"""A solver fitted to one model: its model-call times and its multistep weights, learned.

Every deterministic multistep solver here (DDIM, DPM-Solver / DPM-Solver++ multistep, UniPC with its
corrector) is, for a given grid, a linear map of the start x_T and the model's x0 outputs D_0..D_{n-1}:
the point of model call k is

    x_k = (sigma_k / sigma_0) x_T + alpha_k (1 - e^-(lambda_k - lambda_0)) sum_{j<k} W_kj D_j,

and the end point (sigma = 0) is x_n = alpha(0) sum_j W_nj D_j. The x_T term and the factor before the
sum are those of the exact solution when D is constant, so each row of W sums to 1 for a consistent
solver (UniPC's rows, read off by `solver_weights`, do to 1e-15). A `FittedSolver` holds the n call
log-SNRs lambda_0 < ... < lambda_{n-1} and the weights W ([n + 1, n], strictly lower triangular);
`fitting.fit_solver` learns both on a calibration batch of the model itself, against the end points
of the model's own accurate solve, starting from the default solver (as "Learning to Discretize
Denoising Diffusion ODEs", Tong et al. 2024, learns the grid, and S4S, Frankel et al. 2025, the
weights too). The same lambdas and weights serve every process (the update only sees alpha, sigma).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .common import Model, record_nfe, steps_iter

__all__ = ["FittedSolver", "fitted_solve", "guidance_key", "load_fitted_solvers", "solver_weights"]

F64 = torch.float64


def guidance_key(scale) -> float | None:
    """A guidance scale as fitted solvers are keyed by it: None when unguided (None, or scale 1)."""
    return None if scale is None or float(scale) == 1.0 else float(scale)


@dataclass
class FittedSolver:
    """Model-call log-SNRs `lambdas` [n] (increasing, lambdas[0] the start) and weights [n + 1, n]."""

    lambdas: Tensor
    weights: Tensor
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        lam = torch.as_tensor(self.lambdas, dtype=F64).flatten()
        W = torch.as_tensor(self.weights, dtype=F64)
        n = lam.numel()
        if n < 1:
            raise ValueError("a fitted solver needs at least one model call")
        if not torch.isfinite(lam).all() or not torch.all(lam[1:] > lam[:-1]):
            raise ValueError("the fitted solver's lambdas must be finite and strictly increasing")
        if W.shape != (n + 1, n):
            raise ValueError(f"weights must have shape {(n + 1, n)} for {n} model calls, got {tuple(W.shape)}")
        if not torch.isfinite(W).all():
            raise ValueError("the fitted solver's weights must be finite")
        if torch.triu(W, 0).abs().max() > 0:
            raise ValueError("weights must be strictly lower triangular (call k uses only D_0..D_{k-1})")
        self.lambdas, self.weights = lam, W

    @property
    def nfe(self) -> int:
        return self.lambdas.numel()

    def to_dict(self) -> dict:
        return {"kind": "fewstep-fitted-solver", "lambdas": self.lambdas.tolist(),
                "weights": self.weights.tolist(), "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "FittedSolver":
        if not isinstance(d, dict) or d.get("kind") != "fewstep-fitted-solver":
            raise ValueError("not a fewstep fitted solver (expected kind 'fewstep-fitted-solver')")
        return cls(torch.tensor(d["lambdas"], dtype=F64), torch.tensor(d["weights"], dtype=F64), d.get("meta", {}))

    def save(self, path) -> Path:
        """Write JSON atomically."""
        from ..atomic import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> "FittedSolver":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no fitted solver at {path}")
        return cls.from_dict(json.loads(path.read_text()))

    def __repr__(self):
        return f"FittedSolver({self.nfe} calls, lambdas {[round(v, 3) for v in self.lambdas.tolist()]})"


def load_fitted_solvers(folder) -> list[FittedSolver]:
    """The fitted solvers saved in a folder (a run directory's solvers/), in file-name order; none when
    there is no such folder."""
    folder = Path(folder)
    return [FittedSolver.load(f) for f in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def fitted_solve(denoiser, x: Tensor, lambdas: Tensor, weights: Tensor, *, cond: dict | None = None,
                 callback=None, progress: bool = False) -> Tensor:
    """Runs the fitted multistep map from x (the state at lambdas[0]) to sigma = 0 with n model calls.

    Differentiable in x, lambdas and weights (what `fitting.fit_solver` optimises); `FittedSolver`
    checks the shapes, this function does not.
    """
    process = denoiser.process
    model = Model(denoiser, process, cond)
    n = lambdas.numel()
    ts = process.t_of_lambda(lambdas)
    alpha, sigma = process.alpha_sigma(ts)
    x_T, ds = x, []
    for k in steps_iter(n, progress, f"fitted solver ({n} calls)"):
        if k > 0:
            scale = (alpha[k] * -torch.expm1(lambdas[0] - lambdas[k])).to(x_T.dtype)
            mix = sum(weights[k, j].to(x_T.dtype) * ds[j] for j in range(k))
            x = (sigma[k] / sigma[0]).to(x_T.dtype) * x_T + scale * mix
        ds.append(model.x0(x, ts[k]))
        if callback is not None:
            callback(k, ts[k], x, ds[-1])
    a_end = process.alpha(torch.zeros((), dtype=F64)).to(x_T.dtype)
    out = a_end * sum(weights[n, j].to(x_T.dtype) * ds[j] for j in range(n))
    record_nfe(denoiser, model)
    return out


class _Probe:
    """A stand-in denoiser that answers call k with the unit vector e_k and records where it was called."""

    def __init__(self, process, n_max: int):
        self.process, self.n_max = process, n_max
        self.ts, self.xs = [], []

    def __call__(self, x, t, **cond):
        k = len(self.ts)
        if k >= self.n_max:
            raise ValueError("the solver made more model calls than its grid has steps")
        self.ts.append(float(t))
        self.xs.append(x.detach().clone())
        e = torch.zeros_like(x)
        e[:, k] = 1.0
        return e


def solver_weights(fn, process, ts: Tensor, **opts) -> FittedSolver:
    """The (lambdas, W) of a deterministic multistep solver `fn` (e.g. `unipc`) on the grid `ts` (ending at
    t = 0): read off by running it on a probe denoiser whose outputs are unit vectors. Refuses solvers that
    are not of the form above (e.g. ones that use x_T other than through sigma_k / sigma_0)."""
    ts = torch.as_tensor(ts, dtype=F64).flatten()
    if ts.numel() < 2 or float(ts[-1]) != 0.0:
        raise ValueError("solver_weights needs a grid that ends at t = 0 (sigma = 0)")
    n = ts.numel() - 1
    probe = _Probe(process, n)
    x = torch.zeros(2, n, dtype=F64)
    x[1] = 1.0  # row 1 starts at x_T = 1: the difference of the rows is the x_T coefficient
    out = fn(probe, x, ts, **opts)
    if len(probe.ts) != n:
        raise ValueError(f"the solver made {len(probe.ts)} model calls on a grid of {n} steps")
    t_calls = torch.tensor(probe.ts, dtype=F64)
    lam = process.lambda_(t_calls)
    a, s = process.alpha_sigma(t_calls)
    W = torch.zeros(n + 1, n, dtype=F64)
    for k in range(n + 1):
        row = probe.xs[k] if k < n else out
        c_x = row[1] - row[0]
        want = float(s[k] / s[0]) if k < n else 0.0
        if (c_x - want).abs().max() > 1e-9 * max(1.0, abs(want)):
            raise ValueError("this solver is not a multistep map of the fitted form (its x_T coefficient is "
                             "not sigma_k / sigma_0)")
        if k == 0:
            continue
        scale = 1.0 if k == n else float(a[k] * -math.expm1(float(lam[0] - lam[k])))
        a_end = float(process.alpha(torch.zeros((), dtype=F64))) if k == n else 1.0
        W[k] = row[0] / (scale * a_end)
    return FittedSolver(lam, torch.tril(W, -1))
