"""The command line end to end on a tiny training run, and its one-line errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from fewstep import sample
from fewstep.cli import main
from fewstep.pretrained import load_denoiser


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "digits-tiny", "steps=10", "--out", str(out), "--no-progress"]) == 0
    return out


def test_sample_eval_bench(tiny_run, tmp_path, capsys):
    s = tmp_path / "s"
    assert main(["sample", str(tiny_run), "--n", "12", "--steps", "4", "--out", str(s)]) == 0
    png = (s / "samples.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    with np.load(s / "samples.npz") as f:
        assert f["images"].shape == (12, 1, 8, 8) and f["labels"].tolist() == [i % 10 for i in range(12)]
    assert main(["eval", str(s / "samples.npz"), "--dataset", "digits", "--out", str(tmp_path / "e")]) == 0
    res = json.loads((tmp_path / "e" / "eval.json").read_text())["result"]
    assert res["fd"] > 0 and 0 <= res["precision"] <= 1
    assert main(["bench", str(tiny_run), "--n", "40", "--steps", "2,3", "--solvers", "ddim,unipc",
                 "--out", str(tmp_path / "b")]) == 0
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert len(bench["rows"]) == 4 and bench["recommendation"] is not None
    assert "recommended:" in capsys.readouterr().out


def test_no_progress(tiny_run, tmp_path, capsys):
    """sample and eval draw a progress bar on stderr unless --no-progress is given."""
    for cmd in ("sample", "eval"):
        assert main([cmd, str(tiny_run), "--n", "6", "--steps", "2", "--out", str(tmp_path / cmd)]) == 0
        assert "sampling" in capsys.readouterr().err
        assert main([cmd, str(tiny_run), "--n", "6", "--steps", "2", "--no-progress", "--out",
                     str(tmp_path / cmd)]) == 0
        assert "sampling" not in capsys.readouterr().err


def test_fit_solver_then_sample(tiny_run, tmp_path, capsys):
    """fit-solver writes a fitted solver that `sample --solver FILE.json` uses (with guidance too)."""
    fit = tmp_path / "fit3.json"
    assert main(["fit-solver", str(tiny_run), "--steps", "3", "--n", "24", "--max-iter", "2", "--reference-steps", "12",
                 "--guidance", "2", "--out", str(fit)]) == 0
    assert "fitted a 3-call solver" in capsys.readouterr().out
    meta = json.loads(fit.read_text())["meta"]
    assert meta["val_rmse"] <= meta["val_rmse_init"] and meta["guidance"] == 2.0 and meta["n_val"] == 6
    s = tmp_path / "s"
    assert main(["sample", str(tiny_run), "--solver", str(fit), "--guidance", "2", "--n", "6", "--out", str(s)]) == 0
    assert "(3 model calls each" in capsys.readouterr().out
    with np.load(s / "samples.npz") as f:
        assert f["images"].shape == (6, 1, 8, 8) and np.isfinite(f["images"]).all()
    assert main(["sample", str(tiny_run), "--solver", str(fit), "--steps", "5", "--out", str(s)]) == 2
    assert "makes 3 model calls; steps=5" in capsys.readouterr().err
    # a run directory keeps its fits in RUN/solvers/, and the loaded model samples with them by default
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["fit-solver", str(run), "--steps", "3", "--n", "8", "--max-iter", "1", "--reference-steps", "6"]) == 0
    assert (run / "solvers" / "fit-3.json").is_file()
    D = load_denoiser(str(run))
    fs = D.fitted_solvers[(3, None)]
    z = torch.randn(4, 1, 8, 8)
    y = torch.arange(4)
    torch.testing.assert_close(sample(D, z, steps=3, class_labels=y), sample(D, z, solver=fs, class_labels=y))
    # bench: "default" is sample()'s choice (here the carried fit), and fitted .json files run at their calls
    capsys.readouterr()
    assert main(["bench", str(run), "--n", "16", "--steps", "2,3", "--solvers", f"default,{run / 'solvers' / 'fit-3.json'}",
                 "--out", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "bench.json").read_text())["rows"]
    assert [(r["solver"], r["nfe"]) for r in rows] == [("default", 2), ("default", 3), ("fitted:fit-3", 3)]
    assert rows[1]["fd"] == rows[2]["fd"]


@pytest.mark.parametrize("argv,msg", [
    (["sample", "/nonexistent/run"], "neither a model file, checkpoint"),
    (["eval", "/nonexistent/x.npz", "--dataset", "digits"], "does not exist"),
    (["bench", "RUN", "--solvers", "dpm++9m"], "unknown solver"),
    (["bench", "RUN", "--steps", "0,3"], "positive integers"),
    (["sample", "RUN", "--steps", "0"], "steps must be a positive integer"),
    (["sample", "RUN", "--class", "12"], "--class must be in"),
    (["sample", "RUN", "--solver", "/nonexistent/fit.json"], "no fitted solver at"),
    (["fit-solver", "RUN", "--steps", "1"], "steps must be an integer >= 2"),
    (["eval", "NPZ", "--dataset", "digits"], "do not match"),
])
def test_bad_input_is_one_line(tiny_run, tmp_path, capsys, argv, msg):
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((4, 1, 9, 9), np.float32))
    argv = [str(tiny_run) if a == "RUN" else str(bad) if a == "NPZ" else a for a in argv]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_demo_pipeline_end_to_end_tiny(tmp_path, capsys):
    """The README's main job with tiny budgets: teacher -> DPM-Solver++ -> sCD student -> report."""
    out = tmp_path / "demo"
    assert main(["demo", "--teacher-steps", "6", "--distill-steps", "4", "--n", "40", "--out", str(out),
                 "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "| teacher | dpm++2m | 10 |" in report and "| sCD student | consistency | 2 |" in report
    for png in ("teacher_dpm++2m_10.png", "student_consistency_2.png", "student_consistency_1.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    rows = json.loads((out / "demo.json").read_text())["rows"]
    assert all(r["fd"] > 0 and r["ms_per_sample"] > 0 for r in rows)
    # interrupted demos resume from their checkpoints: a second run only re-evaluates
    assert main(["demo", "--teacher-steps", "6", "--distill-steps", "4", "--n", "40", "--out", str(out),
                 "--no-progress", "--resume"]) == 0
    assert "resumed at step 6" in capsys.readouterr().out
    assert main(["demo", "--teacher-steps", "0", "--out", str(out)]) == 2


def test_demo_oracle_table(capsys):
    assert main(["demo", "--oracle", "--steps", "4,8"]) == 0
    out = capsys.readouterr().out
    assert "default" in out and "dpm++2m" in out


def test_sample_with_a_guidance_interval(tiny_run, tmp_path, capsys):
    """--guidance-interval LO,HI limits --guidance to noise levels in (LO, HI]: the samples are those of
    sample(..., guidance_interval=...), and differ from plain CFG; bad values are one-line errors."""
    s = tmp_path / "s"
    assert main(["sample", str(tiny_run), "--n", "6", "--steps", "4", "--guidance", "3", "--guidance-interval",
                 "0.3,5", "--out", str(s)]) == 0
    D = load_denoiser(str(tiny_run))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 1, 8, 8, generator=g)
    y = torch.arange(6) % 10
    kw = dict(steps=4, class_labels=y, uncond={"class_labels": torch.full_like(y, 10)}, guidance_scale=3.0,
              generator=torch.Generator().manual_seed(1))
    want = sample(D, z, guidance_interval=(0.3, 5.0), **kw)
    with np.load(s / "samples.npz") as f:
        np.testing.assert_allclose(f["images"], want.numpy(), atol=1e-5)
        assert not np.allclose(f["images"], sample(D, z, **kw).numpy(), atol=1e-5)
    for bad, msg in ((["--guidance", "3", "--guidance-interval", "5,1"], "guidance interval needs 0 <= lo < hi"),
                     (["--guidance", "3", "--guidance-interval", "a,b"], "--guidance-interval must be LO,HI"),
                     (["--guidance-interval", "0.3,5"], "--guidance-interval needs --guidance")):
        capsys.readouterr()
        assert main(["sample", str(tiny_run), "--n", "2", "--steps", "3", *bad, "--out", str(s)]) == 2
        assert msg in capsys.readouterr().err
