"""Solvers under classifier-free guidance: which setting is accurate at 5-25 model calls?

Guided sampling follows the ODE of the guided denoiser D_u + s (D_c - D_u), which is stiffer than
the model's own ODE and grows with the scale s. This script measures, on class-conditional versions
of the benchmark's two oracle mixtures (benchmarks/solvers.py: d = 16, K = 8, sharp and smooth; the
components' class is k mod 4) under the linear-beta VP, the RMSE of the sigma = 0 end point to a
reference solution of the guided ODE (UniPC-3 on 1000 logSNR-uniform steps, checked against 2000),
for fewstep's default (`sample()` without `solver=`, guided), fixed fewstep settings and diffusers'
multistep schedulers (run in float64, driven by the same guided eps), at CFG scales 1.5-7.5.

    python benchmarks/solvers_guided.py [--samples 500] [--out benchmarks/results/guided]
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
from solvers import MIX_SEED, MIXTURES, NOISE_SEED, drive_diffusers, md_table, plot_rmse, write_md  # noqa: E402

from fewstep import sample  # noqa: E402
from fewstep.processes import VPDiscrete  # noqa: E402
from fewstep.testing import GaussianMixture  # noqa: E402

NFES = (5, 6, 8, 10, 15, 20, 25)
SCALES = (1.5, 3.0, 5.0, 7.5)
NUM_CLASSES = 4
F64 = torch.float64
# (label, sample() options); label "fewstep default" uses no solver= (the library's choice when guided)
FEWSTEP = (
    ("fewstep default", {}),
    ("unipc-3 bh2 (unguided default)", dict(solver="unipc", order=3, spacing="vp-power")),
    ("unipc-2 bh2", dict(solver="unipc", order=2, spacing="vp-power")),
    ("unipc-2 bh1", dict(solver="unipc-bh1", order=2, spacing="vp-power")),
    ("dpm++2m", dict(solver="dpm++2m", spacing="vp-power")),
    ("dpm++3m", dict(solver="dpm++3m", spacing="vp-power")),
)
DIFFUSERS = (
    ("diffusers UniPC-2 bh2", "UniPCMultistepScheduler", {}),
    ("diffusers UniPC-3 bh2", "UniPCMultistepScheduler", dict(solver_order=3)),
    ("diffusers DPM++2M", "DPMSolverMultistepScheduler", {}),
    ("diffusers DPM++3M", "DPMSolverMultistepScheduler", dict(solver_order=3)),
    ("diffusers DDIM", "DDIMScheduler", dict(clip_sample=False)),
)


class Guided:
    """A class-conditional oracle mixture with its labels, test noise and CFG reference end points."""

    def __init__(self, g: GaussianMixture, process, n: int, scale: float):
        self.g, self.process, self.scale = g, process, scale
        self.noise = torch.randn(n, g.d, generator=torch.Generator().manual_seed(NOISE_SEED), dtype=F64)
        self.y = torch.arange(n) % NUM_CLASSES
        self.kw = dict(class_labels=self.y, guidance_scale=scale,
                       uncond={"class_labels": torch.full_like(self.y, NUM_CLASSES)})
        D = g.denoiser(process)
        self.ref = sample(D, self.noise, solver="unipc", order=3, spacing="logsnr", steps=1000, **self.kw)
        coarse = sample(D, self.noise, solver="unipc", order=3, spacing="logsnr", steps=500, **self.kw)
        self.ref_check = self.rmse(coarse)
        self.eps_model = g.as_model(process, "eps")  # takes the (fractional) discrete index

    def rmse(self, x) -> float:
        v = float(((x.to(F64) - self.ref) ** 2).mean().sqrt())
        return v if math.isfinite(v) else float("inf")

    def fewstep(self, opts: dict, nfe: int) -> float:
        out, used = sample(self.g.denoiser(self.process), self.noise, steps=nfe, return_nfe=True, **opts, **self.kw)
        assert used == nfe, (opts, used, nfe)
        return self.rmse(out)

    def guided_eps(self, x, t):
        """eps of the guided denoiser for diffusers (discrete index t), one batched cond + uncond call."""
        tt = torch.full((2 * x.shape[0],), float(t), dtype=F64)
        both = self.eps_model(torch.cat([x, x]).to(F64), tt,
                              class_labels=torch.cat([self.y, torch.full_like(self.y, NUM_CLASSES)]))
        e_c, e_u = both.chunk(2)
        return e_u + self.scale * (e_c - e_u)

    def diffusers(self, cls_name: str, kwargs: dict, nfe: int) -> float:
        return self.rmse(drive_diffusers(cls_name, kwargs, nfe, self.noise, self.guided_eps)[0])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "guided"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.time()
    process = VPDiscrete.linear()
    try:
        import diffusers  # noqa: F401
        cases = DIFFUSERS
    except ImportError:
        cases = ()
    res: dict = {}  # (mixture, scale, label) -> [rmse per NFE]
    checks = {}
    for mix, sr in MIXTURES.items():
        g = GaussianMixture.random(d=16, K=8, std_range=sr, seed=MIX_SEED, num_classes=NUM_CLASSES)
        for scale in SCALES:
            pb = Guided(g, process, args.samples, scale)
            checks[(mix, scale)] = pb.ref_check
            for label, opts in FEWSTEP:
                res[(mix, scale, label)] = [pb.fewstep(opts, n) for n in NFES]
            for label, cls_name, kw in cases:
                res[(mix, scale, label)] = [pb.diffusers(cls_name, kw, n) for n in NFES]
            print(f"[{mix} scale {scale}: {time.time() - t0:.0f}s]", flush=True)
    labels = [lab for lab, _ in FEWSTEP] + [lab for lab, _, _ in cases]
    lines = ["# Solvers under classifier-free guidance (benchmarks/solvers_guided.py)", "",
             f"RMSE of the sigma = 0 end point to the guided ODE's reference end point (UniPC-3, 1000 logSNR steps; "
             f"its distance to the 500-step solution is given per table); class-conditional oracle mixtures "
             f"(benchmarks/solvers.py's sharp and smooth, class = component mod {NUM_CLASSES}, labels cycling over the "
             f"batch), linear-beta VP, {args.samples} samples (noise seed {NOISE_SEED}), float64 (diffusers too). "
             f"'inf' = overflow. Command: `python benchmarks/solvers_guided.py --samples {args.samples}`", ""]
    for mix in MIXTURES:
        for scale in SCALES:
            lines += [f"## {mix} mixture, CFG scale {scale} (reference check {checks[(mix, scale)]:.1e})", ""]
            rows = [[lab] + [f"{v:.4f}" if v < 1e6 else "inf" for v in res[(mix, scale, lab)]] for lab in labels]
            best_d = [min((res[(mix, scale, lab)][i] for lab, _, _ in cases), default=math.nan)
                      for i in range(len(NFES))]
            rows.append(["ratio fewstep default / best diffusers"]
                        + [f"{res[(mix, scale, 'fewstep default')][i] / b:.2f}" if b > 0 else "-"
                           for i, b in enumerate(best_d)])
            lines += md_table(["RMSE"] + [f"NFE {n}" for n in NFES], rows) + [""]
    # summary: geometric mean over mixtures and scales of each setting's RMSE ratio to the best diffusers
    if cases:
        lines += ["## Summary: geometric mean over both mixtures and all scales of RMSE / best diffusers", ""]
        rows = []
        for lab in labels:
            vals = []
            for i in range(len(NFES)):
                r = [res[(m, s, lab)][i] / min(res[(m, s, c)][i] for c, _, _ in cases)
                     for m in MIXTURES for s in SCALES]
                vals.append(math.exp(np.mean([math.log(min(v, 1e6)) for v in r])))
            rows.append([lab] + [f"{v:.2f}" for v in vals])
        lines += md_table(["setting"] + [f"NFE {n}" for n in NFES], rows) + [""]
    write_md(args.out, "solvers_guided.md", lines)
    series = {f"{mix}, CFG {scale}": {lab: (res[(mix, scale, lab)], {"ls": "-" if lab in dict(FEWSTEP) else "--"})
                                      for lab in labels}
              for mix in MIXTURES for scale in (3.0, 7.5)}
    plot_rmse(os.path.join(args.out, "solvers_guided.png"), series, NFES, "guided")
    print(f"wrote {args.out}/solvers_guided.md, solvers_guided.png ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
