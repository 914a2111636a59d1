"""The `fewstep` command line: demo, train, distill, sample, fit-solver, eval, bench, export, solvers, models."""

from __future__ import annotations

import argparse
import sys


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
    s = sub.add_parser("solvers", help="list the solvers")
    s.set_defaults(fn=_solvers)
    from .commands import bench, demo, evaluate, export, fit_solver, sample
    from .training.cli import add_distill_parser, add_train_parser

    demo.add_parser(sub)
    add_train_parser(sub)
    add_distill_parser(sub)
    sample.add_parser(sub)
    fit_solver.add_parser(sub)
    evaluate.add_parser(sub)
    bench.add_parser(sub)
    export.add_parser(sub)
    m = sub.add_parser("models", help="list the models shipped in the package")
    m.set_defaults(fn=_models)
    return p


def main(argv=None) -> int:
    from .training.cli import parse_with_late_items

    args = parse_with_late_items(build_parser(), argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"fewstep {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
