"""The implicit first step (ifs=True): where it pays, where its step should end, and under guidance.

`sample(..., ifs=True)` takes the first step from t_max with the model output at its end (one call
at lambda_1, which is also the solver's first output), so the call at t_max is saved and the calls
follow on the solver's grid from lambda_1 (solvers/implicit_first_step.py). This script measures the
exact-oracle RMSE ratio of the default solver with ifs to the same solver without it (below 1 =
better), on the benchmark's two mixtures, its held-out ones and the sharp one shifted to mean -0.5:

1. against the number of model calls (4-25), the default's end lambda_1 = ifs_lambda(calls), and
   where the default's error fails to fall by one more call, with and without ifs;
2. the end lambda_1 of the implicit step (-4.5..-1.5) at 5-20 calls;
3. under every other process (sharp / smooth mixtures);
4. under classifier-free guidance (class-conditional mixtures of benchmarks/solvers_guided.py);
5. (--part digits) on real data: FD of the shipped digits teacher's default with and without ifs.

    python benchmarks/solvers_ifs.py [--samples 1000] [--out benchmarks/results/ifs]   # ~4 min, one core
    python benchmarks/solvers_ifs.py --part digits                                     # ~8 min
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from solvers import MIX_SEED, MIXTURES, NOISE_SEED, Problem, geomean, md_table, write_md  # noqa: E402
from solvers_afs import oracles  # noqa: E402
from solvers_guided import NUM_CLASSES, Guided  # noqa: E402

from fewstep import sample  # noqa: E402
from fewstep.commands.common import pyplot  # noqa: E402
from fewstep.processes import EDM, Flow, TrigFlow, VPCosine, VPDiscrete, VPLinear  # noqa: E402
from fewstep.sample import default_solver  # noqa: E402
from fewstep.solvers.implicit_first_step import ifs_grid, ifs_lambda  # noqa: E402
from fewstep.testing import GaussianMixture  # noqa: E402

NFES = tuple(range(4, 26))
SWEEP_NFES = (5, 6, 8, 10, 12, 15, 20)  # a subset of NFES: part 2 reuses part 1's errors without ifs
LAMBDAS = (-4.5, -4.0, -3.5, -3.0, -2.5, -2.0, -1.5)
SMALL_NFES = (5, 6, 8, 10)
PROCESS_NFES = (5, 6, 8, 10, 15, 20, 25)
GUIDANCE = (1.5, 3.0, 7.5)


def solver_of(p, nfe: int) -> dict:
    """The unguided default's solver and order for nfe calls (without its ifs flag)."""
    d = default_solver(p, nfe)
    return {"solver": d["solver"], "order": d["order"]}


def rmse(pb: Problem, p, nfe: int, **opts) -> float:
    out, used = sample(pb.g.denoiser(p), pb.noise, steps=nfe, return_nfe=True, **opts)
    assert used == nfe, (opts, used, nfe)
    return pb.score(out)["rmse"]


def digits(out: str) -> None:
    """FD (3 noise seeds x 2000 samples) of the shipped digits teacher's default solver with and without
    ifs, its fitted solvers removed, at 5-10 calls."""
    from fewstep.commands.evaluate import extractor_for, measure, reference_features
    from fewstep.pretrained import load_denoiser

    t0 = time.time()
    D = load_denoiser("digits-teacher")
    D.fitted_solvers = {}  # the fixed default, not the 5-call fit the model ships
    ext = extractor_for("classifier", D.config["dataset"])
    real, _ = reference_features(ext, D.config["dataset"], D.config.get("data_root"))
    seeds = (0, 1, 2)

    def fd(steps, **opts):
        per = [measure(D, ext, real, 2000, steps=steps, seed=s, **opts)[1]["fd"] for s in seeds]
        return f"{sum(per) / len(per):.3f} [{min(per):.3f}, {max(per):.3f}]"

    ref = fd(20, solver="dpm++2m")
    rows = []
    for nfe in SMALL_NFES:
        rows.append([nfe, fd(nfe), fd(nfe, ifs=False)])
        print(" | ".join(map(str, rows[-1])), f"[{time.time() - t0:.0f}s]", flush=True)
    lines = ["# Implicit first step on the digits teacher (benchmarks/solvers_ifs.py --part digits)", "",
             "FD (classifier features, 3 seeds x 2000 samples, mean [min, max]) of the shipped `digits-teacher` "
             "(TrigFlow, lambda(t_max) = -4.38) sampled with the default solver, its fitted solvers removed, with "
             f"and without the implicit first step. Teacher with DPM-Solver++(2M) at 20 calls: {ref}. "
             f"({time.time() - t0:.0f} s on one core.)", ""]
    lines += md_table(["model calls", "default (with ifs)", "default without ifs"], rows)
    write_md(out, "solvers_ifs_digits.md", lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("oracle", "digits"), default="oracle")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--guided-samples", type=int, default=500)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "ifs"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.part == "digits":
        return digits(args.out)
    t0 = time.time()
    p = VPDiscrete.linear()
    mixtures = oracles()
    problems = {name: Problem.make(name, g, p, args.samples, NOISE_SEED) for name, g in mixtures.items()}
    names = list(problems)
    lines = ["# Implicit first step (benchmarks/solvers_ifs.py)", "",
             f"Exact-oracle RMSE ratio of a solver with `ifs=True` to the same solver without it, at the same number "
             f"of model calls (below 1.00 = ifs better); linear-beta VP unless stated, {args.samples} samples (noise "
             f"seed {NOISE_SEED}); mixtures: the benchmark's sharp and smooth ones, its held-out ones and the sharp "
             f"one shifted to mean -0.5. Solver: the unguided default's (UniPC-3, bh1 at <= 5 calls, bh2 from 6, "
             f"vp-power grid). The default uses ifs, ending the implicit step at lambda = ifs_lambda(calls): "
             f"{ifs_lambda(10)} up to 10 calls, {ifs_lambda(14)} up to 14, {ifs_lambda(15)} beyond. "
             f"Command: `python benchmarks/solvers_ifs.py --samples {args.samples}`", ""]

    # 1. against the number of calls
    ratios, rises, plain = {}, {}, {}  # plain: the error without ifs, the baseline of parts 1 and 2
    for name, pb in problems.items():
        errs = {True: [], False: []}
        for nfe in NFES:
            s = solver_of(p, nfe)
            for ifs in (True, False):
                errs[ifs].append(rmse(pb, p, nfe, ifs=ifs, **s))
            plain[(name, nfe)] = errs[False][-1]
            ratios[(name, nfe)] = errs[True][-1] / plain[(name, nfe)]
        for ifs, e in errs.items():  # n -> n + 1 calls where the error does not fall
            rises[(name, ifs)] = [f"{n}->{n + 1} ({b / a:.2f}x)" for n, a, b in zip(NFES, e, e[1:]) if b >= a]
        print(f"[calls: {name} {time.time() - t0:.0f}s]", flush=True)
    rows = [[name] + [f"{ratios[(name, n)]:.2f}" for n in NFES] for name in names]
    rows.append(["geometric mean"] + [f"**{geomean([ratios[(m, n)] for m in names]):.2f}**" for n in NFES])
    rows.append(["max"] + [f"{max(ratios[(m, n)] for m in names):.2f}" for n in NFES])
    lines += ["## 1. Against the number of model calls (the default's ifs, ending at ifs_lambda(calls))", ""]
    lines += md_table(["mixture"] + [f"{n}" for n in NFES], rows) + [""]
    lines += ["Where the default's error does not fall from n to n + 1 calls (ratio of the two errors):", ""]
    lines += md_table(["mixture", "with ifs (the default)", "without ifs"],
                      [[m, ", ".join(rises[(m, True)]) or "-", ", ".join(rises[(m, False)]) or "-"] for m in names])
    lines += [""]

    # 2. where the implicit step ends
    lines += ["## 2. Where the implicit step ends (lambda_1; then the vp-power grid of NFE steps from there)", "",
              "The default: -2.5 up to 10 calls, -3.5 up to 14, -4.5 beyond (`ifs_lambda`).",
              "Geometric mean over the mixtures (max in brackets).", ""]
    rows = []
    for lam in LAMBDAS:
        cells = []
        for nfe in SWEEP_NFES:
            s = solver_of(p, nfe)
            r = [rmse(pb, p, nfe, ifs=True, spacing=ifs_grid(p, nfe, "vp-power", lam_first=lam), **s)
                 / plain[(name, nfe)] for name, pb in problems.items()]
            cells.append(f"{geomean(r):.2f} ({max(r):.2f})")
        rows.append([f"{lam}"] + cells)
        print(f"[lambda_1 {lam}: {time.time() - t0:.0f}s]", flush=True)
    lines += md_table(["lambda_1"] + [f"NFE {n}" for n in SWEEP_NFES], rows) + [""]

    # 3. other processes
    procs = {"vp-discrete cosine": VPDiscrete.cosine(), "vp-linear (continuous)": VPLinear(),
             "vp-cosine (continuous)": VPCosine(), "edm": EDM(), "flow": Flow(), "trigflow": TrigFlow()}
    rows = []
    for pname, proc in procs.items():
        for mix in MIXTURES:
            pb = Problem.make(mix, mixtures[mix], proc, args.samples, NOISE_SEED)
            cells = []
            for nfe in PROCESS_NFES:  # the default (ifs where the process reaches ifs_lambda) / without ifs
                cells.append(f"{rmse(pb, proc, nfe) / rmse(pb, proc, nfe, ifs=False):.2f}")
            rows.append([pname, f"{float(proc.lambda_(proc.t_max)):.2f}", mix] + cells)
        print(f"[process {pname}: {time.time() - t0:.0f}s]", flush=True)
    lines += ["## 3. Other processes: the default / the default without ifs", "",
              "The default takes ifs where the process starts 0.5 below ifs_lambda(calls) in lambda "
              "(`ifs_reaches`): EDM, flow and TrigFlow (lambda(t_max) = -4.38) up to 14 calls.", ""]
    lines += md_table(["process", "lambda(t_max)", "mixture"] + [f"NFE {n}" for n in PROCESS_NFES], rows) + [""]

    # 4. classifier-free guidance: the guided default with and without ifs
    rows = []
    for mix, sr in MIXTURES.items():
        g = GaussianMixture.random(d=16, K=8, std_range=sr, seed=MIX_SEED, num_classes=NUM_CLASSES)
        for scale in GUIDANCE:
            G = Guided(g, p, args.guided_samples, scale)
            cells = []
            for nfe in SMALL_NFES:
                d = default_solver(p, nfe, guided=True)
                cells.append(f"{G.fewstep({**d, 'ifs': True}, nfe) / G.fewstep(d, nfe):.2f}")
            rows.append([mix, f"{scale}"] + cells)
        print(f"[guided {mix}: {time.time() - t0:.0f}s]", flush=True)
    lines += ["## 4. Under classifier-free guidance (the guided default's solver, with / without ifs)", "",
              f"Class-conditional mixtures of benchmarks/solvers_guided.py, {args.guided_samples} samples, RMSE to the "
              "guided ODE's 1000-step end point.", ""]
    lines += md_table(["mixture", "CFG scale"] + [f"NFE {n}" for n in SMALL_NFES], rows) + [""]

    path = write_md(args.out, "solvers_ifs.md", lines)
    plt = pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in names:
            ax.plot(NFES, [ratios[(name, n)] for n in NFES], marker="o", ms=3, lw=1, alpha=0.7, label=name)
        ax.plot(NFES, [geomean([ratios[(m, n)] for m in names]) for n in NFES], color="k", lw=2.5, label="geometric mean")
        ax.axhline(1.0, color="gray", ls="--", lw=1)
        for n in (10.5, 14.5):
            ax.axvline(n, color="r", ls=":", lw=1)
        ax.set_xlabel("model calls (NFE)")
        ax.set_ylabel("RMSE with ifs / without")
        ax.set_title("implicit first step: RMSE ratio to the same solver without it\n(its step ends at "
                     "lambda = -2.5 / -3.5 / -4.5, switching at the dotted lines)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "solvers_ifs.png"), dpi=120)
        plt.close(fig)
    print(f"wrote {path} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
