"""Fitted solvers (`fewstep.fit_solver`) against the default and diffusers on the exact oracle.

For each of the benchmark's two mixtures (benchmarks/solvers.py: d = 16, K = 8, linear-beta VP) and each
number of model calls, a solver is fitted on calibration noise (seed 1, never the test noise) against
the model's own 100-call UniPC-3 end points, exactly as a user would fit one (the oracle's exact ODE is
only used to score). Scored on the headline's test noise (seed 1000) by RMSE to the exact ODE end
point, with the share of samples that end in another mixture component than the exact ODE ("flips"),
against the default (`sample()` without solver) and the best diffusers scheduler with its default
settings at the same or fewer calls (float64), with a paired bootstrap 90% interval of the ratio.

Under classifier-free guidance (--part guided): the class-conditional mixtures of
benchmarks/solvers_guided.py at CFG scales 3 and 7.5, fitted through `LabelCFG` (labels cycling over
the calibration batch) and scored against the guided ODE's 1000-step reference, beside fewstep's
guided default and diffusers' multistep schedulers driven by the same guided eps.

Can one fit serve as a fixed default (--part family)? One solver per number of calls is fitted across
16 other mixtures of the benchmark's family (seeds 100-115, alternately the sharp and the smooth
component widths, d = 16, K = 8; --calibration samples spread over them, against each one's exact ODE
end points), then scored, never refitted, on the benchmark's two mixtures and the held-out oracles of
benchmarks/solvers.py, against the fixed default and the best diffusers scheduler.

On real data (--part model): solvers fitted to a trained model (default the shipped digits teacher, a
class-conditional UNet; labels spread over the classes) on 1024 calibration samples against its own
100-call UniPC-3 solve; FD in the shipped classifier's features of its dataset to the training images,
2000 samples per seed, mean over 3 noise seeds, against the default and DPM-Solver++(2M) at the same calls.

    python benchmarks/solvers_fitted.py [--samples 10000] [--calibration 20000] [--nfe 5,6,8,10]
    python benchmarks/solvers_fitted.py --part guided [--samples 2000] [--calibration 8000]
    python benchmarks/solvers_fitted.py --part family [--calibration 16000] [--nfe 5,10]
    python benchmarks/solvers_fitted.py --part model [--model digits-teacher] [--model-nfe 5,8]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from solvers import (MIX_SEED, MIXTURES, NOISE_SEED, TRAIN_SEED, Problem, bootstrap_ratio,  # noqa: E402
                     diffusers_cases, md_table, plot_rmse, run_diffusers, write_md)

from fewstep import fit_solver, sample  # noqa: E402
from fewstep.processes import VPDiscrete  # noqa: E402
from fewstep.testing import GaussianMixture  # noqa: E402

F64 = torch.float64


def _paragraph(i: int) -> str:
    """Paragraph i of this module's docstring on one line (the reports quote what each part does)."""
    return __doc__.split("\n\n")[i].replace("\n", " ")


def _head(title: str, args, i: int, t0: float, setting: str, cells: str) -> list:
    """A report's opening lines: title, what the part does (docstring paragraph i), setting, command."""
    cmd = (f"python benchmarks/solvers_fitted.py --part {args.part} --samples {args.samples} --calibration "
           f"{args.calibration} --nfe {args.nfe} --max-iter {args.max_iter}")
    return [f"# {title} (benchmarks/solvers_fitted.py --part {args.part})", "", _paragraph(i), "",
            f"{setting}; command: `{cmd}` ({time.time() - t0:.0f} s on one core). Cells: {cells}", ""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10000, help="test samples per mixture")
    ap.add_argument("--calibration", type=int, default=20000, help="calibration samples per fit")
    ap.add_argument("--nfe", default="5,6,8,10", help="model calls, comma-separated")
    ap.add_argument("--mixtures", default="sharp,smooth", help="mixtures, comma-separated (--part mixtures / guided)")
    ap.add_argument("--max-iter", type=int, default=100, help="L-BFGS iterations per fit")
    ap.add_argument("--part", default="mixtures", choices=["mixtures", "guided", "family", "model"])
    ap.add_argument("--model", default="digits-teacher", help="--part model: shipped name, run or checkpoint")
    ap.add_argument("--model-nfe", default="5,8", help="--part model: model calls of the fits")
    ap.add_argument("--model-max-iter", type=int, default=30, help="--part model: L-BFGS iterations per fit")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "fitted"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    if args.part == "model":
        return trained_model(args)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    if args.part == "guided":
        return guided(args)
    if args.part == "family":
        return family(args)
    nfes = [int(v) for v in args.nfe.split(",")]
    t0 = time.time()
    p = VPDiscrete.linear()
    rows, series, fits = [], {}, []
    mixtures = {m: MIXTURES[m] for m in args.mixtures.split(",")}
    for mix, std_range in mixtures.items():
        g = GaussianMixture.random(d=16, K=8, std_range=std_range, seed=MIX_SEED)
        D = g.denoiser(p)
        pb = Problem.make(mix, g, p, args.samples, NOISE_SEED)
        cal = torch.randn(args.calibration, g.d, generator=torch.Generator().manual_seed(TRAIN_SEED), dtype=F64)
        print(f"[{mix}: test references {time.time() - t0:.0f}s]", flush=True)
        res = {k: [] for k in ("fitted", "default", "diffusers")}
        for nfe in nfes:
            # best diffusers scheduler (default settings) at <= nfe calls
            best = None
            for label, cls_name, kwargs, is_default in diffusers_cases(quick=True):
                m, out, _ = run_diffusers(pb, cls_name, kwargs, nfe)
                if out is None or not is_default or m["nfe"] > nfe or not math.isfinite(m["rmse"]):
                    continue
                if best is None or m["rmse"] < best[1]["rmse"]:
                    best = (label, m, pb.sq_err(out))
            t1 = time.time()
            fs = fit_solver(D, cal, nfe, max_iter=args.max_iter, progress=False)
            fit_s = time.time() - t1
            fs.save(os.path.join(args.out, f"fitted_{mix}_{nfe}.json"))
            # the default without its implicit first step: the fit's starting solver (and the default when
            # these tables were made; the default's ratios with ifs are in benchmarks/solvers.py's headline)
            out_f, out_d = sample(D, pb.noise, solver=fs), sample(D, pb.noise, steps=nfe, ifs=False)
            mf, md = pb.score(out_f), pb.score(out_d)
            se_f = pb.sq_err(out_f)
            lo, hi = bootstrap_ratio(se_f, best[2])
            rows.append([mix, nfe, f"{mf['rmse']:.4f} ({100 * mf['flips']:.2f}%)",
                         f"{md['rmse']:.4f} ({100 * md['flips']:.2f}%)",
                         f"{best[1]['rmse']:.4f} ({100 * best[1]['flips']:.2f}%) {best[0]}",
                         f"**{mf['rmse'] / best[1]['rmse']:.2f}** [{lo:.2f}, {hi:.2f}]",
                         f"{md['rmse'] / best[1]['rmse']:.2f}", f"{mf['rmse'] / md['rmse']:.2f}"])
            fits.append([mix, nfe, f"{fs.meta['train_rmse_init']:.4f} -> {fs.meta['train_rmse']:.4f}",
                         f"{fs.meta['val_rmse_init']:.4f} -> {fs.meta['val_rmse']:.4f}", fs.meta["best_iteration"],
                         f"{fit_s:.0f}", ", ".join(f"{v:.2f}" for v in fs.lambdas.tolist())])
            res["fitted"].append(mf["rmse"])
            res["default"].append(md["rmse"])
            res["diffusers"].append(best[1]["rmse"])
            print(" | ".join(str(c) for c in rows[-1]), f"[{time.time() - t0:.0f}s]", flush=True)
        series[mix] = {"fitted (fit_solver)": (res["fitted"], {"lw": 2}),
                       "fewstep default": (res["default"], {}),
                       "best diffusers (default settings)": (res["diffusers"], {"ls": "--"})}
    cmd = (f"python benchmarks/solvers_fitted.py --samples {args.samples} --calibration {args.calibration} "
           f"--nfe {args.nfe} --max-iter {args.max_iter} --mixtures {args.mixtures}")
    lines = ["# Fitted solvers (benchmarks/solvers_fitted.py)", "", _paragraph(1), "",
             f"{args.samples} test samples, {args.calibration} calibration samples (a quarter held out to pick the "
             f"iterate), {args.max_iter} L-BFGS iterations per fit; command: `{cmd}` ({time.time() - t0:.0f} s on "
             "one core). Cells: RMSE (flips).", ""]
    lines += md_table(["mixture", "NFE", "fitted", "fewstep default", "best diffusers", "fitted / diffusers [90%]",
                       "default / diffusers", "fitted / default"], rows)
    lines += ["", "## The fits", "", "RMSE to the model's own 100-call end points, before -> after, on the "
              "calibration part and the held-out part; fitted model-call lambdas.", ""]
    lines += md_table(["mixture", "NFE", "train", "held out", "best iteration", "seconds", "lambdas"], fits)
    write_md(args.out, "solvers_fitted.md", lines)
    plot_rmse(os.path.join(args.out, "solvers_fitted.png"), series, nfes, "fitted solvers vs default vs diffusers")
    print(f"wrote {args.out} ({time.time() - t0:.0f}s)")


def guided(args):
    """Fitted solvers under CFG on the class-conditional mixtures (solvers_guided.py's problems)."""
    from solvers_guided import DIFFUSERS, NUM_CLASSES, Guided

    from fewstep.guidance import LabelCFG

    t0 = time.time()
    p = VPDiscrete.linear()
    nfes = [int(v) for v in args.nfe.split(",")]
    rows = []
    for mix in args.mixtures.split(","):
        g = GaussianMixture.random(d=16, K=8, std_range=MIXTURES[mix], seed=MIX_SEED, num_classes=NUM_CLASSES)
        cal = torch.randn(args.calibration, g.d, generator=torch.Generator().manual_seed(TRAIN_SEED), dtype=F64)
        cond = {"class_labels": torch.arange(args.calibration) % NUM_CLASSES}
        for scale in (3.0, 7.5):
            pb = Guided(g, p, args.samples, scale)
            D = LabelCFG(g.denoiser(p), scale, NUM_CLASSES)
            for nfe in nfes:
                best = min((pb.diffusers(cls_name, kw, nfe), label) for label, cls_name, kw in DIFFUSERS)
                dflt = pb.fewstep({}, nfe)
                t1 = time.time()
                fs = fit_solver(D, cal, nfe, cond=cond, max_iter=args.max_iter, progress=False)
                fit_s = time.time() - t1
                fs.save(os.path.join(args.out, f"fitted_{mix}_cfg{scale:g}_{nfe}.json"))
                fitted = pb.rmse(sample(D, pb.noise, solver=fs, class_labels=pb.y))
                rows.append([mix, scale, nfe, f"{fitted:.4f}", f"{dflt:.4f}", f"{best[0]:.4f} {best[1]}",
                             f"**{fitted / best[0]:.2f}**", f"{dflt / best[0]:.2f}", f"{fit_s:.0f}"])
                print(" | ".join(map(str, rows[-1])), f"[{time.time() - t0:.0f}s]", flush=True)
    lines = _head("Fitted solvers under classifier-free guidance", args, 2, t0,
                  f"{args.samples} test samples (seed {NOISE_SEED}), {args.calibration} calibration samples "
                  f"(seed {TRAIN_SEED}), {args.max_iter} L-BFGS iterations", "RMSE to the guided ODE's end point.")
    lines += md_table(["mixture", "CFG scale", "NFE", "fitted", "fewstep guided default", "best diffusers",
                       "fitted / diffusers", "default / diffusers", "fit s"], rows)
    write_md(args.out, "solvers_fitted_guided.md", lines)


class Family:
    """The exact denoisers of several mixtures at once: sample i is denoised by mixture mix[i]."""

    def __init__(self, mixtures, process):
        self.mixtures, self.process, self.sigma_data = mixtures, process, 0.5

    def __call__(self, x, t, mix):
        out = torch.empty_like(x)
        for k in mix.unique().tolist():
            i = mix == k
            out[i] = self.mixtures[k].x0(x[i], t, self.process).to(x.dtype)
        return out


def family(args):
    """One solver per number of calls fitted across 16 other mixtures of the family, scored on the
    benchmark's mixtures and the held-out oracles (never fitted on)."""
    from solvers import HELD_OUT

    t0 = time.time()
    p = VPDiscrete.linear()
    n_mix = 16
    train = [GaussianMixture.random(d=16, K=8, std_range=MIXTURES["sharp" if j % 2 == 0 else "smooth"], seed=100 + j)
             for j in range(n_mix)]
    per = args.calibration // n_mix
    cal = torch.randn(n_mix * per, 16, generator=torch.Generator().manual_seed(TRAIN_SEED), dtype=F64)
    mix = torch.arange(n_mix).repeat_interleave(per)
    ref = torch.cat([train[k].ode(cal[mix == k] * p.prior_std(), p.t_max, 0.0, p) for k in range(n_mix)])
    tests = {m: GaussianMixture.random(d=16, K=8, std_range=r, seed=MIX_SEED) for m, r in MIXTURES.items()}
    tests.update({name: GaussianMixture.random(**kw) for name, kw in HELD_OUT.items()})
    problems = {name: Problem.make(name, g, p, args.samples, NOISE_SEED) for name, g in tests.items()}
    print(f"[references {time.time() - t0:.0f}s]", flush=True)
    rows, fits = [], []
    for nfe in [int(v) for v in args.nfe.split(",")]:
        t1 = time.time()
        fs = fit_solver(Family(train, p), cal, nfe, reference=ref, cond={"mix": mix}, max_iter=args.max_iter,
                        progress=False)
        fs.save(os.path.join(args.out, f"fitted_family_{nfe}.json"))
        fits.append([nfe, f"{fs.meta['train_rmse_init']:.4f} -> {fs.meta['train_rmse']:.4f}",
                     f"{fs.meta['val_rmse_init']:.4f} -> {fs.meta['val_rmse']:.4f}", fs.meta["best_iteration"],
                     f"{time.time() - t1:.0f}"])
        for name, pb in problems.items():
            D = pb.g.denoiser(p)
            mf, md = pb.score(sample(D, pb.noise, solver=fs)), pb.score(sample(D, pb.noise, steps=nfe, ifs=False))
            best = "-"
            if name in MIXTURES:  # the headline's comparison: the best diffusers scheduler at <= nfe calls
                ms = [run_diffusers(pb, c, kw, nfe)[0] for _, c, kw, dflt in diffusers_cases(quick=True) if dflt]
                b = min(m["rmse"] for m in ms if m["nfe"] <= nfe and math.isfinite(m["rmse"]))
                best = f"{b:.4f}: {mf['rmse'] / b:.2f} / {md['rmse'] / b:.2f}"
            rows.append([name, nfe, f"{mf['rmse']:.4f}", f"{md['rmse']:.4f}", f"**{mf['rmse'] / md['rmse']:.2f}**", best])
            print(" | ".join(map(str, rows[-1])), f"[{time.time() - t0:.0f}s]", flush=True)
    lines = _head("One fitted solver for a family of models", args, 3, t0,
                  f"{args.samples} test samples per mixture (seed {NOISE_SEED}), {n_mix} x {per} calibration "
                  f"samples, {args.max_iter} L-BFGS iterations", "RMSE to the exact ODE end point.")
    lines += md_table(["test mixture", "NFE", "family fit", "fixed default", "family fit / default",
                       "best diffusers: family fit / it, default / it"], rows)
    lines += ["", "The fits (RMSE to the exact end points of the 16 training mixtures, before -> after):", ""]
    lines += md_table(["NFE", "train", "held out", "best iteration", "seconds"], fits)
    write_md(args.out, "solvers_fitted_family.md", lines)


def trained_model(args):
    """Fitted solvers on a trained model, scored by FD (3 seeds) against its dataset."""
    from fewstep.commands.evaluate import extractor_for, measure, reference_features
    from fewstep.pretrained import load_denoiser

    t0 = time.time()
    D = load_denoiser(args.model)
    D.fitted_solvers = {}  # the default column is the fixed default, whatever fits the model carries
    dataset = D.config["dataset"]
    ext = extractor_for("classifier", dataset)
    real, _ = reference_features(ext, dataset, D.config.get("data_root"))
    seeds, n_cal = (0, 1, 2), 1024
    noise = torch.randn(n_cal, *D.sample_shape, generator=torch.Generator().manual_seed(123))
    cond = {"class_labels": torch.arange(n_cal) % D.num_classes}

    def fd(solver, steps):
        rows = [measure(D, ext, real, 2000, solver=solver, steps=steps, seed=s)[1] for s in seeds]
        return sum(r["fd"] for r in rows) / len(rows), [r["fd"] for r in rows]

    rows = []
    ref20 = fd("dpm++2m", 20)[0]
    for nfe in [int(v) for v in args.model_nfe.split(",")]:
        t1 = time.time()
        fs = fit_solver(D, noise, nfe, cond=cond, max_iter=args.model_max_iter, progress=False)
        fit_s = time.time() - t1
        fs.save(os.path.join(args.out, f"fitted_{dataset}_{nfe}.json"))
        for label, solver in (("fitted", fs), ("default", None), ("DPM-Solver++(2M)", "dpm++2m")):
            mean, per = fd(solver, nfe)
            extra = (f"fit {fit_s:.0f} s; held-out RMSE to the 100-call solve {fs.meta['val_rmse_init']:.4f} -> "
                     f"{fs.meta['val_rmse']:.4f}") if label == "fitted" else ""
            rows.append([label, nfe, f"{mean:.3f} [{min(per):.3f}, {max(per):.3f}]", f"{mean / ref20:.2f}", extra])
            print(" | ".join(map(str, rows[-1])), f"[{time.time() - t0:.0f}s]", flush=True)
    lines = [f"# Fitted solvers on {args.model} ({dataset}; benchmarks/solvers_fitted.py --part model)", "",
             _paragraph(4), "",
             f"Teacher reference: DPM-Solver++(2M) at 20 calls, FD {ref20:.3f}. Command: `python "
             f"benchmarks/solvers_fitted.py --part model --model {args.model} --model-nfe {args.model_nfe} "
             f"--model-max-iter {args.model_max_iter}` ({time.time() - t0:.0f} s on one core).", ""]
    lines += md_table(["solver", "model calls", "FD (3 seeds) [min, max]", "FD / teacher at 20 calls", "fit"], rows)
    write_md(args.out, f"solvers_fitted_{dataset}.md", lines)


if __name__ == "__main__":
    main()
