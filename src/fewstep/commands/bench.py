"""`fewstep bench MODEL`: quality against model calls and wall-clock across solvers, and a pick.

For each solver and model-call budget: FD (shipped-classifier features) to the training data, and
milliseconds per sample. Prints a table, writes OUT/bench.json and OUT/bench.png (matplotlib), and
recommends the fastest setting whose FD is at most --target (default: 1.1x the best FD measured).

--solvers takes solver names, "default" (what `sample()` does without solver=: the fitted solver the
model carries for that number of calls, else the fixed default) and fitted solvers' .json files
(`fewstep fit-solver`), each measured at its own number of calls only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import pyplot, run_dir, write_json
from .evaluate import extractor_for, measure, reference_features


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="quality vs model calls and wall-clock across solvers, with a recommendation",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint, run directory, model file or shipped model name")
    p.add_argument("--solvers", default="default,ddim,dpm++2m,dpm++3m,unipc",
                   help="comma-separated solver names, 'default' (sample()'s choice) or fitted solvers' .json files")
    p.add_argument("--steps", default="3,5,8,10,15,20", help="comma-separated model-call budgets")
    p.add_argument("--student", default=None, help="a consistency student to add (1, 2, 4 steps)")
    p.add_argument("--target", type=float, default=None, help="FD target for the recommendation")
    p.add_argument("--n", type=int, default=500, help="samples per setting")
    p.add_argument("--features", default="classifier", choices=["classifier", "pixels", "inception"])
    p.add_argument("--inception-weights", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="output directory (default runs/bench-<time>)")
    p.set_defaults(fn=run)


def _ints(text: str, what: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise ValueError(f"{what} must be positive integers, got {text!r}")
    return vals


def _settings(text: str, budgets: list[int]) -> list[tuple]:
    """(label, solver for sample(), model calls) for each entry of --solvers and each budget."""
    from ..sample import SOLVERS
    from ..solvers.fitted import FittedSolver

    out = []
    for s in (s.strip() for s in text.split(",")):
        if s.endswith(".json"):
            fs = FittedSolver.load(s)
            out.append((f"fitted:{Path(s).stem}", fs, fs.nfe))
        elif s == "default":
            out += [("default", None, n) for n in budgets]
        elif s in SOLVERS:
            out += [(s, s, n) for n in budgets if not (s == "heun" and n % 2 == 0)]
        elif s:
            raise ValueError(f"unknown solver {s!r}; known: default, {', '.join(SOLVERS)} or a fitted solver's .json")
    return out


def run(args) -> int:
    from ..pretrained import load_denoiser

    budgets = _ints(args.steps, "--steps")
    settings = _settings(args.solvers, budgets)
    D = load_denoiser(args.model, device=args.device)
    dataset = D.config["dataset"]
    ext = extractor_for(args.features, dataset, args.inception_weights, args.device)
    real, _ = reference_features(ext, dataset)
    rows = []
    models = [(D, settings)]
    if args.student:
        models.append((load_denoiser(args.student, device=args.device),
                       [("consistency", "consistency", n) for n in (1, 2, 4)]))
    for model, todo in models:
        for i, (label, solver, n) in enumerate(todo):  # one untimed warm-up per model
            _, r = measure(model, ext, real, args.n, solver=solver, steps=n, seed=args.seed, batch_size=args.batch_size,
                           device=args.device, warmup=min(8, args.n) if i == 0 else 0)
            r = {"model": model.source, **r, "solver": label}
            rows.append(r)
            print(f"{label:<14} nfe {r['nfe']:>3}  FD {r['fd']:8.3f}  P {r['precision']:.3f}  R {r['recall']:.3f}  "
                  f"{r['ms_per_sample']:.3f} ms/sample", flush=True)
    target = args.target if args.target is not None else 1.1 * min(r["fd"] for r in rows)
    ok = [r for r in rows if r["fd"] <= target]
    best = min(ok, key=lambda r: r["ms_per_sample"]) if ok else None
    out = run_dir(args.out, "bench")
    write_json(out / "bench.json", {"command": "bench", "args": {k: v for k, v in vars(args).items() if k != "fn"},
                                    "rows": rows, "target": target, "recommendation": best})
    _plot(rows, out / "bench.png")
    print("\n| solver | NFE | FD | precision | recall | ms/sample |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['nfe']} | {r['fd']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
              f"{r['ms_per_sample']:.3f} |")
    if best:
        print(f"\nrecommended: solver={best['solver']} steps={best['nfe']} (FD {best['fd']:.3f} <= target "
              f"{target:.3f}, {best['ms_per_sample']:.3f} ms/sample)")
    else:
        print(f"\nno setting reaches FD <= {target:.3f}; raise --steps or the target")
    print(f"wrote {out / 'bench.json'}")
    return 0


def _plot(rows, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for solver in dict.fromkeys(r["solver"] for r in rows):
        rs = [r for r in rows if r["solver"] == solver]
        axes[0].plot([r["nfe"] for r in rs], [r["fd"] for r in rs], "o-", label=solver)
        axes[1].plot([r["ms_per_sample"] for r in rs], [r["fd"] for r in rs], "o-", label=solver)
    for ax, xl in zip(axes, ("model calls (NFE)", "ms per sample")):
        ax.set_xlabel(xl), ax.set_ylabel("FD"), ax.set_yscale("log"), ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
