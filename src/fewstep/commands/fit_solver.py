"""`fewstep fit-solver MODEL --steps N`: fit an N-call solver to a model and write it as JSON.

The solver's model-call times and multistep weights are learned on --n calibration samples against the
model's own --reference-steps-call UniPC-3 solve (`fewstep.fit_solver`); a quarter of them is held out
to pick the iterate. Conditional models are fitted with labels spread over the classes and, with
--guidance, under classifier-free guidance at that scale (fit one solver per scale you sample with).
Use the result with `fewstep sample MODEL --solver OUT.json` or `fewstep.sample(..., solver=
fewstep.FittedSolver.load(OUT.json))`. For a run directory the default OUT is RUN/solvers/, where
`load_denoiser` finds it: then `fewstep sample RUN --steps N` (same --guidance) uses it by default.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def add_parser(sub) -> None:
    p = sub.add_parser("fit-solver", help="learn an N-call solver's times and weights on a model (JSON)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint .json, run directory, model file .json (`fewstep export`) "
                                 "or shipped model name (`fewstep models`)")
    p.add_argument("--steps", type=int, required=True, help="model calls (NFE) of the fitted solver, >= 2")
    p.add_argument("--n", type=int, default=1024, help="calibration samples (a quarter held out)")
    p.add_argument("--max-iter", type=int, default=30, help="L-BFGS iterations")
    p.add_argument("--reference-steps", type=int, default=100, help="model calls of the reference solve")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale to fit under")
    p.add_argument("--batch-size", type=int, default=256, help="samples per forward / backward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration noise")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", default=None, help="output file (default: RUN/solvers/fit-<steps>[-cfg<scale>].json for "
                                               "a run directory, else runs/fit-solver-<steps>.json)")
    p.set_defaults(fn=run)


def run(args) -> int:
    from ..fitting import fit_solver
    from ..guidance import LabelCFG
    from ..pretrained import load_denoiser
    from ..solvers.fitted import guidance_key

    if args.n < 2:
        raise ValueError("--n must be >= 2")
    D = load_denoiser(args.model, device=args.device)  # its weights come frozen: only the solver is learned
    g = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(args.n, *D.sample_shape, generator=g).to(args.device)
    cond, guided = {}, guidance_key(args.guidance) is not None
    if D.num_classes:
        labels = (torch.arange(args.n) % D.num_classes).to(args.device)
        if guided:
            D = LabelCFG(D, args.guidance, D.num_classes)
        cond = {"class_labels": labels}
    elif args.guidance is not None:
        raise ValueError("this model is unconditional: --guidance does not apply")
    t0 = time.perf_counter()
    fs = fit_solver(D, noise, args.steps, reference_steps=args.reference_steps, max_iter=args.max_iter,
                    batch_size=args.batch_size, cond=cond, progress=True)
    fs.meta.update(model=str(args.model), guidance=args.guidance, seed=args.seed)
    tag = f"-cfg{args.guidance:g}" if guided else ""
    if args.out:
        out = Path(args.out)
    elif Path(args.model).is_dir():
        out = Path(args.model) / "solvers" / f"fit-{args.steps}{tag}.json"
    else:
        out = Path("runs") / f"fit-solver-{args.steps}{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    fs.save(out)
    m = fs.meta
    print(f"fitted a {args.steps}-call solver in {time.perf_counter() - t0:.0f}s: RMSE to the "
          f"{args.reference_steps}-call reference on held-out noise {m['val_rmse_init']:.4f} (default) -> {m['val_rmse']:.4f} -> {out}")
    return 0

