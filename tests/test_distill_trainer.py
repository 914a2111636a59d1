"""sCD / sCT on the trainer: the student starts as the teacher (any prediction type), exact resume,
2-process DDP, checkpoints that load as consistency models, `fewstep distill`, bad input."""

import os
import subprocess
import sys

import pytest
import torch

from fewstep import sample
from fewstep.cli import main as fewstep_main
from fewstep.distill.reparam import TeacherParameterised
from fewstep.distill.teacher import trigflow_to_process
from fewstep.pretrained import load_denoiser
from fewstep.training import Trainer, get_preset, load_checkpoint, resolve_config


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny eps teacher on the DDPM VP process (20 steps of toy-tiny; no dropout, so that DDP ranks
    and one process draw the same numbers)."""
    out = tmp_path_factory.mktemp("teacher")
    torch.set_num_threads(1)
    Trainer(get_preset("toy-tiny"), out=out).fit()
    return out


def _scd(teacher_dir, **kw):
    base = get_preset("toy-tiny").replace(method="scd", teacher=str(teacher_dir), optimizer="radam", steps=6,
                                          batch_size=16, accum_steps=2, log_every=2,
                                          scm_args={"tangent_warmup": 3})
    return base.replace(**kw)


def _state(trainer):
    out = {f"model.{k}": v for k, v in trainer.net.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    out.update({f"loss.{k}": v for k, v in trainer.loss_fn.state_dict().items()})
    for i, st in trainer.optimizer.state_dict()["state"].items():
        out.update({f"optim.{i}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return {k: v.detach().clone() for k, v in out.items()}


def test_student_starts_as_the_teacher_and_config_says_trigflow(teacher_dir):
    trainer = Trainer(_scd(teacher_dir))
    assert trainer.config.process == "trigflow" and trainer.config.prediction == "trigflow"
    assert isinstance(trainer.net.net, TeacherParameterised)
    teacher = load_denoiser(str(teacher_dir))
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.linspace(0.05, 1.5, 8, dtype=torch.float64)
    student = trainer.net.double().eval()
    with torch.no_grad():
        x_p, t_p = trigflow_to_process(x, t, teacher.process, 0.5)
        teacher.model.double()
        torch.testing.assert_close(student.consistency(x, t), teacher(x_p, t_p), atol=1e-10, rtol=1e-10)


def test_student_init_from_an_earlier_student(tmp_path, teacher_dir):
    """student_init = a checkpoint: the new run's student starts as that (EMA) model, here an sCD
    student distilled further by sCT and by sCD from another teacher; a bad spec is refused."""
    Trainer(_scd(teacher_dir), out=tmp_path / "first").fit()
    first = load_denoiser(str(tmp_path / "first"))
    x = torch.randn(8, 2)
    t = torch.linspace(0.05, 1.5, 8)
    for cfg in (_scd(teacher_dir, student_init=str(tmp_path / "first")),
                get_preset("toy-tiny").replace(method="sct", student_init=str(tmp_path / "first"), steps=2)):
        trainer = Trainer(cfg)
        student = trainer.net.eval()
        with torch.no_grad():
            torch.testing.assert_close(student.consistency(x, t), first.model.consistency(x, t), atol=1e-6, rtol=1e-6)
        trainer.net.train()
        trainer.fit()
    with pytest.raises(ValueError, match="student_init must be"):
        Trainer(_scd(teacher_dir, student_init=str(tmp_path / "missing")))


def test_student_loads_after_its_init_is_gone(tmp_path, teacher_dir):
    """A student's checkpoint and model file record its student_init; loading them for sampling needs
    only their own weights, so they still load once that path names nothing (the init deleted or
    replaced, or the relative path read from another working directory)."""
    import shutil

    from fewstep.export import export_model

    Trainer(_scd(teacher_dir), out=tmp_path / "first").fit()
    Trainer(_scd(teacher_dir, student_init=str(tmp_path / "first"), steps=2), out=tmp_path / "second").fit()
    export_model(str(tmp_path / "second"), tmp_path / "second-file")
    x, t = torch.randn(4, 2), torch.linspace(0.1, 1.4, 4)
    with torch.no_grad():
        before = load_denoiser(str(tmp_path / "second")).model.consistency(x, t)
        shutil.rmtree(tmp_path / "first")
        for spec in (tmp_path / "second", tmp_path / "second-file.json"):
            torch.testing.assert_close(load_denoiser(str(spec)).model.consistency(x, t), before)


def test_resume_after_its_student_init_is_gone(tmp_path, teacher_dir, capsys):
    """Resuming rebuilds the student from its checkpoint's spec, not from student_init: a run goes on
    bit-identically after its init is deleted (and `--dry-run --resume` accepts it); a run with no
    checkpoint yet still needs the init."""
    import shutil

    Trainer(_scd(teacher_dir), out=tmp_path / "first").fit()
    cfg = _scd(teacher_dir, student_init=str(tmp_path / "first"), steps=4)
    straight = Trainer(cfg, out=tmp_path / "a")
    straight.fit()
    Trainer(cfg, out=tmp_path / "b").fit(until=2)
    shutil.rmtree(tmp_path / "first")
    assert fewstep_main(["distill", "--out", str(tmp_path / "b"), "--resume", "--dry-run"]) == 0
    assert "student_init" in capsys.readouterr().out
    saved = str(tmp_path / "b" / "config.yaml")
    assert fewstep_main(["distill", saved, "--out", str(tmp_path / "c"), "--resume", "--dry-run"]) == 2
    assert "not found" in capsys.readouterr().err
    resumed = Trainer(cfg, out=tmp_path / "b", resume=True)
    assert resumed.step == 2
    resumed.fit()
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with pytest.raises(ValueError, match="student_init.*not found"):
        Trainer(cfg, out=tmp_path / "c", resume=True)


def test_scd_resume_is_bit_identical(tmp_path, teacher_dir):
    cfg = _scd(teacher_dir)
    straight = Trainer(cfg, out=tmp_path / "a")
    straight.fit()
    first = Trainer(cfg, out=tmp_path / "b")
    first.fit(until=3)
    torch.manual_seed(999)
    resumed = Trainer(cfg, out=tmp_path / "b", resume=True)
    assert resumed.step == 3
    resumed.fit()
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys() and any(k.startswith("loss.weight") for k in a)  # the adaptive weight is saved
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the checkpoint loads as a consistency model; sample() then defaults to consistency sampling
    D = load_denoiser(str(tmp_path / "b"))
    assert D.method == "scd" and D.prediction == "trigflow"
    x, nfe = sample(D, torch.randn(5, 2), steps=2, return_nfe=True, generator=torch.Generator().manual_seed(0))
    assert nfe == 2 and x.shape == (5, 2) and torch.isfinite(x).all()
    meta, _ = load_checkpoint(tmp_path / "b")
    assert meta["student"]["parameterisation"] == "teacher" and meta["config"]["method"] == "scd"


def test_two_process_ddp_scd_matches_one_process(tmp_path, teacher_dir):
    overrides = [f"teacher={teacher_dir}", "method=scd", "optimizer=radam", "steps=4", "batch_size=16",
                 "accum_steps=2", "log_every=2", "scm_args={tangent_warmup: 2}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "fewstep", "distill", "toy-tiny", *overrides, "--out", str(tmp_path / "ddp"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cpu x 2" in proc.stdout
    single = Trainer(resolve_config("toy-tiny", overrides), out=tmp_path / "one")
    single.fit()
    meta, tensors = load_checkpoint(tmp_path / "ddp")
    assert meta["world_size"] == 2 and meta["step"] == 4
    for k, v in _state(single).items():
        assert torch.allclose(tensors[k].float(), v.float(), rtol=1e-4, atol=1e-6), k


def test_fewstep_distill_cli_scd_and_sct(tmp_path, teacher_dir, capsys):
    out = tmp_path / "scd"
    code = fewstep_main(["distill", "toy-tiny", "steps=3", "--teacher", str(teacher_dir), "--method", "scd",
                         "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "scd from teacher" in capsys.readouterr().out
    assert (out / "config.yaml").is_file()
    code = fewstep_main(["sample", str(out), "--solver", "consistency", "--steps", "2", "--n", "4",
                         "--out", str(tmp_path / "s")])
    assert code == 0, capsys.readouterr().err
    code = fewstep_main(["distill", "toy-tiny", "steps=3", "student_init=scratch", "--method", "sct",
                         "--out", str(tmp_path / "sct"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert load_denoiser(str(tmp_path / "sct")).method == "sct"
    # dry run prints the TrigFlow process the run will use
    assert fewstep_main(["distill", "--teacher", str(teacher_dir), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "process: trigflow" in text and "method: scd" in text


@pytest.mark.parametrize("overrides, match", [
    (["method=scd"], "needs teacher"),
    (["method=sct", "teacher=digits-teacher"], "no teacher"),
    (["teacher=digits-teacher"], "method=sct or method=scd"),
    (["method=sct", "scm_args={bogus: 1}"], "unknown scm_args"),
    (["method=sct", "scm_args={tangent_c: 0}"], "constant c"),
    (["method=sct", "scm_args={P_std: -1}"], "P_std"),
    (["method=scd", "teacher=digits-teacher", "scm_args={guidance_interval: [0.28, 5.42]}"], "guidance_interval"),
    (["method=cd"], "method must be one of"),
    (["method=sct", "student_init=copy"], "student_init"),
])
def test_bad_distill_configs(overrides, match):
    with pytest.raises(ValueError, match=match):
        resolve_config("toy-tiny", overrides).check_sources()  # what `fewstep distill` checks before it starts


def test_distill_cli_errors_are_one_line(tmp_path, capsys):
    code = fewstep_main(["distill", "toy-tiny", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                         "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and len(err.strip().splitlines()) == 1
    # a class-conditional teacher cannot be distilled into an unconditional student
    code = fewstep_main(["distill", "toy-tiny", "--teacher", "digits-teacher", "--out", str(tmp_path / "o2"),
                         "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_copied_student_takes_its_dropout_from_model_args(tmp_path, teacher_dir):
    """model_args.dropout applies to a student copied from the teacher or from a student_init (every
    dropout layer and the recorded model config, so the checkpoint rebuilds it with that rate); the
    copy still starts as its source; structural model_args are ignored with a warning; a rate outside
    [0, 1) or a network that is not a fewstep model is refused."""
    from fewstep.distill.reparam import set_dropout
    from fewstep.models import build_model

    first = Trainer(_scd(teacher_dir, model_args={"dropout": 0.3}, steps=2), out=tmp_path / "first")
    rates = {m.p for m in first.net.modules() if isinstance(m, torch.nn.Dropout)}
    assert rates == {0.3} and first.net.net.net.config.dropout == 0.3
    first.fit()
    saved = load_denoiser(str(tmp_path / "first")).model
    assert {m.p for m in saved.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    with pytest.warns(UserWarning, match=r"\['channels'\] are ignored"):
        second = Trainer(_scd(teacher_dir, student_init=str(tmp_path / "first"),
                              model_args={"dropout": 0.0, "channels": 8}))
    assert {m.p for m in second.net.modules() if isinstance(m, torch.nn.Dropout)} == {0.0}
    x, t = torch.randn(8, 2), torch.linspace(0.05, 1.5, 8)
    with torch.no_grad():
        torch.testing.assert_close(second.net.eval().consistency(x, t), saved.eval().consistency(x, t),
                                   atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="widens a UNet"):  # model_args.channel_mult reaches the copy (an MLP here)
        Trainer(_scd(teacher_dir, model_args={"channel_mult": [1, 4]}), out=tmp_path / "third")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        set_dropout(build_model("mlp-tiny", dropout=0.1), 1.0)
    with pytest.raises(ValueError, match="not a fewstep.models network"):
        set_dropout(torch.nn.Sequential(torch.nn.Dropout(0.1)), 0.2)


def test_guided_student_continues_as_student_init_under_an_interval_teacher(tmp_path):
    """A guidance-conditioned student (scm_args.guidance_range) is the student_init of a new guided run,
    here with the teacher guided only in an interval: the new student starts as the saved one at every
    input scale, trains, and its checkpoint loads as a guided consistency model."""
    cfg = get_preset("digits-scd").replace(steps=2, batch_size=4, log_every=1, lr=1e-2, ema_half_life=1.0,
                                           scm_args={"guidance_range": [1.0, 2.0], "tangent_warmup": 1})
    Trainer(cfg, out=tmp_path / "first").fit()
    first = load_denoiser(str(tmp_path / "first"))
    again = Trainer(cfg.replace(student_init=str(tmp_path / "first"), scm_args={
        "guidance_range": [1.0, 2.0], "guidance_interval": [0.28, 5.42], "tangent_warmup": 1}), out=tmp_path / "next")
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0.3, 0.9, 1.5]), torch.tensor([1, 2, 3])
    with torch.no_grad():
        for w in (1.0, 1.7):
            torch.testing.assert_close(again.net.eval().consistency(x, t, class_labels=y, guidance=w),
                                       first.model.consistency(x, t, class_labels=y, guidance=w))
    again.net.train()
    again.fit()
    S = load_denoiser(str(tmp_path / "next"))
    assert S.model.guided and S.config["scm_args"]["guidance_interval"] == [0.28, 5.42]
    out = sample(S, torch.randn(2, 1, 8, 8), solver="consistency", steps=2, class_labels=torch.tensor([0, 1]),
                 step_cond={"guidance": [1.0, 1.5]})
    assert torch.isfinite(out).all()
