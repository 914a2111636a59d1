"""Solver ideas tried against the default and not adopted (kept so that the numbers can be reproduced).

On the benchmark's oracle mixtures (benchmarks/solvers.py: sharp, smooth and the held-out ones),
linear-beta VP, exact-oracle RMSE ratio to the default (`sample()` without solver; ifs=False, the default
before the implicit first step) at 5-10 calls:

* iPNDM (Zhou et al. 2024, "Fast ODE-based sampling for diffusion models in around 5 steps"):
  Adams-Bashforth on eps in the VE coordinates x / alpha against sigma / alpha, with the fixed-step
  coefficients of orders 1-4 (warm-up by lower orders), optionally after the analytical first step;
* exponential Adams predictor-corrector in the data form with the model output interpolated by a
  polynomial in tau^p (tau = time of the reference linear-beta VP, the variable the default grid is
  uniform in) instead of lambda: predictor on the last 3 outputs, corrector with the new one (no extra
  call), weights by Gauss-Legendre quadrature of int e^lambda L_j(tau(lambda)^p) dlambda.

    python benchmarks/solvers_ideas.py [--samples 1000] [--out benchmarks/results/ideas]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from solvers import NOISE_SEED, Problem, geomean, md_table, write_md  # noqa: E402
from solvers_afs import oracles  # noqa: E402

from fewstep import sample  # noqa: E402
from fewstep.processes import VPDiscrete  # noqa: E402
from fewstep.solvers.common import analytic_x0  # noqa: E402
from fewstep.spacing import _vp_tau, make_grid  # noqa: E402

NFES = (5, 6, 8, 10)
AB = ([1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24])
GL_X, GL_W = np.polynomial.legendre.leggauss(24)


def ipndm(D, noise, ts, order: int = 3, afs: bool = False, sigma_data: float = 0.5):
    """iPNDM with fixed Adams-Bashforth coefficients on eps = (y - D) / s in y = x / alpha, s = sigma / alpha."""
    p = D.process
    a, s = (v.tolist() for v in p.alpha_sigma(torch.as_tensor(ts, dtype=torch.float64)))
    sv = [si / ai for si, ai in zip(s, a)]
    y = noise * p.prior_std() / a[0]
    hist = []
    for i in range(len(sv) - 1):
        x0 = analytic_x0(y * a[0], ts[0], p, sigma_data) if afs and i == 0 else D(y * a[i], ts[i])
        hist = ([(y - x0) / sv[i]] + hist)[:order]
        y = y + (sv[i + 1] - sv[i]) * sum(c * e for c, e in zip(AB[len(hist) - 1], hist))
    return y * a[-1]


def _weights(nodes, l0: float, l1: float, v) -> list:
    """int_{l0}^{l1} e^l L_j(v(l)) dl for the Lagrange basis L_j on v(nodes)."""
    xs = 0.5 * (l1 - l0) * GL_X + 0.5 * (l1 + l0)
    ws = 0.5 * (l1 - l0) * GL_W * np.exp(xs)
    vx, vn = v(xs), v(np.asarray(nodes, dtype=np.float64))
    out = []
    for j in range(len(nodes)):
        L = np.prod([(vx - vn[m]) / (vn[j] - vn[m]) for m in range(len(nodes)) if m != j], axis=0)
        out.append(float((ws * L).sum()))
    return out


def tau_power(p: float):
    """v(lambda) = tau(lambda)^p, tau the time of the reference linear-beta VP (fewstep.spacing)."""
    return lambda ls: _vp_tau(torch.as_tensor(ls)).numpy() ** p


def exp_adams(D, noise, ts, v, order: int = 3):
    """Data-form exponential Adams PC, model output a polynomial in v(lambda); last step to sigma = 0."""
    proc = D.process
    ts = torch.as_tensor(ts, dtype=torch.float64)
    a, s = (v.tolist() for v in proc.alpha_sigma(ts))
    lam = [math.log(ai / si) if si > 0 else math.inf for ai, si in zip(a, s)]
    x = noise * proc.prior_std()
    hist, prev = [], None
    for i in range(len(ts) - 1):
        x0 = D(x, ts[i])
        if prev is not None:  # corrector with the new output (no extra call)
            x_s, i_s, used = prev
            w = _weights([lam_j for lam_j, _ in used] + [lam[i]], lam[i_s], lam[i], v)
            x = s[i] * (x_s / s[i_s] + sum(wj * m for wj, m in zip(w, [m for _, m in used] + [x0])))
        hist = ([(lam[i], x0)] + hist)[:order]
        if s[i + 1] == 0:
            return a[i + 1] * x0
        used = hist[:min(len(hist), len(ts) - 1 - i)]
        w = _weights([lam_j for lam_j, _ in used], lam[i], lam[i + 1], v)
        prev = (x, i, used)
        x = s[i + 1] * (x / s[i] + sum(wj * m for wj, (_, m) in zip(w, used)))
    return x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ideas"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    proc = VPDiscrete.linear()
    mixtures = {name: g for name, g in oracles().items() if "mean" not in name}  # the centred ones
    ideas = {
        "iPNDM-3 (fixed AB), vp-power grid": lambda D, z, n: ipndm(D, z, make_grid(proc, n, "vp-power"), 3),
        "iPNDM-3 + afs, vp-power grid": lambda D, z, n: ipndm(D, z, make_grid(proc, n + 1, "vp-power"), 3, True),
        "iPNDM-4 + afs, karras grid": lambda D, z, n: ipndm(D, z, make_grid(proc, n + 1, "karras"), 4, True),
    }
    for name, v in (("lambda (control, close to UniPC bh2)", lambda ls: np.asarray(ls, dtype=np.float64)),
                    ("tau^0.5", tau_power(0.5)), ("tau", tau_power(1.0))):
        ideas[f"exp. Adams PC-3 in {name}"] = (lambda v: lambda D, z, n: exp_adams(
            D, z, make_grid(proc, n, "vp-power"), v))(v)
    ratios = {}
    for name, g in mixtures.items():
        pb = Problem.make(name, g, proc, args.samples, NOISE_SEED)
        for n in NFES:
            base = pb.score(sample(g.denoiser(proc), pb.noise, steps=n, ifs=False))["rmse"]  # the default before ifs
            for label, fn in ideas.items():
                D = g.denoiser(proc)
                out = fn(D, pb.noise, n)
                assert D.calls == n, (label, D.calls, n)
                ratios[(label, name, n)] = pb.score(out)["rmse"] / base
        print(f"[{name}: {time.time() - t0:.0f}s]", flush=True)
    lines = ["# Solver ideas not adopted (benchmarks/solvers_ideas.py)", "",
             f"Exact-oracle RMSE ratio to fewstep's default (`sample()` without solver, ifs=False) at the same number of model "
             f"calls; linear-beta VP, {args.samples} samples (noise seed {NOISE_SEED}); the benchmark's sharp and "
             f"smooth mixtures and its held-out ones. Below 1 = better than the default. Command: "
             f"`python benchmarks/solvers_ideas.py --samples {args.samples}`", ""]
    for label in ideas:
        rows = [[name] + [f"{ratios[(label, name, n)]:.2f}" for n in NFES] for name in mixtures]
        rows.append(["geometric mean"] + [f"{geomean([ratios[(label, m, n)] for m in mixtures]):.2f}" for n in NFES])
        lines += [f"## {label}", ""] + md_table(["mixture"] + [f"NFE {n}" for n in NFES], rows) + [""]
    path = write_md(args.out, "solvers_ideas.md", lines)
    print(f"wrote {path} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
