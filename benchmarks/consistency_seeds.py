#!/usr/bin/env python
"""Pool `benchmarks/consistency.py` runs over noise seeds: a student's FD ratio to its teacher, per
seed and over a set of seeds fixed in advance.

Each run's JSON holds the FD of every row on every noise seed it was sampled with (`fd_seeds`, in
the order of its teacher rows' `setting.seeds`). This script splits the rows by seed, merges the
runs that share a seed (say the 20-call teacher rows of one run and the 50-call rows of another),
and for every seed takes the reference of the targets: the teacher's best DPM-Solver++(2M) FD at
>= 20 calls over all the runs of that seed. Then, per student step count:

* per seed: the student's FD, the reference and their ratio;
* pooled: mean student FD / mean reference FD (the figure the targets are judged on), and the mean
  of the per-seed ratios with its standard error (their spread over seeds, ddof 1).

Runs measured with another teacher, sample count, batch or guidance are refused, as are seeds with
no reference or no row of the student.

    python benchmarks/consistency_seeds.py benchmarks/results/run_seed3/consistency_fashion-mnist.json \\
        benchmarks/results/teacher50_seed3/consistency_fashion-mnist.json ... \\
        --student pm14-13000,pm14-1000 --seeds 3,4,5,6 --out DIR/seeds.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from consistency import TARGETS, reference_row  # noqa: E402

SAME_RUN = 1e-3  # relative FD difference allowed between two runs of the same row on the same seed


def _teacher_setting(rows, path) -> dict:
    settings = [r.get("setting") for r in rows if r.get("model") == "teacher"]
    if not settings or any(s is None for s in settings):
        raise ValueError(f"{path}: no teacher rows with a recorded setting, so its noise seeds are unknown "
                         "(run benchmarks/consistency.py with the teacher, or with --teacher-rows)")
    if any(s != settings[0] for s in settings):
        raise ValueError(f"{path}: its teacher rows were measured in different settings")
    return settings[0]


def per_seed_rows(runs) -> tuple[dict, dict]:
    """(setting without the seeds, {seed: [row with that seed's FD as "fd"]}) from [(path, rows)]."""
    common, by_seed = None, {}
    for path, rows in runs:
        setting = _teacher_setting(rows, path)
        rest = {k: v for k, v in setting.items() if k != "seeds"}
        if common is None:
            common = rest
        elif rest != common:
            raise ValueError(f"{path}: measured with {rest}, the runs before it with {common}")
        for r in rows:
            fds = r.get("fd_seeds", [r["fd"]])
            if len(fds) != len(setting["seeds"]):
                raise ValueError(f"{path}: a {r['model']} row has {len(fds)} FDs for the seeds {setting['seeds']}")
            for seed, fd in zip(setting["seeds"], fds):
                by_seed.setdefault(seed, []).append({**r, "fd": fd})
    return common or {}, by_seed


def student_fd(rows, labels, steps, seed) -> float | None:
    """The student's `steps`-step FD on one seed (its default t_mid row), `labels` being the names it has
    in the runs; runs that repeat it must agree."""
    fds = [r["fd"] for r in rows if r["model"] in labels and r["nfe"] == steps and "t_mid" not in r]
    if fds and max(fds) - min(fds) > SAME_RUN * min(fds):
        raise ValueError(f"seed {seed}: runs disagree on {'/'.join(labels)} at {steps} steps ({min(fds):.4f} .. "
                         f"{max(fds):.4f}): not the same model or sampler")
    return fds[0] if fds else None


def pool(by_seed, labels, steps_list, seeds) -> dict:
    """Per-seed and pooled ratios: {"seeds": [...], "per_seed": {seed: {...}}, "pooled": {steps: {...}}}."""
    per_seed, pooled = {}, {}
    for seed in seeds:
        rows = by_seed.get(seed)
        if not rows:
            raise ValueError(f"no run has noise seed {seed} (runs have {sorted(by_seed)})")
        ref = reference_row(rows)
        if ref is None:
            raise ValueError(f"seed {seed}: no teacher DPM-Solver++(2M) row at >= 20 calls")
        entry = {"ref_fd": ref["fd"], "ref_nfe": ref["nfe"],
                 "teacher_fd": {r["nfe"]: r["fd"] for r in rows if r["model"] == "teacher" and r["solver"] == "dpm++2m"}}
        for steps in steps_list:
            fd = student_fd(rows, labels, steps, seed)
            if fd is None:
                raise ValueError(f"seed {seed}: no {steps}-step row of student {'/'.join(labels)!r}")
            entry[steps] = {"fd": fd, "ratio": fd / ref["fd"]}
        per_seed[seed] = entry
    mean_ref = statistics.fmean(per_seed[s]["ref_fd"] for s in seeds)
    for steps in steps_list:
        ratios = [per_seed[s][steps]["ratio"] for s in seeds]
        mean_fd = statistics.fmean(per_seed[s][steps]["fd"] for s in seeds)
        se = statistics.stdev(ratios) / math.sqrt(len(ratios)) if len(ratios) > 1 else float("nan")
        pooled[steps] = {"mean_fd": mean_fd, "mean_ref_fd": mean_ref, "ratio_of_means": mean_fd / mean_ref,
                         "mean_ratio": statistics.fmean(ratios), "se_ratio": se}
    return {"seeds": list(seeds), "per_seed": per_seed, "pooled": pooled}


def table(result, student, steps_list, setting) -> str:
    seeds = result["seeds"]
    lines = [f"# {student} against its teacher over noise seeds {', '.join(map(str, seeds))}", "",
             f"Teacher setting: {setting}. Reference per seed: the teacher's best DPM-Solver++(2M) FD at >= 20 "
             "calls over the runs of that seed.", "",
             "| noise seed | teacher FD by calls | reference (calls) | "
             + " | ".join(f"{s}-step FD | ratio" for s in steps_list) + " |",
             "|---" * (3 + 2 * len(steps_list)) + "|"]
    for seed in seeds:
        e = result["per_seed"][seed]
        by_calls = ", ".join(f"{n}: {fd:.4f}" for n, fd in sorted(e["teacher_fd"].items()) if n >= 20)
        lines.append(f"| {seed} | {by_calls} | {e['ref_fd']:.4f} ({e['ref_nfe']}) | "
                     + " | ".join(f"{e[s]['fd']:.4f} | {e[s]['ratio']:.3f}x" for s in steps_list) + " |")
    p = result["pooled"]
    lines.append(f"| **mean** | | {p[steps_list[0]]['mean_ref_fd']:.4f} | "
                 + " | ".join(f"{p[s]['mean_fd']:.4f} | **{p[s]['ratio_of_means']:.3f}x**" for s in steps_list) + " |")
    lines.append("")
    for s in steps_list:
        q = p[s]
        target = TARGETS.get(s)
        verdict = (f"; target <= {target}x: {'met' if q['ratio_of_means'] <= target else 'NOT met'}"
                   if target else "")
        lines.append(f"- {s}-step: mean FD / mean reference = {q['ratio_of_means']:.3f}x; mean of the per-seed "
                     f"ratios {q['mean_ratio']:.3f}x, standard error {q['se_ratio']:.3f}{verdict}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="JSON", help="consistency_<dataset>.json files of consistency.py")
    ap.add_argument("--student", required=True, help="the student's label in those runs (a comma list when "
                    "runs gave the same student different labels)")
    ap.add_argument("--steps", default="1,2", help="comma list of step counts")
    ap.add_argument("--seeds", default=None, help="comma list of the noise seeds to pool (default: every seed found)")
    ap.add_argument("--out", default=None, help="also write the table (.md) and the figures (.json beside it)")
    args = ap.parse_args(argv)
    try:
        steps_list = [int(v) for v in args.steps.split(",")]
        runs = []
        for path in args.runs:
            try:
                rows = json.loads(Path(path).read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: cannot read it ({e})")
            if not isinstance(rows, list) or not all(isinstance(r, dict) and {"model", "solver", "nfe", "fd"} <= r.keys()
                                                     for r in rows):
                raise ValueError(f"{path}: not a consistency.py JSON (a list of rows with model, solver, nfe, fd)")
            runs.append((path, rows))
        setting, by_seed = per_seed_rows(runs)
        seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else sorted(by_seed)
        labels = args.student.split(",")
        result = pool(by_seed, labels, steps_list, seeds)
    except ValueError as e:
        raise SystemExit(f"consistency_seeds: {e}")
    text = table(result, labels[0], steps_list, setting)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps({"setting": setting, "student": args.student,
                                                        "runs": args.runs, **result}, indent=1))
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
