#!/usr/bin/env python
"""Which step limits a 2-step consistency student: its first step, or its second?

The 2-step sampler (sCM) maps pure noise at t_max to x0_1 = f(x_T, t_max), re-noises it to
x_mid = cos(t_mid) x0_1 + sin(t_mid) sd z and returns f(x_mid, t_mid). This script hands the state
over between student and teacher, on the same noise (seeds), and reports FD / precision / recall of:

* `student 1 step`: x0_1;
* `student 2 steps`: f(x_mid, t_mid), the student's own 2-step samples;
* `teacher from the student's x_mid, K calls`: the teacher's ODE (DPM-Solver++) from the same x_mid
  at t_mid to 0 (`--teacher-nfe K,...`). If this is no better than the student's second step, the
  second step loses nothing: the 2-step gap comes from the first step's x0_1;
* with `--teacher-x0-nfe M`: the teacher's own samples from the same pure noise (M calls: the
  reference), and the student's second step from *those* samples re-noised with the same z: what
  the second step gives when the first step is perfect.

    python benchmarks/consistency_handoff.py --student benchmarks/models/fashion-t32-scd-g14-12000.json \\
        --teacher fashion-teacher --student-guidance 1.4 --teacher-guidance 1.4 \\
        --teacher-guidance-interval 0.28,5.42 --teacher-nfe 10 --n 2000 --seeds 0

Writes OUT/handoff_<dataset>.md (the table, also printed), .json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from fewstep.commands.common import guidance_conditioned, pyplot
from fewstep.commands.evaluate import extractor_for, reference_features, scores
from fewstep.distill.sampling import DEFAULT_T_MID
from fewstep.guidance import check_interval
from fewstep.pretrained import load_denoiser
from fewstep.processes import TrigFlow
from fewstep.sample import sample


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", required=True, help="consistency student: checkpoint, run directory or model file")
    p.add_argument("--teacher", required=True, help="diffusion teacher: checkpoint, run directory or shipped name")
    p.add_argument("--student-guidance", type=float, default=None,
                   help="input scale of a guidance-conditioned student (required for one)")
    p.add_argument("--teacher-guidance", type=float, default=None, help="CFG scale of the teacher")
    p.add_argument("--teacher-guidance-interval", default=None, help="LO,HI: the teacher's CFG only there")
    p.add_argument("--teacher-nfe", default="10", help="teacher calls from the student's x_mid (comma list)")
    p.add_argument("--teacher-x0-nfe", type=int, default=0,
                   help="also the teacher's own samples at this many calls, and the student's second step from them")
    p.add_argument("--t-mid", type=float, default=DEFAULT_T_MID)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--seeds", default="0")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="benchmarks/out/handoff")
    args = p.parse_args(argv)
    args.teacher_nfe, args.seeds = _ints(args.teacher_nfe), _ints(args.seeds)
    if not 0.0 < args.t_mid < math.pi / 2:
        p.error(f"--t-mid must lie in (0, pi/2), got {args.t_mid}")
    if any(k < 1 for k in args.teacher_nfe) or args.teacher_x0_nfe < 0:
        p.error("--teacher-nfe / --teacher-x0-nfe: model calls must be positive")
    if args.n < 2 or args.batch < 1:
        p.error("--n must be at least 2 and --batch positive")
    if args.teacher_guidance_interval is not None:
        if args.teacher_guidance is None:
            p.error("--teacher-guidance-interval needs --teacher-guidance")
        try:
            args.teacher_guidance_interval = check_interval(_floats(args.teacher_guidance_interval))
        except ValueError as e:
            p.error(str(e))
    return args


class Handoff:
    """The student's two steps and the teacher's ODE on one pair of loaded models."""

    def __init__(self, S, T, args):
        if not isinstance(S.process, TrigFlow):
            raise SystemExit(f"--student {args.student} is not a TrigFlow consistency student "
                             f"(its process is {type(S.process).__name__})")
        if getattr(S, "method", None) not in ("scd", "sct"):
            raise SystemExit(f"--student {args.student} is not a consistency model (trained by fewstep distill)")
        if tuple(S.sample_shape) != tuple(T.sample_shape) or S.num_classes != T.num_classes:
            raise SystemExit("student and teacher differ in sample shape or classes")
        self.S, self.T, self.args = S, T, args
        self.kw = {}
        if guidance_conditioned(S):
            if args.student_guidance is None:
                raise SystemExit("this student is guidance-conditioned: give --student-guidance")
            self.kw["guidance"] = args.student_guidance
        elif args.student_guidance is not None:
            raise SystemExit("--student-guidance is for guidance-conditioned students only")

    def student(self, x, t: float, y):
        kw = dict(self.kw, **({"class_labels": y} if y is not None else {}))
        return self.S(x, torch.tensor(t, dtype=torch.float64), **kw).float()

    def teacher(self, x, nfe: int, y, t_start: float | None = None):
        """The teacher's DPM-Solver++ samples from x: pure noise N(0, I) when t_start is None, else a
        TrigFlow state at t_start (mapped to the teacher's process at equal SNR)."""
        a = self.args
        opts = {}
        if y is not None:
            opts["class_labels"] = y
            if a.teacher_guidance is not None and a.teacher_guidance != 1.0:
                opts.update(uncond={"class_labels": torch.full_like(y, self.T.num_classes)},
                            guidance_scale=a.teacher_guidance, guidance_interval=a.teacher_guidance_interval)
        elif a.teacher_guidance is not None:
            raise SystemExit("--teacher-guidance needs a conditional teacher")
        if t_start is None:
            return sample(self.T, x, solver="dpm++2m", steps=nfe, **opts).float()
        proc = self.T.process
        lam = self.S.process.lambda_(torch.tensor(t_start, dtype=torch.float64))
        tp = proc.t_of_lambda(lam)
        alpha, _ = proc.alpha_sigma(tp)
        x_p = x * float(alpha) / math.cos(t_start)  # the same state at equal SNR on the teacher's process
        return sample(self.T, x_p, solver="dpm++2m", steps=nfe, t_start=float(tp), scale_noise=False, **opts).float()


def run_seed(h: Handoff, seed: int, score, log) -> list[dict]:
    a, S = h.args, h.S
    sd = S.process.sigma_data
    noise = torch.randn(a.n, *S.sample_shape, generator=torch.Generator().manual_seed(seed))
    gz = torch.Generator().manual_seed(seed + 1)  # the re-noising stream, as `fewstep eval` draws it
    y = (torch.arange(a.n) % S.num_classes).long() if S.num_classes else None
    c, s = math.cos(a.t_mid), math.sin(a.t_mid)
    parts = {"x0_1": [], "x_mid": [], "z": []}
    with torch.no_grad():
        for i in range(0, a.n, a.batch):
            yy = None if y is None else y[i:i + a.batch]
            x0 = h.student(noise[i:i + a.batch] * sd, S.process.t_max, yy)
            z = torch.randn(x0.shape, generator=gz)
            parts["x0_1"].append(x0), parts["z"].append(z), parts["x_mid"].append(c * x0 + s * sd * z)
    x0_1, z, x_mid = (torch.cat(parts[k]) for k in ("x0_1", "z", "x_mid"))

    def batched(fn, *xs):
        with torch.no_grad():
            return torch.cat([fn(*(x[i:i + a.batch] for x in xs), None if y is None else y[i:i + a.batch])
                              for i in range(0, a.n, a.batch)])

    rows = []

    def row(name, x, calls, t0):
        r = {"seed": seed, "setting": name, "calls": calls, **score(x), "seconds": time.perf_counter() - t0}
        log(f"seed {seed}: {name}: FD {r['fd']:.4f} ({r['seconds']:.0f} s)")
        rows.append(r)

    t0 = time.perf_counter()
    row("student 1 step", x0_1, 1, t0)
    t0 = time.perf_counter()
    row("student 2 steps", batched(lambda x, yy: h.student(x, a.t_mid, yy), x_mid), 2, t0)
    for k in a.teacher_nfe:
        t0 = time.perf_counter()
        row(f"teacher from the student's x_mid, {k} calls",
            batched(lambda x, yy: h.teacher(x, k, yy, t_start=a.t_mid), x_mid), 1 + k, t0)
    if a.teacher_x0_nfe:
        m = a.teacher_x0_nfe
        t0 = time.perf_counter()
        x0_t = batched(lambda x, yy: h.teacher(x, m, yy), noise)
        row(f"teacher, {m} calls (the reference)", x0_t, m, t0)
        t0 = time.perf_counter()
        row(f"student's 2nd step from the teacher's samples ({m} calls) at t_mid",
            batched(lambda x, zz, yy: h.student(c * x + s * sd * zz, a.t_mid, yy), x0_t, z), m + 1, t0)
    return rows


def table(rows, seeds) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    head = "| setting | calls | " + " | ".join(f"FD seed {s}" for s in seeds) + " | mean FD | precision | recall |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in settings:
        rs = [r for r in rows if r["setting"] == name]
        by_seed = {r["seed"]: r for r in rs}
        mean = lambda key: sum(r[key] for r in rs) / len(rs)  # noqa: E731
        lines.append(f"| {name} | {rs[0]['calls']} | " + " | ".join(f"{by_seed[s]['fd']:.4f}" for s in seeds)
                     + f" | {mean('fd'):.4f} | {mean('precision'):.3f} | {mean('recall'):.3f} |")
    return "\n".join(lines)


def _plot(rows, path) -> None:
    plt = pyplot()
    if plt is None:
        return
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    means = [sum(r["fd"] for r in rows if r["setting"] == n) / sum(r["setting"] == n for r in rows) for n in settings]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(settings) + 1.5))
    ax.barh(range(len(settings)), means)
    ax.set_yticks(range(len(settings)), settings, fontsize=8)
    ax.invert_yaxis(), ax.set_xlabel("FD (mean over seeds)"), ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        S, T = load_denoiser(args.student), load_denoiser(args.teacher)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    h = Handoff(S, T, args)
    dataset = S.config["dataset"]
    ext = extractor_for("classifier", dataset)
    real, _ = reference_features(ext, dataset)
    rows = []
    for seed in args.seeds:
        rows += run_seed(h, seed, lambda x: scores(ext, real, x), lambda m: print(m, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([
        f"# 2-step hand-off: {args.student} and teacher {args.teacher} on {dataset}", "",
        f"t_mid {args.t_mid}, {args.n} samples per seed, student input scale {args.student_guidance}, teacher CFG "
        f"{args.teacher_guidance} in {args.teacher_guidance_interval}, DPM-Solver++; FD in the shipped classifier's "
        "features.", "", table(rows, args.seeds), ""])
    print(text)
    (out / f"handoff_{dataset}.md").write_text(text)
    (out / f"handoff_{dataset}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    _plot(rows, out / f"handoff_{dataset}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
