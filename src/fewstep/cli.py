"""The `fewstep` command line: `fewstep demo | solvers` (train, distill, sample, eval, bench grow here)."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args) -> int:
    """Sample the exact Gaussian-mixture oracle with every solver and report the error to the exact ODE end."""
    import torch

    from .processes import get_process
    from .sample import SOLVERS, sample
    from .testing import GaussianMixture

    torch.manual_seed(args.seed)
    process = get_process(args.process)
    g = GaussianMixture.random(d=16, K=8, std_range=(0.2, 0.5), seed=args.seed)
    noise = torch.randn(args.n, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(args.seed))
    x_T = noise * process.prior_std()
    t0 = time.time()
    exact = g.ode(x_T, process.t_max, 0.0, process)
    print(f"fewstep demo: exact Gaussian-mixture oracle (d=16, K=8), {args.n} samples, process {process!r}")
    print(f"exact ODE end points in {time.time() - t0:.1f}s; RMSE to them by model calls:\n")
    steps = [int(s) for s in args.steps.split(",")]
    print(f"{'solver':<24}" + "".join(f"{s:>10}" for s in steps))
    names = ["ddim", "dpm-solver", "dpm++2m", "dpm++3m", "unipc", "heun"]
    for name in names:
        row = []
        for n in steps:
            out = sample(g.denoiser(process), noise, solver=name, steps=n)
            row.append(((out - exact) ** 2).mean().sqrt().item())
        print(f"{name:<24}" + "".join(f"{e:>10.4f}" for e in row))
    print(f"\nsolvers available: {', '.join(SOLVERS)}")
    return 0


def _solvers(args) -> int:
    from .sample import SOLVERS

    for name, spec in SOLVERS.items():
        print(f"{name:<24} orders {spec.orders}  default spacing {spec.spacing}")
    return 0


def _models(args) -> int:
    from .pretrained import shipped_models

    for name in shipped_models():
        print(name)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewstep", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the main job on built-in data (currently: solver accuracy on the exact oracle)")
    d.add_argument("--process", default="vp", help="process name: vp, vp-linear, cosine, edm, flow, trigflow")
    d.add_argument("--steps", default="5,10,20", help="comma-separated model-call budgets")
    d.add_argument("--n", type=int, default=512, help="number of samples")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=_demo)
    s = sub.add_parser("solvers", help="list the solvers")
    s.set_defaults(fn=_solvers)
    from .commands import bench, evaluate, sample
    from .training.cli import add_train_parser

    add_train_parser(sub)
    sample.add_parser(sub)
    evaluate.add_parser(sub)
    bench.add_parser(sub)
    m = sub.add_parser("models", help="list the models shipped in the package")
    m.set_defaults(fn=_models)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"fewstep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
