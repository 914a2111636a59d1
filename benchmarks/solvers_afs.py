"""The analytical first step (afs=True) across oracle mixtures: when does it pay?

`sample(..., afs=True)` answers the first model call with E[x0 | x_T] of zero-mean Gaussian data
(solvers/common.py `analytic_x0`) and spends the saved call on one more step. This script measures,
on the benchmark's two mixtures, its held-out mixtures and a copy of the sharp mixture shifted to
mean -0.5 (as images in [-1, 1] often are), the exact-oracle RMSE ratio to the default setting
(`sample()` without solver: UniPC-3 on vp-power, bh1 at <= 5 calls, bh2 from 6), without its implicit
first step (ifs=False: the default when afs was measured), of: the default + afs, UniPC-3 bh1, and bh1
+ afs. Below 1 = better. benchmarks/solvers_ifs.py measures the implicit first step the same way.

    python benchmarks/solvers_afs.py [--samples 500] [--out benchmarks/results/afs]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from solvers import HELD_OUT, MIX_SEED, MIXTURES, NOISE_SEED, Problem, geomean, write_md  # noqa: E402

from fewstep import sample  # noqa: E402
from fewstep.processes import VPDiscrete  # noqa: E402
from fewstep.testing import GaussianMixture  # noqa: E402

NFES = (5, 6, 8, 10, 15, 20)
VARIANTS = (("default + afs", "unipc", True), ("bh1", "unipc-bh1", False), ("bh1 + afs", "unipc-bh1", True))


def oracles() -> dict:
    out = {name: GaussianMixture.random(d=16, K=8, std_range=sr, seed=MIX_SEED) for name, sr in MIXTURES.items()}
    out.update({name: GaussianMixture.random(K=8, **kw) for name, kw in HELD_OUT.items()})
    sharp = out["sharp"]
    out["sharp, mean -0.5"] = GaussianMixture(sharp.means - 0.5, sharp.var.sqrt(), sharp.weights)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "afs"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    p = VPDiscrete.linear()
    ratios = {}  # (variant, oracle, nfe) -> RMSE / default's RMSE
    mixtures = oracles()
    for name, g in mixtures.items():
        pb = Problem.make(name, g, p, args.samples, NOISE_SEED)
        for nfe in NFES:
            base = pb.score(sample(g.denoiser(p), pb.noise, steps=nfe, ifs=False))["rmse"]  # the default before ifs
            for label, solver, afs in VARIANTS:
                out = sample(g.denoiser(p), pb.noise, solver=solver, order=3, steps=nfe, afs=afs)
                ratios[(label, name, nfe)] = pb.score(out)["rmse"] / base
        print(f"[{name}: {time.time() - t0:.0f}s]", flush=True)
    names = list(mixtures)
    lines = ["# Analytical first step (benchmarks/solvers_afs.py)", "",
             f"Exact-oracle RMSE ratio to the default setting (`sample()` without solver: UniPC-3 on vp-power, bh1 at <= 5 calls, bh2 from 6; afs off, ifs=False) at the same number of "
             f"model calls; linear-beta VP, {args.samples} samples (noise seed {NOISE_SEED}); mixtures: the benchmark's "
             f"sharp and smooth ones, its held-out ones ({', '.join(HELD_OUT)}) and the sharp one shifted to mean "
             f"-0.5. Below 1.00 = better than the default. Command: `python benchmarks/solvers_afs.py "
             f"--samples {args.samples}`", ""]
    for label, _, _ in VARIANTS:
        lines += [f"## {label}", "", "| mixture | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
                  "|---|" + "---:|" * len(NFES)]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{ratios[(label, name, n)]:.2f}" for n in NFES) + " |")
        centred = [name for name in names if "mean" not in name]
        geo = [geomean([ratios[(label, m, n)] for m in centred]) for n in NFES]
        lines += ["| geometric mean (centred mixtures) | " + " | ".join(f"{v:.2f}" for v in geo) + " |", ""]
    path = write_md(args.out, "solvers_afs.md", lines)
    print(f"wrote {path} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
