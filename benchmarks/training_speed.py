"""Training speed: quality against iterations for uniform, SpeeD, Min-SNR and logit-normal training.

Same model, data, seed, noise and budget for every method; only the timestep sampler / loss
weighting changes (unconditional eps-prediction on the DDPM linear VP process, as in the SpeeD paper):

    uniform       t ~ U{0..999}, w = 1                         (DDPM)
    speed         SpeeD: k = 5, tau = 700, lam = 0.6           (Wang et al. 2024, official configs)
    min-snr       t ~ U, w = min(SNR, 5) / SNR                 (Hang et al. 2023)
    logit-normal  t = 1000 sigmoid(n), n ~ N(0, 1), w = 1      (Esser et al. 2024, SD3)

Quality is the Frechet distance (FD) between generated and real training images in the feature
space of the shipped offline classifier of the dataset (`fewstep.metrics.ClassifierFeatures`,
weights in src/fewstep/assets/). Every `--eval-every` iterations the EMA model draws `--samples`
images from the same fixed noise with UniPC (order 2, `--sample-steps` model calls). Reported: FD
by iteration (median over seeds), and the iterations each method needs to reach uniform's final FD
(linear interpolation between evaluation points), with the ratio budget / iterations.

    python benchmarks/training_speed.py --iters 200 --eval-every 100 --seeds 0 --samples 200 --tag _smoke
    python benchmarks/training_speed.py                                  # digits, 3 seeds, 2000 its
    python benchmarks/training_speed.py --dataset fashion-mnist --data-root DIR --seeds 0 \\
        --iters 2000 --eval-every 250 --samples 500 --tag _reduced

Runs are done one after another (or in `--jobs` processes of one torch thread each); every finished
run is appended to <scratch>/training_speed_<dataset><tag>.runs.jsonl (default scratch:
benchmarks/out) and reused when the same
command is run again (delete the file or pass --fresh to start over), so an interrupted benchmark
loses at most one run. Writes <out>/training_speed_<dataset><tag>.{png,json} (default out:
benchmarks/results) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SCRATCH = HERE / "out"

METHODS = {
    "uniform": dict(timesteps="uniform", weighting="none"),
    "speed": dict(timesteps="speed", timestep_args={"k": 5.0, "tau": 700}, weighting="speed",
                  weighting_args={"lam": 0.6, "tau": 700}),
    "min-snr": dict(timesteps="uniform", weighting="min-snr", weighting_args={"gamma": 5.0}),
    "logit-normal": dict(timesteps="logit-normal", timestep_args={"m": 0.0, "s": 1.0}, weighting="none"),
}
MAIN = list(METHODS)

# SpeeD ablations and hyper-parameter variations (run with --methods; not in the default set)
METHODS.update({
    "speed-sampling-only": dict(timesteps="speed", timestep_args={"k": 5.0, "tau": 700}, weighting="none"),
    "speed-weighting-only": dict(timesteps="uniform", weighting="speed", weighting_args={"lam": 0.6, "tau": 700}),
    "speed-k2": dict(timesteps="speed", timestep_args={"k": 2.0, "tau": 700}, weighting="speed",
                     weighting_args={"lam": 0.6, "tau": 700}),
    "speed-tau500": dict(timesteps="speed", timestep_args={"k": 5.0, "tau": 500}, weighting="speed",
                         weighting_args={"lam": 0.6, "tau": 500}),
    "speed-lam0.9": dict(timesteps="speed", timestep_args={"k": 5.0, "tau": 700}, weighting="speed",
                         weighting_args={"lam": 0.9, "tau": 700}),
})

# dataset: (model preset, default base channels). Both are reduced from the presets' widths
# (unet-digits 32, unet-mnist 64) so that 3 seeds x 4 methods fit a CPU budget.
DATASETS = {
    "digits": ("unet-digits", 16),
    "fashion-mnist": ("unet-mnist", 16),
}

# settings that must agree for a stored run to be reused
RUN_KEYS = ("dataset", "data_root", "model", "channels", "iters", "eval_every", "batch", "lr", "warmup",
            "ema_half_life", "samples", "reference", "sample_steps", "solver")


# ------------------------------------------------------------------ features


def feature_net(dataset_name):
    from fewstep.metrics import ClassifierFeatures

    return ClassifierFeatures(dataset_name)


def features(net, images):
    from fewstep.metrics import extract_features

    return extract_features(net, images, batch_size=500, progress=False).double().numpy()


def reference_images(dataset, n):
    if len(dataset) <= n:
        return dataset.images
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(99))[:n]
    return dataset.images[idx]


def fixed_noise(args, shape):
    return torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(1234))


# ------------------------------------------------------------------ one run


def config_for(method, seed, args):
    from fewstep.training import TrainConfig

    return TrainConfig(
        name=f"{args.dataset}-{method}-s{seed}", dataset=args.dataset, data_root=args.data_root, model=args.model,
        model_args={"channels": args.channels, "dropout": 0.0}, process="vp", prediction="eps", conditional=False,
        lr=args.lr, batch_size=args.batch, steps=args.iters, warmup_steps=args.warmup, grad_clip=1.0,
        ema_half_life=args.ema_half_life, ema_warmup_ratio=0.1, seed=seed, device="cpu", progress=False,
        **METHODS[method])


def run_one(job):
    """Train one (method, seed); FD of the EMA model at every eval point. Returns a dict."""
    method, seed, args = job
    torch.set_num_threads(1)
    from fewstep import sample
    from fewstep.metrics import frechet_distance_from_features
    from fewstep.training import Trainer

    trainer = Trainer(config_for(method, seed, args))
    net = feature_net(args.dataset)
    real = features(net, reference_images(trainer.dataset, args.reference))
    noise = fixed_noise(args, trainer.dataset.shape)
    curve, t_train, t0 = [], 0.0, time.time()
    for it in range(args.eval_every, args.iters + 1, args.eval_every):
        t1 = time.time()
        trainer.fit(until=it)
        t_train += time.time() - t1
        with torch.no_grad():
            x = sample(trainer.denoiser(ema=True), noise, solver=args.solver, order=2,
                       steps=args.sample_steps).clamp(-1, 1).float()
        fd = frechet_distance_from_features(features(net, x), real)
        curve.append((it, fd, trainer.last_loss))
        if args.verbose:
            print(f"    {method} s{seed} it {it}: FD {fd:.4f} loss {trainer.last_loss:.4f} "
                  f"({time.time() - t0:.0f}s)", flush=True)
    return {"method": method, "seed": seed, "curve": [(i, f) for i, f, _ in curve],
            "loss": [(i, l) for i, _, l in curve], "train_s": t_train, "total_s": time.time() - t0,
            "settings": {k: getattr(args, k) for k in RUN_KEYS}}


# ------------------------------------------------------------------ summary


def iterations_to(curve, target):
    """First iteration where FD <= target, interpolated linearly between eval points; None if never."""
    prev = None
    for it, fd in curve:
        if fd <= target:
            if prev is None:
                return float(it)
            i0, f0 = prev
            return i0 + (f0 - target) / (f0 - fd) * (it - i0)
        prev = (it, fd)
    return None


def _fmt_it(x):
    return "never" if x is None else f"{x:.0f}"


def summarise(results, args, floor):
    """Print markdown tables; returns (iters, median curves, target, per-method rows)."""
    by_method = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    iters = [it for it, _ in results[0]["curve"]]
    median = {m: [statistics.median(r["curve"][i][1] for r in rs) for i in range(len(iters))]
              for m, rs in by_method.items()}
    seeds = {m: sorted(r["seed"] for r in rs) for m, rs in by_method.items()}
    target = median["uniform"][-1] if "uniform" in median else None
    lines = [f"### {args.dataset}{args.tag}: FD (median over seeds) by training iteration", "",
             f"model {args.model} (channels {args.channels}), batch {args.batch}, lr {args.lr}, "
             f"{args.iters} iterations, EMA half-life {args.ema_half_life:g} images; FD on the shipped "
             f"classifier-{args.dataset} features, {args.samples} samples ({args.solver} order 2, "
             f"{args.sample_steps} steps) vs {args.reference_used} real training images; "
             f"real-vs-real floor {floor:.4f} ({args.floor_note})", "",
             "| method | seeds | " + " | ".join(str(i) for i in iters) + " |",
             "|---|---|" + "---:|" * len(iters)]
    for m in by_method:
        lines.append(f"| {m} | {','.join(map(str, seeds[m]))} | " + " | ".join(f"{v:.4f}" for v in median[m]) + " |")
    rows = {}
    if target is not None:
        uni = {r["seed"]: r["curve"][-1][1] for r in by_method["uniform"]}
        lines += ["", f"Iterations to reach uniform's final FD ({target:.4f}, median curve) and per seed (each "
                  f"seed against its own uniform run's final FD); ratio = {args.iters} / iterations "
                  f"('never' = not reached within {args.iters}):", "",
                  "| method | its (median curve) | ratio | per-seed its | per-seed ratios | median per-seed ratio "
                  "| uniform its to this final FD | equivalent ratio |",
                  "|---|---:|---:|---|---|---:|---:|---:|"]
        uni_curve = list(zip(iters, median["uniform"]))
        for m, rs in by_method.items():
            it = iterations_to(list(zip(iters, median[m])), target)
            rs = sorted(rs, key=lambda r: r["seed"])
            per = [iterations_to(r["curve"], uni[r["seed"]]) if r["seed"] in uni else None for r in rs]
            ups = [args.iters / p if p else 0.0 for p in per]  # never reached -> counted as 0 (< 1)
            med = statistics.median(ups)
            # the other direction: how many iterations uniform needed for this method's final FD
            # (median curves); budget / that < 1 means the method is slower than uniform
            back = iterations_to(uni_curve, median[m][-1])
            rows[m] = {"iters_to_target": it, "ratio": args.iters / it if it else None, "per_seed_iters": per,
                       "per_seed_ratio": [u or None for u in ups], "median_per_seed_ratio": med or None,
                       "uniform_iters_to_final": back, "equivalent_ratio": back / args.iters if back else None}
            lines.append(f"| {m} | {_fmt_it(it)} | {(f'{args.iters / it:.2f}x' if it else '<1x')} | "
                         f"{', '.join(_fmt_it(p) for p in per)} | "
                         f"{', '.join(f'{u:.2f}x' if u else '<1x' for u in ups)} | "
                         f"{(f'{med:.2f}x' if med else '<1x')} | "
                         f"{'never (better)' if back is None else f'{back:.0f}'} | "
                         f"{'>1x' if back is None else f'{back / args.iters:.2f}x'} |")
    secs = {m: statistics.median(r["train_s"] for r in rs) for m, rs in by_method.items()}
    lines += ["", "median training seconds per run (excluding evaluation): "
              + ", ".join(f"{m} {s:.0f}s" for m, s in secs.items())]
    print("\n".join(lines), flush=True)
    return iters, median, target, rows, "\n".join(lines)


def plot(results, iters, median, target, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for m in median:
        runs = np.array([[fd for _, fd in r["curve"]] for r in results if r["method"] == m])
        line, = ax.plot(iters, median[m], marker="o", ms=3, label=f"{m} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(iters, runs.min(0), runs.max(0), color=line.get_color(), alpha=0.15)
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=0.8, label="uniform final FD")
    ax.set_yscale("log")
    ax.set_xlabel("training iterations")
    ax.set_ylabel("FD (classifier features), median; band = min..max")
    ax.set_title(f"{args.dataset}{args.tag}: {args.model} ch{args.channels}, batch {args.batch}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ main


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    p.add_argument("--data-root", default=None, help="dataset directory (Fashion-MNIST idx .gz files)")
    p.add_argument("--model", default=None, help="model preset (default: unet-digits / unet-mnist)")
    p.add_argument("--channels", type=int, default=None, help="base channels (default 16)")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", default=",".join(MAIN), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema-half-life", type=float, default=10000.0, help="EMA half-life in images")
    p.add_argument("--samples", type=int, default=1000, help="generated images per evaluation")
    p.add_argument("--reference", type=int, default=10000, help="real training images for the reference statistics")
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--solver", default="unipc", choices=["unipc", "dpm++2m"])
    p.add_argument("--jobs", type=int, default=1, help="parallel processes (one torch thread each)")
    p.add_argument("--tag", default="", help="suffix for the output names, e.g. _reduced")
    p.add_argument("--name", default=None, help="output file stem (default training_speed_<dataset><tag>); "
                   "stored runs are still shared by dataset and tag")
    p.add_argument("--out", default=str(HERE / "results"), help="directory for the .png / .json")
    p.add_argument("--scratch", default=str(SCRATCH), help="directory of the stored runs (.runs.jsonl)")
    p.add_argument("--fresh", action="store_true", help="ignore (and delete) the stored runs")
    p.add_argument("--summary-only", action="store_true", help="only summarise the stored runs")
    p.add_argument("--verbose", action="store_true", help="print every evaluation")
    args = p.parse_args(argv)
    model, channels = DATASETS[args.dataset]
    args.model = args.model or model
    args.channels = args.channels or channels
    args.seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    bad = [m for m in methods if m not in METHODS]
    if bad or args.iters < args.eval_every or args.eval_every < 1:
        p.error(f"unknown method(s) {bad}" if bad else "need 1 <= --eval-every <= --iters")

    from fewstep.data import load_dataset
    from fewstep.metrics import frechet_distance_from_features

    torch.set_num_threads(1)
    try:
        dataset = load_dataset(args.dataset, root=args.data_root)
    except (FileNotFoundError, ValueError) as e:
        p.error(str(e))
    net = feature_net(args.dataset)
    ref = reference_images(dataset, args.reference)
    args.reference_used = len(ref)
    real = features(net, ref)
    # floor: FD of `samples` real images against the reference. Held-out (test split) when the
    # dataset has one; digits has none, so there it is a subset of the reference (an underestimate).
    try:
        held = load_dataset(args.dataset, root=args.data_root, split="test").images
        held = held[torch.randperm(len(held), generator=torch.Generator().manual_seed(7))[:args.samples]]
        args.floor_note = f"{len(held)} held-out test images"
    except (ValueError, FileNotFoundError):
        held = ref[torch.randperm(len(ref), generator=torch.Generator().manual_seed(7))[:args.samples]]
        args.floor_note = f"{len(held)} of the reference images themselves, no test split"
    floor = frechet_distance_from_features(features(net, held), real)

    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    store = scratch / f"training_speed_{args.dataset}{args.tag}.runs.jsonl"
    settings = {k: getattr(args, k) for k in RUN_KEYS}
    done = {}
    if store.is_file() and not args.fresh:
        for line in store.read_text().splitlines():
            r = json.loads(line)
            if r.get("settings") == json.loads(json.dumps(settings)):
                done[(r["method"], r["seed"])] = r
    elif args.fresh and store.is_file():
        store.unlink()

    jobs = [(m, s, args) for s in args.seeds for m in methods if (m, s) not in done]
    results = [done[(m, s)] for s in args.seeds for m in methods if (m, s) in done]
    t0 = time.time()
    if not args.summary_only and jobs:
        print(f"{len(jobs)} runs of {args.iters} iterations on {args.jobs} process(es) "
              f"({len(results)} reused from {store.name})...", flush=True)

        def record(r):
            print(f"  {r['method']:<13} seed {r['seed']}: final FD {r['curve'][-1][1]:.4f} "
                  f"(train {r['train_s']:.0f}s, total {r['total_s']:.0f}s)", flush=True)
            with store.open("a") as f:
                f.write(json.dumps(r) + "\n")
            results.append(r)

        if args.jobs > 1:
            with mp.get_context("spawn").Pool(args.jobs) as pool:
                for r in pool.imap_unordered(run_one, jobs):
                    record(r)
        else:
            for job in jobs:
                record(run_one(job))
    if not results:
        print("no runs to summarise")
        return
    order = {m: i for i, m in enumerate(METHODS)}
    results.sort(key=lambda r: (order[r["method"]], r["seed"]))
    iters, median, target, rows, text = summarise(results, args, floor)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{args.name or f'training_speed_{args.dataset}{args.tag}'}.png"
    plot(results, iters, median, target, args, png)
    rec = {"args": {k: v for k, v in vars(args).items()}, "classifier": f"classifier-{args.dataset} (shipped)",
           "fd_floor": floor, "iters": iters, "median": median, "target": target, "summary": rows,
           "runs": results, "tables_md": text,
           "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    png.with_suffix(".json").write_text(json.dumps(rec, indent=1, default=str))
    print(f"\nwrote {png} and {png.with_suffix('.json')} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
