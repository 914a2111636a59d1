#!/usr/bin/env python
"""Consistency benchmark: a diffusion teacher sampled with DPM-Solver++ against its sCD / sCT students.

For a teacher (a checkpoint, run directory or shipped name) and its students (trained by
`fewstep distill`), on the teacher's dataset:

* FD (Frechet distance in the feature space of the shipped offline classifier of the dataset, to
  the training images) and precision / recall, of the teacher with DPM-Solver++(2M) (and the
  default solver) at 5-50 model calls, and of each student at 1, 2 and 4 steps;
* wall-clock per sample (same batch, same device, after a warm-up);
* `--teacher-guidance G`: the teacher sampled with classifier-free guidance (one batched call on the
  conditional and null labels per model call), the reference for students distilled with
  `scm_args.guidance=G` (which sample without guidance: it is in their weights);
* `--teacher-guidance-interval LO,HI`: that guidance only where sigma / alpha lies in (LO, HI]
  (Kynkaanniemi et al. 2024), the reference for students distilled with `scm_args.guidance_interval`;
* `--student-guidance W,...`: guidance-conditioned students (`scm_args.guidance_range`) sampled with
  each scale W as their input (a row each);
* the targets of the consistency issue: 2-step FD <= 1.1x the teacher's FD at >= 20 calls, 1-step
  <= 1.5x, and the speed-up at equal FD (the teacher's time per sample interpolated, log-log, at the
  student's FD, divided by the student's time), >= 10x.

    python benchmarks/consistency.py --students scd=runs/digits-scd
    python benchmarks/consistency.py --teacher runs/fashion-teacher --students scd=runs/f-scd,sct=runs/f-sct

`--teacher-rows JSON` reuses an earlier run's teacher rows (minutes instead of hours for a large
teacher); add `--retime-teacher` to time the teacher again in this run, since a speed-up is only
meaningful when both times were taken under the same load. A comma list of JSONs measured at several
`--teacher-guidance` scales combines them: the reference is then the teacher's best FD at >= 20 calls
over all scales, and the speed-up is against its fastest setting (any scale) that reaches the
student's FD.

Writes OUT/consistency_<dataset>.md (the tables, also printed), .json and .png.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from fewstep.commands.common import guidance_conditioned, pyplot
from fewstep.commands.evaluate import extractor_for, measure, reference_features, timed_samples
from fewstep.distill.sampling import DEFAULT_T_MID
from fewstep.guidance import check_interval
from fewstep.models.presets import count_params
from fewstep.pretrained import load_denoiser

OUT = Path(__file__).resolve().parent / "results"


def time_at_fd(teacher_rows, fd) -> tuple[float | None, bool]:
    """(the teacher's ms/sample at FD `fd`, exact): log-log interpolated along its NFE curve (exact =
    True); when the teacher's cheapest setting measured is already as good, its time (exact = False:
    an upper bound on the teacher's time at equal FD, so on the speed-up); (None, False) when the
    teacher never gets that good."""
    rows = sorted(teacher_rows, key=lambda r: r["nfe"])
    for a, b in zip(rows, rows[1:]):
        if (a["fd"] - fd) * (b["fd"] - fd) <= 0 and a["fd"] != b["fd"]:
            w = (math.log(fd) - math.log(a["fd"])) / (math.log(b["fd"]) - math.log(a["fd"]))
            ms = math.exp(math.log(a["ms_per_sample"]) + w * (math.log(b["ms_per_sample"]) - math.log(a["ms_per_sample"])))
            return ms, True
    if rows and fd >= rows[0]["fd"]:
        return rows[0]["ms_per_sample"], False
    return None, False


TARGETS = {1: 1.5, 2: 1.1}  # the consistency issue's targets: student FD / reference FD, by step count


def reference_row(rows) -> dict | None:
    """The targets' reference: the teacher's best DPM-Solver++(2M) row at >= 20 calls, or None."""
    return min((r for r in rows if r["model"] == "teacher" and r["solver"] == "dpm++2m" and r["nfe"] >= 20),
               key=lambda r: r["fd"], default=None)


GUIDANCE_KEYS = ("guidance", "guidance_interval")  # the teacher's guidance settings (rows of several may combine)


def _guidance_label(row) -> str:
    """"CFG G" or "CFG G in (LO, HI]" for a guided teacher row, "" otherwise."""
    interval = row.get("guidance_interval")
    where = f" in ({interval[0]:g}, {interval[1]:g}]" if interval else ""
    return f"CFG {row['guidance']:g}{where}" if row.get("guidance") else ""


def _cfg(row) -> str:
    label = _guidance_label(row)
    return f", {label}" if label else ""


def teacher_time_at_fd(teacher_rows, fd) -> tuple[float | None, bool]:
    """`time_at_fd` over teacher rows that may hold several guidance scales: each scale's NFE curve
    separately, then the fastest teacher setting that reaches FD `fd` (exact times before bounds)."""
    curves = {}
    for r in teacher_rows:
        curves.setdefault(tuple(str(r.get(k)) for k in GUIDANCE_KEYS), []).append(r)
    found = [time_at_fd(rows, fd) for rows in curves.values()]
    for want in (True, False):
        times = [ms for ms, exact in found if ms is not None and exact is want]
        if times:
            return min(times), want
    return None, False


def load_teacher_rows(paths: str, setting: dict) -> list[dict]:
    """The teacher rows of earlier runs' JSONs (a comma list), refused unless they were measured in
    `setting` (the same teacher, samples per seed, batch and noise seeds): FD ratios against another
    setting's teacher would be meaningless. Guidance: rows of several scales may be combined (the
    reference is then the teacher's best), unless `setting` asks for one scale."""
    rows = []
    for path in filter(None, paths.split(",")):
        try:
            stored = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"--teacher-rows {path}: cannot read it ({e})")
        found = [r for r in stored if isinstance(r, dict) and r.get("model") == "teacher"]
        if not found:
            raise SystemExit(f"--teacher-rows {path}: no teacher rows in it")
        for r in found:
            have = r.get("setting")
            same = have is not None and {k: v for k, v in have.items() if k not in GUIDANCE_KEYS} == \
                {k: v for k, v in setting.items() if k not in GUIDANCE_KEYS}
            if not same or ("guidance" in setting and any(have.get(k) != setting.get(k) for k in GUIDANCE_KEYS)):
                raise SystemExit(f"--teacher-rows {path}: its teacher rows were measured with "
                                 f"{have or 'no recorded setting (an older run)'}, this run asks for "
                                 f"{setting}; run the teacher again")
        rows += found
    return rows


def device_name(device: str) -> str:
    """The hardware a run was timed on, for the table's header."""
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name(torch.device(device))}"
    return f"CPU {platform.processor() or platform.machine()}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="digits-teacher")
    ap.add_argument("--students", default="scd=digits-scd", help="comma list of label=checkpoint|run dir|name")
    ap.add_argument("--teacher-nfe", default="5,10,20,50")
    ap.add_argument("--teacher-solvers", default="dpm++2m,default", help="comma list; empty: students only")
    ap.add_argument("--teacher-guidance", type=float, default=1.0,
                    help="classifier-free guidance scale of the teacher rows (compare students distilled with "
                    "scm_args.guidance = G against the teacher sampled with the same G)")
    ap.add_argument("--teacher-guidance-interval", default=None, metavar="LO,HI",
                    help="guide the teacher only where sigma / alpha lies in (LO, HI] (needs --teacher-guidance)")
    ap.add_argument("--student-guidance", default=None, metavar="W[,W...]",
                    help="guidance scales at which guidance-conditioned students (scm_args.guidance_range) are "
                    "sampled, a row each (their input, not CFG); other students ignore it")
    ap.add_argument("--student-steps", default="1,2,4")
    ap.add_argument("--t-mid", default=str(DEFAULT_T_MID), help="comma list of the 2-step samplers' intermediate "
                    "TrigFlow times (a row each; the first is the one the targets use)")
    ap.add_argument("--n", type=int, default=2000, help="samples per setting")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2, help="timing repeats (min is reported)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]; teacher rows reused with --teacher-rows keep "
                    "the times of the device they were measured on (add --retime-teacher)")
    ap.add_argument("--seeds", default="0", help="comma list of noise seeds; FD / precision / recall are averaged "
                    "over them (timing uses the first)")
    ap.add_argument("--teacher-rows", default=None, metavar="JSON[,JSON...]",
                    help="reuse the teacher rows of earlier runs' consistency_<dataset>.json (same teacher, --n, "
                    "--batch and --seeds) instead of sampling the teacher again; --teacher-nfe / --teacher-solvers "
                    "are then ignored. Files of several --teacher-guidance scales may be combined: the reference "
                    "is then the teacher's best FD over them, the speed-up against its fastest setting")
    ap.add_argument("--retime-teacher", action="store_true",
                    help="with --teacher-rows: keep their FD but time the teacher again in this run (one batch per "
                    "row, same warm-up and repeats), so that teacher and student times share this run's load")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    seeds = [int(v) for v in args.seeds.split(",")]
    t_mids = [float(v) for v in args.t_mid.split(",")]
    student_ws = [float(v) for v in args.student_guidance.split(",")] if args.student_guidance else []
    teacher_cfg = {"guidance": args.teacher_guidance} if args.teacher_guidance != 1.0 else {}
    if args.teacher_guidance_interval:
        if not teacher_cfg:
            raise SystemExit("--teacher-guidance-interval limits the teacher's guidance: give --teacher-guidance G")
        try:
            teacher_cfg["guidance_interval"] = list(check_interval(args.teacher_guidance_interval.split(",")))
        except ValueError as e:
            raise SystemExit(f"--teacher-guidance-interval: {e}")
    setting = {"teacher": args.teacher, "n": args.n, "batch": args.batch, "seeds": seeds, **teacher_cfg}
    if args.retime_teacher and not args.teacher_rows:
        raise SystemExit("--retime-teacher re-times reused teacher rows: give --teacher-rows")
    rows = load_teacher_rows(args.teacher_rows, setting) if args.teacher_rows else []  # before any costly work
    T = load_denoiser(args.teacher, device=args.device)
    dataset = T.config["dataset"]
    ext = extractor_for("classifier", dataset, device=args.device)
    real, _ = reference_features(ext, dataset)
    students = []  # loaded and checked before the teacher is sampled, which may take hours
    for spec in filter(None, args.students.split(",")):
        label, _, path = spec.partition("=")
        S = load_denoiser(path, device=args.device)
        if S.config["dataset"] != dataset:
            raise SystemExit(f"student {path} was trained on {S.config['dataset']}, the teacher on {dataset}")
        if guidance_conditioned(S) and not student_ws:
            raise SystemExit(f"student {path} is guidance-conditioned: give --student-guidance W[,W...]")
        students.append((label, S))

    def run(D, solver, steps, **options):
        """measure() on every seed: timing from the first (with warm-up and repeats), scores averaged."""
        runs = [measure(D, ext, real, args.n, solver=solver, steps=steps, seed=s, batch_size=args.batch,
                        device=args.device,
                        warmup=min(64, args.n) if i == 0 else 0, repeats=args.repeats if i == 0 else 1, **options)[1]
                for i, s in enumerate(seeds)]
        r = dict(runs[0])
        for key in ("fd", "precision", "recall"):
            r[key] = sum(x[key] for x in runs) / len(runs)
        r["fd_seeds"] = [x["fd"] for x in runs]
        return r

    params = {"teacher": count_params(T.model)}
    for r in rows if args.retime_teacher else []:
        r["ms_per_sample_stored"] = r["ms_per_sample"]
        batch = min(args.batch, args.n)  # one batch of the size the students are sampled in
        r["ms_per_sample"] = timed_samples(T, batch, solver=None if r["solver"] == "default" else r["solver"],
                                           steps=r["nfe"], seed=seeds[0], batch_size=batch, device=args.device,
                                           warmup=min(64, batch),
                                           repeats=args.repeats, guidance=r.get("guidance"),
                                           guidance_interval=r.get("guidance_interval"))[2]
        print(f"teacher {r['solver']:<9} NFE {r['nfe']:>3}: re-timed {r['ms_per_sample']:.3f} ms/sample "
              f"(stored {r['ms_per_sample_stored']:.3f})", flush=True)
    for solver in [] if args.teacher_rows else filter(None, args.teacher_solvers.split(",")):
        for nfe in map(int, filter(None, args.teacher_nfe.split(","))):
            r = run(T, None if solver == "default" else solver, nfe, **teacher_cfg)
            r.update(model="teacher", solver=solver, setting=setting, **teacher_cfg)
            rows.append(r)
            print(f"teacher {solver:<9} NFE {nfe:>3}: FD {r['fd']:.4f}  {r['ms_per_sample']:.3f} ms/sample", flush=True)
    for label, S in students:
        params[label] = count_params(S.model)
        for w in student_ws if guidance_conditioned(S) else [None]:
            for steps in map(int, args.student_steps.split(",")):
                for k, t_mid in enumerate(t_mids if steps == 2 else [None]):
                    r = run(S, "consistency", steps, **({} if t_mid is None else {"t_mid": t_mid}),
                            **({} if w is None else {"guidance": w}))
                    r["model"] = label
                    if k:  # the sweep's further t_mid rows (the first is the one the targets use)
                        r.update(solver=f"consistency, t_mid {t_mid:g}", t_mid=t_mid)
                    if w is not None:
                        r.update(solver=f"{r['solver']}, input w {w:g}", student_guidance=w)
                    print(f"{label:<7} {steps} step(s) [{r['solver']}]: FD {r['fd']:.4f}  "
                          f"{r['ms_per_sample']:.3f} ms/sample", flush=True)
                    rows.append(r)

    dpm = [r for r in rows if r["model"] == "teacher" and r["solver"] == "dpm++2m"]
    ref_row = reference_row(rows)
    ref = ref_row["fd"] if ref_row else None
    best = min(dpm, key=lambda d: (d["fd"], d["ms_per_sample"]), default=None)  # the teacher's best setting
    lines = [f"# Consistency benchmark: {dataset}", "",
             f"Teacher `{args.teacher}`; students {args.students}; FD = Frechet distance in the shipped "
             f"{dataset} classifier's feature space to the {len(real)} training images; {args.n} samples per "
             f"setting and seed (labels spread over the classes; FD, precision, recall: mean over noise seeds "
             f"{args.seeds}, min-max in brackets), batch {args.batch}, {device_name(args.device)}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads; time = min of {args.repeats} runs."
             + (f" Teacher rows reused from `{args.teacher_rows}` ("
                + ("FD from that run, timed again in this one" if args.retime_teacher else "timed in that run")
                + ")." if args.teacher_rows else ""),
             "",
             f"Command: `python benchmarks/consistency.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             "Network parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()) + ".", "",
             "| model | sampler | model calls | FD | FD / teacher FD (>= 20 calls) | precision | recall | ms / sample "
             "| speed-up at equal FD |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['fd'] / ref:.2f}" if ref else "-"
        speed = "-"
        if r["model"] != "teacher" and dpm:
            t_eq, exact = teacher_time_at_fd(dpm, r["fd"])
            bound = "" if exact else "at most "
            if t_eq:
                speed = f"{bound}{t_eq / r['ms_per_sample']:.1f}x"
            else:  # better than every teacher setting: compare with the teacher's best one
                speed = (f"teacher never as good ({best['ms_per_sample'] / r['ms_per_sample']:.1f}x faster than "
                         f"its best, {best['nfe']} calls{_cfg(best)})")
            r["speedup_equal_fd"] = t_eq / r["ms_per_sample"] if t_eq else None
            r["speedup_text"] = speed
        spread = f" [{min(r['fd_seeds']):.4f}, {max(r['fd_seeds']):.4f}]" if len(r["fd_seeds"]) > 1 else ""
        cfg_label = f" ({_guidance_label(r)})" if r.get("guidance") else ""
        lines.append(f"| {r['model']} | {r['solver']}{cfg_label} | {r['nfe']} | {r['fd']:.4f}{spread} | {ratio} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['ms_per_sample']:.3f} | {speed} |")
    if ref:
        lines += ["", f"Targets (teacher reference: best DPM-Solver++ FD at >= 20 calls = {ref:.4f}, "
                      f"{ref_row['nfe']} calls{_cfg(ref_row)}):"]
        for r in rows:
            if r["model"] != "teacher" and r["nfe"] in TARGETS and "t_mid" not in r:
                limit = TARGETS[r["nfe"]]
                ok = r["fd"] <= limit * ref
                lines.append(f"- {r['model']} {r['nfe']}-step: FD {r['fd']:.4f} = {r['fd'] / ref:.2f}x teacher "
                             f"(target <= {limit}x): {'met' if ok else 'NOT met'}; speed-up at equal FD "
                             f"{r['speedup_text']} (target >= 10x)")
    lines += ["", f"_Total time {(time.time() - t_start) / 60:.1f} min._"]
    text = "\n".join(lines)
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"consistency_{dataset}.md").write_text(text + "\n")
    (out / f"consistency_{dataset}.json").write_text(json.dumps(rows, indent=1))
    _plot(rows, out / f"consistency_{dataset}.png", dataset)
    print(f"wrote {out}/consistency_{dataset}.md, .json, .png")
    return 0


def _plot(rows, path, dataset) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups = {}
    for r in rows:
        groups.setdefault(f"{r['model']} ({r['solver']}{_cfg(r)})", []).append(r)
    for label, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["nfe"])
        axes[0].plot([r["nfe"] for r in rs], [r["fd"] for r in rs], "o-", label=label)
        axes[1].plot([r["ms_per_sample"] for r in rs], [r["fd"] for r in rs], "o-", label=label)
    for ax, xl in zip(axes, ("model calls", "ms per sample")):
        ax.set_xscale("log"), ax.set_yscale("log"), ax.set_xlabel(xl), ax.set_ylabel("FD"), ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{dataset}: teacher (DPM-Solver++) vs consistency students")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
