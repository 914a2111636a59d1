"""`fewstep demo`: the whole pipeline on the built-in digits, on a laptop CPU, in under 10 minutes.

1. train a class-conditional UNet teacher with SpeeD timestep sampling and weighting (preset
   digits-speed-trigflow, shortened: a TrigFlow-F network with c_noise(t) = t, which sCD distils
   stably, sCM Sec. 4.1);
2. sample it with DPM-Solver++(2M) in 10 model calls (and the default solver);
3. distil it with sCD into a consistency student that starts as the teacher (preset digits-scd);
4. evaluate each (FD in the shipped digits classifier's feature space, precision / recall, time per
   sample) and write OUT/report.md with sample grids and the quality-vs-time plot.

    fewstep demo                        # about 6-8 minutes on 2 CPU cores, writes runs/demo/
    fewstep demo --teacher digits-teacher   # skip step 1: start from the shipped teacher
    fewstep demo --resume               # continue an interrupted demo (checkpoints every 250 steps)

`fewstep demo --oracle` prints the older solver table on the exact Gaussian-mixture oracle instead.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from .common import pyplot, write_json

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a SpeeD teacher on digits, sample it, distil it with sCD, report (CPU, "
                                    "< 10 min)", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--teacher", default=None, help="use this teacher (checkpoint, run dir or shipped name) instead of "
                                                   "training one")
    p.add_argument("--teacher-steps", type=int, default=2500, help="teacher training iterations (batch 64)")
    p.add_argument("--distill-steps", type=int, default=600, help="sCD iterations (batch 64)")
    p.add_argument("--n", type=int, default=1000, help="samples per evaluation")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oracle", action="store_true", help="print the solver table on the exact Gaussian-mixture oracle")
    p.add_argument("--process", default="vp", help="--oracle: process name (vp, vp-linear, cosine, edm, flow, trigflow)")
    p.add_argument("--steps", default="5,10,20", help="--oracle: comma-separated model-call budgets")
    p.set_defaults(fn=run)


def _train(cfg, out: Path, resume: bool, progress: bool, label: str):
    from ..training import Trainer

    trainer = Trainer(cfg, out=out, resume=resume, progress=progress)
    try:
        print(f"[demo] {label}: {trainer.summary()}", flush=True)
        if trainer.step:
            print(f"[demo] resumed at step {trainer.step}", flush=True)
        result = trainer.fit()
    finally:
        trainer.close()
    print(f"[demo] {label}: done in {result['seconds']:.0f}s (loss {result['loss']:.4f})", flush=True)
    return result


def run(args) -> int:
    if args.oracle:
        return _oracle(args)
    if args.teacher_steps < 1 or args.distill_steps < 1 or args.n < 10:
        raise ValueError("--teacher-steps and --distill-steps must be >= 1 and --n >= 10")
    from ..images import save_grid
    from ..pretrained import load_denoiser
    from ..training import get_preset
    from .evaluate import extractor_for, measure, reference_features

    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    ckpt_every = 250
    if args.teacher is None:
        cfg = get_preset("digits-speed-trigflow").replace(
            steps=args.teacher_steps, seed=args.seed, checkpoint_every=ckpt_every,
            ema_half_life=min(25000.0, 8.0 * args.teacher_steps), warmup_steps=min(200, args.teacher_steps // 5))
        teacher_result = _train(cfg, out / "teacher", args.resume, progress, "1/3 teacher (SpeeD, TrigFlow)")
        teacher_spec = str(out / "teacher")
    else:
        teacher_result, teacher_spec = None, args.teacher
    teacher = load_denoiser(teacher_spec)
    if teacher.config["dataset"] != "digits":
        raise ValueError(f"the demo runs on digits; the teacher was trained on {teacher.config['dataset']!r}")
    base = get_preset("digits-scd")
    cfg = base.replace(teacher=teacher_spec, steps=args.distill_steps, seed=args.seed, checkpoint_every=ckpt_every,
                       scm_args={**base.scm_args, "tangent_warmup": max(1, args.distill_steps // 3)})
    student_result = _train(cfg, out / "student", args.resume, progress, "2/3 sCD student")
    student = load_denoiser(str(out / "student"))

    print("[demo] 3/3 evaluating", flush=True)
    ext = extractor_for("classifier", "digits")
    real, _ = reference_features(ext, "digits")
    settings = [("teacher", teacher, "dpm++2m", 10), ("teacher", teacher, None, 10), ("teacher", teacher, "dpm++2m", 5),
                ("teacher", teacher, "dpm++2m", 20), ("sCD student", student, "consistency", 1),
                ("sCD student", student, "consistency", 2), ("sCD student", student, "consistency", 4)]
    rows, grids = [], {}
    for label, D, solver, steps in settings:
        x, r = measure(D, ext, real, args.n, solver=solver, steps=steps, seed=args.seed, warmup=32)
        name, nfe = solver or "default", r["nfe"]
        r = {"model": label, **r, "solver": name}
        rows.append(r)
        png = f"{'teacher' if label == 'teacher' else 'student'}_{name}_{nfe}.png"
        save_grid(x[:100], out / png, nrow=10)
        grids[(label, name, nfe)] = png
        print(f"[demo] {label:<12} {name:<12} {nfe:>2} calls: FD {r['fd']:.3f}  {r['ms_per_sample']:.3f} ms/sample",
              flush=True)
    plot = _plot(rows, out / "quality_vs_time.png")
    total = time.time() - t_start
    write_json(out / "demo.json", {"rows": rows, "teacher": teacher_spec, "teacher_train": teacher_result,
                                   "student_train": student_result, "seconds": total})
    report = _report(rows, grids, plot, teacher_spec, teacher_result, student_result, args, total)
    (out / "report.md").write_text(report)
    print(f"\n{report}\n[demo] wrote {out / 'report.md'} in {total / 60:.1f} min", flush=True)
    return 0


def _report(rows, grids, plot, teacher_spec, teacher_result, student_result, args, total) -> str:
    ref = next(r for r in rows if r["model"] == "teacher" and r["solver"] == "dpm++2m" and r["nfe"] == 10)
    lines = ["# fewstep demo: digits", "",
             f"Teacher: {'trained here, ' + str(args.teacher_steps) + ' SpeeD iterations in ' + format(teacher_result['seconds'], '.0f') + ' s' if teacher_result else teacher_spec}; "
             f"student: sCD, {args.distill_steps} iterations in {student_result['seconds']:.0f} s, initialised from "
             f"the teacher. FD = Frechet distance in the shipped digits classifier's feature space to the 1797 "
             f"digits ({args.n} samples, labels spread over the classes). Total {total / 60:.1f} min.", "",
             "| model | sampler | model calls | FD | FD / teacher@10 | precision | recall | ms / sample |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['solver']} | {r['nfe']} | {r['fd']:.3f} | {r['fd'] / ref['fd']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['ms_per_sample']:.3f} |")
    two = next(r for r in rows if r["model"] != "teacher" and r["nfe"] == 2)
    lines += ["", f"The 2-step student is {ref['ms_per_sample'] / two['ms_per_sample']:.1f}x faster per sample than "
                  f"the teacher with DPM-Solver++ at 10 calls, at {two['fd'] / ref['fd']:.2f}x its FD.", ""]
    if plot:
        lines += [f"![quality against time]({plot})", ""]
    lines += ["| teacher, DPM-Solver++ 10 calls | sCD student, 2 steps | sCD student, 1 step |", "|---|---|---|",
              f"| ![]({grids[('teacher', 'dpm++2m', 10)]}) | ![]({grids[('sCD student', 'consistency', 2)]}) | "
              f"![]({grids[('sCD student', 'consistency', 1)]}) |", "",
              f"Reproduce: `fewstep demo --out {args.out}`; sample the models: `fewstep sample {args.out}/student "
              f"--steps 2`, `fewstep sample {args.out}/teacher --solver dpm++2m --steps 10`."]
    return "\n".join(lines) + "\n"


def _plot(rows, path) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (label, solver) in dict.fromkeys((r["model"], r["solver"]) for r in rows):
        rs = sorted((r for r in rows if r["model"] == label and r["solver"] == solver), key=lambda r: r["nfe"])
        ax.plot([r["ms_per_sample"] for r in rs], [r["fd"] for r in rs], "o-", label=f"{label} ({solver})")
        for r in rs:
            ax.annotate(str(r["nfe"]), (r["ms_per_sample"], r["fd"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel("ms per sample (CPU)"), ax.set_ylabel("FD")
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    ax.set_title("digits: quality against time (labels: model calls)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path).name


def _oracle(args) -> int:
    """Sample the exact Gaussian-mixture oracle with several solvers; RMSE to the exact ODE end."""
    import torch

    from ..processes import get_process
    from ..sample import SOLVERS, sample
    from ..testing import GaussianMixture

    process = get_process(args.process)
    g = GaussianMixture.random(d=16, K=8, std_range=(0.2, 0.5), seed=args.seed)
    n = 512
    noise = torch.randn(n, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(args.seed))
    exact = g.ode(noise * process.prior_std(), process.t_max, 0.0, process)
    steps = [int(s) for s in args.steps.split(",")]
    print(f"exact Gaussian-mixture oracle (d=16, K=8), {n} samples, {process!r}: RMSE to the exact ODE end point")
    print(f"{'solver':<14}" + "".join(f"{s:>9}" for s in steps))
    for name in ["default", "ddim", "dpm++2m", "dpm++3m", "unipc", "heun"]:
        errs = [math.sqrt(float(((sample(g.denoiser(process), noise, solver=None if name == "default" else name,
                                         steps=s) - exact) ** 2).mean())) for s in steps]
        print(f"{name:<14}" + "".join(f"{e:>9.4f}" for e in errs))
    print(f"\nsolvers: {', '.join(SOLVERS)}, consistency")
    return 0
