"""The benchmark scripts: the consistency benchmark's speed-up at equal FD, and smoke runs of the
consistency, solver and training-speed benchmarks at tiny sizes, so that they keep running and writing
their tables (the figures themselves live in BENCHMARKS.md)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses defined in the script look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def consistency():
    return _script("consistency")


TEACHER = [{"nfe": 5, "fd": 0.8, "ms_per_sample": 2.0}, {"nfe": 10, "fd": 0.2, "ms_per_sample": 4.0},
           {"nfe": 20, "fd": 0.25, "ms_per_sample": 8.0}]


def test_time_at_fd_interpolates_log_log_along_the_calls(consistency):
    assert consistency.time_at_fd(TEACHER, 0.8) == (pytest.approx(2.0), True)
    ms, exact = consistency.time_at_fd(TEACHER, 0.4)  # halfway between 0.8 and 0.2 in log FD
    assert exact and ms == pytest.approx(math.sqrt(2.0 * 4.0))
    # the FD curve is not monotone: the first crossing (cheapest teacher) is the one used
    assert consistency.time_at_fd(list(reversed(TEACHER)), 0.22)[0] < 4.0


def test_time_at_fd_bounds_and_never(consistency):
    # worse than the teacher's cheapest setting: its time is only an upper bound on the teacher's time
    assert consistency.time_at_fd(TEACHER, 1.5) == (2.0, False)
    # better than every teacher setting: no time at equal FD
    assert consistency.time_at_fd(TEACHER, 0.1) == (None, False)


def test_teacher_time_at_fd_takes_the_fastest_guidance_scale_that_reaches_the_fd(consistency):
    plain = [{"nfe": 5, "fd": 0.8, "ms_per_sample": 2.0}, {"nfe": 20, "fd": 0.3, "ms_per_sample": 8.0}]
    guided = [{"nfe": 5, "fd": 0.6, "ms_per_sample": 4.0, "guidance": 1.5},
              {"nfe": 20, "fd": 0.2, "ms_per_sample": 16.0, "guidance": 1.5}]
    both = plain + guided
    expect = min(consistency.time_at_fd(plain, 0.5)[0], consistency.time_at_fd(guided, 0.5)[0])
    assert consistency.teacher_time_at_fd(both, 0.5) == (pytest.approx(expect), True)
    assert consistency.teacher_time_at_fd(both, 0.25) == consistency.time_at_fd(guided, 0.25)  # guided only
    # an exact time on one curve beats a bound on another; bounds only when no curve reaches the FD
    assert consistency.teacher_time_at_fd(both, 0.7) == consistency.time_at_fd(plain, 0.7)
    assert consistency.teacher_time_at_fd(both, 0.9) == (2.0, False)
    assert consistency.teacher_time_at_fd(both, 0.1) == (None, False)


def test_consistency_benchmark_smoke(consistency, tmp_path):
    assert consistency.main(["--students", "sct=digits-sct", "--teacher-nfe", "3,4", "--teacher-solvers", "dpm++2m",
                             "--student-steps", "1,2", "--n", "64", "--batch", "64", "--repeats", "1", "--device", "cpu",
                             "--out", str(tmp_path)]) == 0
    text = (tmp_path / "consistency_digits.md").read_text()
    assert "batch 64, CPU " in text  # the hardware the times were taken on
    assert "Network parameters: teacher 1,742,433, sct 1,742,433." in text
    rows = json.loads((tmp_path / "consistency_digits.json").read_text())
    assert [(r["model"], r["nfe"]) for r in rows] == [("teacher", 3), ("teacher", 4), ("sct", 1), ("sct", 2)]
    assert all(r["fd"] > 0 and r["ms_per_sample"] > 0 for r in rows)
    # at 3 / 4 calls the teacher is far worse than the student (64 samples: FD ~4 / ~3 against ~1.6): no
    # teacher setting reaches the student's FD, so the student is compared with the teacher's best setting
    for r in rows[2:]:
        assert r["speedup_equal_fd"] is None and "faster than its best, 4 calls" in r["speedup_text"], r
    assert (tmp_path / "consistency_digits.png").stat().st_size > 0


def test_solver_benchmark_smoke(tmp_path):
    """benchmarks/solvers.py --quick on 50 samples: the headline table against diffusers is produced for
    both mixtures; at 20 calls the default is far below every diffusers scheduler (ratio ~0.2 at any
    sample count), which a broken default or a broken diffusers adapter would change."""
    solvers = _script("solvers")
    solvers.main(["--quick", "--samples", "50", "--skip", "research,timing,optimise,heldout,processes",
                  "--out", str(tmp_path)])
    result = json.loads((tmp_path / "solvers.json").read_text())
    for mixture in ("sharp", "smooth"):
        row = result["headline"][mixture]["fewstep default"]
        assert set(row) == {"5", "10", "20"}
        assert all(r["rmse"] > 0 and isinstance(r["best_diffusers"][0], str) for r in row.values())
        assert row["20"]["ratio"] < 0.5, (mixture, row["20"])
    assert "## Headline: fewstep vs the best diffusers scheduler" in (tmp_path / "solvers.md").read_text()
    assert (tmp_path / "solvers_rmse.png").stat().st_size > 0


def test_training_speed_benchmark_smoke(tmp_path):
    """benchmarks/training_speed.py for 20 iterations: both methods trained, evaluated on the grid of
    iterations, summarised against uniform's final FD, plot and JSON written."""
    training_speed = _script("training_speed")
    training_speed.main(["--iters", "20", "--eval-every", "10", "--seeds", "0", "--methods", "uniform,speed",
                         "--samples", "64", "--reference", "200", "--sample-steps", "3", "--fresh",
                         "--out", str(tmp_path), "--scratch", str(tmp_path), "--name", "smoke"])
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert result["iters"] == [10, 20]
    assert set(result["median"]) == {"uniform", "speed"}
    assert all(len(c) == 2 and all(math.isfinite(v) and v > 0 for v in c) for c in result["median"].values())
    assert result["target"] == result["median"]["uniform"][-1]
    assert (tmp_path / "smoke.png").stat().st_size > 0
    stored = [json.loads(line) for line in (tmp_path / "training_speed_digits.runs.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in stored) == ["speed", "uniform"]  # resumable: each finished run is kept


def test_consistency_benchmark_reuses_teacher_rows_of_the_same_setting_only(consistency, tmp_path):
    """--teacher-rows: a second run scores new students against the first run's teacher rows (copied,
    not re-measured, or only re-timed with --retime-teacher); rows measured with other seeds, another sample count or from an older JSON without
    a recorded setting are refused with the reason."""
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--teacher-solvers", "dpm++2m", "--n", "32", "--batch", "32", "--repeats", "1", "--student-steps", "1"]
    consistency.main(["--students", "", "--teacher-nfe", "3", *common, "--out", str(first)])
    stored = json.loads((first / "consistency_digits.json").read_text())
    assert [r["model"] for r in stored] == ["teacher"]
    assert stored[0]["setting"] == {"teacher": "digits-teacher", "n": 32, "batch": 32, "seeds": [0]}
    rows_file = str(first / "consistency_digits.json")
    consistency.main(["--students", "sct=digits-sct", "--teacher-rows", rows_file, *common, "--out", str(second)])
    rows = json.loads((second / "consistency_digits.json").read_text())
    assert rows[0] == stored[0] and [r["model"] for r in rows] == ["teacher", "sct"]
    assert f"Teacher rows reused from `{rows_file}` (timed in that run)" in (second / "consistency_digits.md").read_text()
    # --retime-teacher: the same FD, the teacher timed again in this run (the stored time kept beside it)
    consistency.main(["--students", "", "--teacher-rows", rows_file, "--retime-teacher", *common, "--out", str(second)])
    retimed = json.loads((second / "consistency_digits.json").read_text())[0]
    assert retimed["fd"] == stored[0]["fd"] and retimed["ms_per_sample_stored"] == stored[0]["ms_per_sample"]
    assert retimed["ms_per_sample"] > 0 and retimed["ms_per_sample"] != stored[0]["ms_per_sample"]
    assert "timed again in this one" in (second / "consistency_digits.md").read_text()
    with pytest.raises(SystemExit, match="give --teacher-rows"):
        consistency.main(["--students", "", "--retime-teacher", *common])
    # --teacher-guidance: guided teacher rows (the reference for students distilled with that scale),
    # recorded in the rows and their setting, so that unguided rows are not reused for them
    guided = tmp_path / "guided"
    consistency.main(["--students", "", "--teacher-nfe", "3", "--teacher-guidance", "2", *common, "--out", str(guided)])
    g_row = json.loads((guided / "consistency_digits.json").read_text())[0]
    assert g_row["guidance"] == 2.0 and g_row["setting"]["guidance"] == 2.0 and g_row["fd"] != stored[0]["fd"]
    assert "dpm++2m (CFG 2)" in (guided / "consistency_digits.md").read_text()
    with pytest.raises(SystemExit, match="run the teacher again"):
        consistency.main(["--students", "", "--teacher-rows", rows_file, "--teacher-guidance", "2", *common])
    # rows of both scales combined: the reference is the teacher's best over them (here at 3 calls: the
    # test's ">= 20 calls" rule needs 20, so check the rows and the scale-aware labels instead)
    both = f"{rows_file},{guided / 'consistency_digits.json'}"
    consistency.main(["--students", "sct=digits-sct", "--teacher-rows", both, *common, "--out", str(tmp_path / "both")])
    mixed = json.loads((tmp_path / "both" / "consistency_digits.json").read_text())
    assert [(r["model"], r.get("guidance")) for r in mixed] == [("teacher", None), ("teacher", 2.0), ("sct", None)]
    assert mixed[2]["speedup_text"]  # the student is compared with the faster of the two curves
    with pytest.raises(SystemExit, match="run the teacher again"):  # one scale asked: the other file is refused
        consistency.main(["--students", "", "--teacher-rows", both, "--teacher-guidance", "2", *common])
    # --teacher-guidance-interval: guided only in (lo, hi]: another row and setting, combinable with the others
    interval = tmp_path / "interval"
    consistency.main(["--students", "", "--teacher-nfe", "3", "--teacher-guidance", "2", "--teacher-guidance-interval",
                      "0.5,5", *common, "--out", str(interval)])
    i_row = json.loads((interval / "consistency_digits.json").read_text())[0]
    assert i_row["guidance_interval"] == [0.5, 5.0] and i_row["setting"]["guidance_interval"] == [0.5, 5.0]
    assert i_row["fd"] not in (g_row["fd"], stored[0]["fd"])
    assert "dpm++2m (CFG 2 in (0.5, 5])" in (interval / "consistency_digits.md").read_text()
    with pytest.raises(SystemExit, match="run the teacher again"):  # the constant-scale rows are another setting
        consistency.main(["--students", "", "--teacher-rows", str(guided / "consistency_digits.json"),
                          "--teacher-guidance", "2", "--teacher-guidance-interval", "0.5,5", *common])
    consistency.main(["--students", "", "--teacher-rows", f"{both},{interval / 'consistency_digits.json'}", *common,
                      "--out", str(tmp_path / "three")])
    for bad, match in ((["--teacher-guidance-interval", "0.5,5"], "give --teacher-guidance"),
                       (["--teacher-guidance", "2", "--teacher-guidance-interval", "5,0.5"], "lo < hi")):
        with pytest.raises(SystemExit, match=match):
            consistency.main(["--students", "", *bad, *common])
    # --teacher-solvers "": students only, no ratios or speed-ups
    consistency.main(["--students", "sct=digits-sct", *common, "--teacher-solvers", "", "--out", str(tmp_path / "only")])
    only = json.loads((tmp_path / "only" / "consistency_digits.json").read_text())
    assert [r["model"] for r in only] == ["sct"] and "Targets" not in (tmp_path / "only" / "consistency_digits.md").read_text()
    with pytest.raises(SystemExit, match="seeds.*run the teacher again"):
        consistency.main(["--students", "", "--teacher-rows", rows_file, *common, "--seeds", "1", "--out", str(second)])
    stored[0].pop("setting")
    (tmp_path / "old.json").write_text(json.dumps(stored))
    with pytest.raises(SystemExit, match="no recorded setting"):
        consistency.main(["--students", "", "--teacher-rows", str(tmp_path / "old.json"), *common, "--out", str(second)])
    with pytest.raises(SystemExit, match="cannot read it"):
        consistency.main(["--students", "", "--teacher-rows", str(tmp_path / "missing.json"), *common])


def test_consistency_benchmark_samples_a_guidance_conditioned_student_at_each_scale(consistency, tmp_path):
    """--student-guidance: a student distilled over a guidance range gets a row per scale (its input, not
    CFG), recorded in the row; without the flag it is refused with the reason."""
    import torch

    from fewstep.training import Trainer, get_preset

    torch.set_num_threads(1)
    cfg = get_preset("digits-scd").replace(steps=2, batch_size=4, log_every=1, lr=1e-2, ema_half_life=1.0,
                                           scm_args={"guidance_range": [1.0, 2.0], "tangent_warmup": 1})
    Trainer(cfg, out=tmp_path / "g").fit()
    common = ["--students", f"g={tmp_path / 'g'}", "--teacher-solvers", "", "--student-steps", "1", "--n", "16",
              "--batch", "16", "--repeats", "1"]
    consistency.main([*common, "--student-guidance", "1,3", "--out", str(tmp_path / "out")])
    rows = json.loads((tmp_path / "out" / "consistency_digits.json").read_text())
    assert [(r["model"], r["student_guidance"]) for r in rows] == [("g", 1.0), ("g", 3.0)]
    assert rows[0]["fd"] != rows[1]["fd"] and rows[1]["solver"] == "consistency, input w 3"
    with pytest.raises(SystemExit, match="guidance-conditioned: give --student-guidance"):
        consistency.main([*common, "--out", str(tmp_path / "out")])


def test_consistency_handoff_reproduces_the_samplers_and_refuses_bad_pairs(tmp_path):
    """benchmarks/consistency_handoff.py on digits (64 samples): its own 2-step and teacher rows are the
    library's samplers on the same noise (FD equal to `generate`'s), the teacher continued from the
    student's intermediate state gets a row per call count, and wrong pairs or options are refused."""
    import torch

    from fewstep.commands.common import generate
    from fewstep.commands.evaluate import extractor_for, reference_features, scores
    from fewstep.pretrained import load_denoiser

    torch.set_num_threads(1)
    handoff = _script("consistency_handoff")
    common = ["--student", "digits-scd", "--teacher", "digits-teacher", "--n", "64", "--batch", "32"]
    assert handoff.main([*common, "--teacher-nfe", "3,8", "--teacher-x0-nfe", "6", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "handoff_digits.json").read_text())["rows"]
    by = {r["setting"]: r for r in rows}
    assert [r["calls"] for r in rows] == [1, 2, 4, 9, 6, 7]
    ext = extractor_for("classifier", "digits")
    real, _ = reference_features(ext, "digits")

    def fd(model, **opts):
        x = generate(load_denoiser(model), 64, seed=0, batch_size=32, progress=False, **opts)[0]
        return scores(ext, real, x)["fd"]

    assert by["student 1 step"]["fd"] == pytest.approx(fd("digits-scd", solver="consistency", steps=1), rel=1e-4)
    assert by["student 2 steps"]["fd"] == pytest.approx(fd("digits-scd", solver="consistency", steps=2), rel=1e-4)
    assert by["teacher, 6 calls (the reference)"]["fd"] == pytest.approx(fd("digits-teacher", solver="dpm++2m",
                                                                             steps=6), rel=1e-4)
    # more teacher calls from the same intermediate state: a different (finer) solution
    assert by["teacher from the student's x_mid, 3 calls"]["fd"] != by["teacher from the student's x_mid, 8 calls"]["fd"]
    assert "| student 2 steps | 2 |" in (tmp_path / "handoff_digits.md").read_text()
    assert (tmp_path / "handoff_digits.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="not a consistency model"):
        handoff.main(["--student", "digits-teacher", "--teacher", "digits-teacher", "--n", "8"])
    with pytest.raises(SystemExit, match="guidance-conditioned students only"):
        handoff.main([*common, "--student-guidance", "1.5"])
    with pytest.raises(SystemExit):
        handoff.main([*common, "--t-mid", "2.0"])
    with pytest.raises(SystemExit):
        handoff.main([*common, "--teacher-guidance-interval", "0.3,5"])


SEED_SETTING = {"teacher": "t", "n": 2000, "batch": 500, "guidance": 1.4}


def _run(path, seeds, teacher=(), student=(), setting=SEED_SETTING, label="s"):
    """A consistency.py JSON: teacher rows {nfe: [fd per seed]}, student rows {steps: [fd per seed]}."""
    rows = [{"model": "teacher", "solver": "dpm++2m", "nfe": n, "fd": sum(f) / len(f), "fd_seeds": list(f),
             "setting": {**setting, "seeds": list(seeds)}} for n, f in dict(teacher).items()]
    rows += [{"model": label, "solver": "consistency", "nfe": k, "fd": sum(f) / len(f), "fd_seeds": list(f)}
             for k, f in dict(student).items()]
    path.write_text(json.dumps(rows))
    return str(path)


def test_consistency_seeds_pools_per_seed_references(tmp_path):
    """benchmarks/consistency_seeds.py: each seed's reference is the teacher's best FD at >= 20 calls over
    every run of that seed (a teacher-only 50-call run included, 10 calls never), multi-seed runs are split
    by their fd_seeds, and the pooled figure is mean FD / mean reference, with the per-seed ratios' SE."""
    seeds = _script("consistency_seeds")
    runs = [_run(tmp_path / "a.json", [3], {10: [0.15], 20: [0.25]}, {1: [0.30], 2: [0.26]}),
            _run(tmp_path / "b.json", [3], {50: [0.24]}),
            _run(tmp_path / "c.json", [5], {20: [0.20], 50: [0.21]}, {1: [0.28], 2: [0.22]}),
            _run(tmp_path / "d.json", [6, 7], {20: [0.30, 0.20]}, {1: [0.36, 0.26], 2: [0.36, 0.21]}, label="old")]
    out = tmp_path / "pooled.md"
    assert seeds.main([*runs, "--student", "s,old", "--seeds", "3,5,6,7", "--out", str(out)]) == 0
    result = json.loads(out.with_suffix(".json").read_text())
    refs = {3: (0.24, 50), 5: (0.20, 20), 6: (0.30, 20), 7: (0.20, 20)}
    two = {3: 0.26, 5: 0.22, 6: 0.36, 7: 0.21}
    for seed, (ref, nfe) in refs.items():
        e = result["per_seed"][str(seed)]
        assert (e["ref_fd"], e["ref_nfe"]) == (pytest.approx(ref), nfe)
        assert e["2"]["ratio"] == pytest.approx(two[seed] / ref)
    ratios = [two[s] / refs[s][0] for s in refs]
    pooled = result["pooled"]["2"]
    assert pooled["ratio_of_means"] == pytest.approx(sum(two.values()) / sum(r for r, _ in refs.values()))
    assert pooled["mean_ratio"] == pytest.approx(sum(ratios) / 4)
    mean = sum(ratios) / 4
    assert pooled["se_ratio"] == pytest.approx(math.sqrt(sum((r - mean) ** 2 for r in ratios) / 3 / 4))
    text = out.read_text()
    assert "| 3 | 20: 0.2500, 50: 0.2400 | 0.2400 (50) |" in text
    assert "**1.117x**" in text and "target <= 1.1x: NOT met" in text  # 1.05 / 0.94
    # seeds 3 and 7 only: (0.26 + 0.21) / (0.24 + 0.20) = 1.068x, under the target
    seeds.main([*runs, "--student", "s,old", "--seeds", "3,7", "--out", str(out)])
    assert "**1.068x**" in out.read_text() and "target <= 1.1x: met" in out.read_text()


def test_consistency_seeds_refuses_runs_it_cannot_pool(tmp_path):
    seeds = _script("consistency_seeds")
    good = _run(tmp_path / "a.json", [3], {20: [0.25]}, {2: [0.26]})
    other_n = _run(tmp_path / "b.json", [4], {20: [0.25]}, {2: [0.26]}, setting={**SEED_SETTING, "n": 500})
    with pytest.raises(SystemExit, match="measured with"):
        seeds.main([good, other_n, "--student", "s"])
    no_teacher = tmp_path / "c.json"
    no_teacher.write_text(json.dumps([{"model": "s", "solver": "consistency", "nfe": 2, "fd": 0.3}]))
    with pytest.raises(SystemExit, match="noise seeds are unknown"):
        seeds.main([good, str(no_teacher), "--student", "s"])
    with pytest.raises(SystemExit, match="no run has noise seed 9"):
        seeds.main([good, "--student", "s", "--steps", "2", "--seeds", "3,9"])
    with pytest.raises(SystemExit, match="no 1-step row"):
        seeds.main([good, "--student", "s", "--steps", "1,2"])
    with pytest.raises(SystemExit, match="no teacher DPM-Solver"):
        seeds.main([_run(tmp_path / "e.json", [3], {10: [0.25]}, {2: [0.26]}), "--student", "s", "--steps", "2"])
    clash = _run(tmp_path / "f.json", [3], {20: [0.25]}, {2: [0.29]})
    with pytest.raises(SystemExit, match="runs disagree"):
        seeds.main([good, clash, "--student", "s", "--steps", "2"])
    with pytest.raises(SystemExit, match="cannot read"):
        seeds.main([str(tmp_path / "missing.json"), "--student", "s"])
    (tmp_path / "g.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match="not a consistency.py JSON"):
        seeds.main([str(tmp_path / "g.json"), "--student", "s"])
