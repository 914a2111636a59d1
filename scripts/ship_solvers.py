"""Ship fitted solvers (`fewstep fit-solver`) with a shipped model, so that its default sampling uses them.

    python scripts/ship_solvers.py digits-teacher benchmarks/results/fitted/fitted_digits_5.json

sets "fitted_solvers" in src/fewstep/assets/models/<name>.json (replacing those shipped before);
`load_denoiser(name).fitted_solvers` then holds them and `sample()` without `solver=` uses the one
for the number of calls (and guidance scale) asked. No file: removes the shipped solvers.
"""

from __future__ import annotations

import argparse
import json

from fewstep.pretrained import SHIPPED_DIR, shipped_models
from fewstep.solvers.fitted import FittedSolver
from fewstep.atomic import atomic_write_text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help="shipped model name")
    ap.add_argument("solvers", nargs="*", help="fitted solver .json files")
    args = ap.parse_args()
    if args.name not in shipped_models():
        raise SystemExit(f"no shipped model {args.name!r} (shipped: {', '.join(shipped_models())})")
    path = SHIPPED_DIR / f"{args.name}.json"
    meta = json.loads(path.read_text())
    fits = [FittedSolver.load(f) for f in args.solvers]
    meta["fitted_solvers"] = [fs.to_dict() for fs in fits]
    atomic_write_text(path, json.dumps(meta, indent=1))
    print(f"{args.name}: shipped fitted solvers for {[fs.nfe for fs in fits]} model calls -> {path}")


if __name__ == "__main__":
    main()
