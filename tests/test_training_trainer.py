"""Trainer: exact resume, NaN handling, accumulation and 2-process DDP equivalence, checkpoint files,
configs and presets, the `fewstep train` CLI."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from fewstep.training import (PRESETS, NonFiniteLossError, Trainer, TrainConfig, get_preset, latest_checkpoint,
                              load_checkpoint, resolve_config)
from fewstep.training.cli import add_train_parser, main
from fewstep.training.checkpoint import checkpoint_step, list_checkpoints


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread (conftest.one_thread)."""


def rich_config(**kw):
    """A tiny run that exercises every piece of state: dropout (global RNG), label dropout,
    IDDPM history, learned weighting parameters, EMA warm-up, accumulation, RAdam."""
    base = get_preset("toy-tiny").replace(
        conditional=True, model_args={"dropout": 0.1}, timesteps="iddpm",
        timestep_args={"num_steps": 8, "history": 2}, weighting="min-snr", learned_weighting=True,
        accum_steps=2, batch_size=16, warmup_steps=3, ema_half_life=200.0, ema_warmup_ratio=0.5, log_every=2,
        progress=False)
    return base.replace(**kw)


def all_state(trainer):
    out = {f"model.{k}": v for k, v in trainer.net.state_dict().items()}
    out.update({f"ema.{k}": v for k, v in trainer.ema.state_dict().items()})
    out.update({f"loss.{k}": v for k, v in trainer.loss_fn.state_dict().items()})
    out.update({f"sampler.{k}": v for k, v in trainer.sampler.state_dict().items()})
    for i, st in trainer.optimizer.state_dict()["state"].items():
        out.update({f"optim.{i}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return {k: v.detach().clone() for k, v in out.items()}  # state dicts share storage with the params


def assert_identical(a, b):
    sa, sb = all_state(a), all_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


@pytest.mark.parametrize("cfg", [rich_config(steps=12), get_preset("digits-tiny").replace(
    steps=6, optimizer="radam", batch_size=8, timesteps="speed", weighting="speed")], ids=["toy-rich", "digits-unet"])
def test_resume_is_bit_identical(tmp_path, cfg):
    n = cfg.steps // 2
    straight = Trainer(cfg, out=tmp_path / "a")
    straight.fit()
    first = Trainer(cfg, out=tmp_path / "b")
    first.fit(until=n)
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == f"ckpt-{n:08d}.json"
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    resumed = Trainer(cfg, out=tmp_path / "b", resume=True)
    assert resumed.step == n and resumed.images_seen == n * cfg.batch_size
    resumed.fit()
    assert resumed.step == straight.step == cfg.steps
    assert_identical(straight, resumed)
    # the metrics file of the resumed run has each logged step once
    with open(tmp_path / "b" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == sorted(set(steps)) and steps[-1] == cfg.steps


def test_checkpoint_files(tmp_path):
    cfg = rich_config(steps=6, checkpoint_every=2, keep_checkpoints=2)
    Trainer(cfg, out=tmp_path).fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-00000004.json", "ckpt-00000004.safetensors", "ckpt-00000006.json",
                     "ckpt-00000006.safetensors"]  # pruned to 2, no temp files left
    meta, tensors = load_checkpoint(tmp_path)
    assert meta["step"] == 6 and meta["config"] == cfg.replace(out=str(tmp_path)).to_dict()
    for key in ("rng", "data", "optimizer", "images_seen", "model_config"):
        assert key in meta
    assert {k.split(".")[0] for k in tensors} == {"model", "ema", "loss", "sampler", "optim"}
    assert TrainConfig.load(tmp_path / "config.yaml") == TrainConfig.load(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.yaml").out == str(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no checkpoint"):
        load_checkpoint(tmp_path.parent)


def test_keep_every_keeps_milestones(tmp_path):
    cfg = rich_config(steps=10, checkpoint_every=1, keep_checkpoints=2, keep_every=4)
    Trainer(cfg, out=tmp_path).fit()
    steps = [checkpoint_step(p) for p in list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [4, 8, 9, 10]  # the milestones plus the 2 newest others
    # a resumed run picks the newest, not a milestone
    resumed = Trainer(cfg.replace(steps=12), out=tmp_path, resume=True)
    assert resumed.step == 10
    with pytest.raises(ValueError, match="keep_every"):
        cfg.replace(keep_every=-1)
    with pytest.raises(ValueError, match="named like a checkpoint"):
        checkpoint_step(tmp_path / "config.yaml")


def _inject_nan(trainer, steps):
    forward = trainer.objective.forward

    def poisoned(x0, labels, step):
        loss, stats = forward(x0, labels, step)
        return (loss * float("nan") if step in steps else loss), stats

    trainer.objective.forward = poisoned


def test_lr_warm_up_stable_cool_down(tmp_path):
    """warmup_steps then constant then lr_cooldown: the LR falls linearly to lr / c at the last step;
    a run resumed with a larger `steps` and a cool-down continues the constant phase exactly."""
    cfg = rich_config(steps=10, lr=1e-3, warmup_steps=2, lr_cooldown=4)
    t = Trainer(cfg, out=tmp_path / "a")
    lrs = [t.lr_at(s) for s in range(cfg.steps)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    t.fit()
    with open(tmp_path / "a" / "metrics.csv") as f:
        logged = [float(r["lr"]) for r in csv.DictReader(f)]
    assert logged[-1] == pytest.approx(2.5e-4)  # the last logged step runs at lr / c
    constant = Trainer(cfg.replace(steps=6, lr_cooldown=0), out=tmp_path / "b")
    constant.fit()
    resumed = Trainer(cfg, out=tmp_path / "b", resume=True)
    resumed.fit()
    assert_identical(t, resumed)


def test_nan_steps_are_skipped():
    trainer = Trainer(rich_config(steps=8, accum_steps=1, learned_weighting=False))
    _inject_nan(trainer, {3, 4})
    trainer.fit(until=3)
    before = all_state(trainer)
    with pytest.warns(UserWarning, match="non-finite"):
        trainer.fit(until=5)
    after = all_state(trainer)
    for k in before:
        if not k.startswith("sampler."):
            assert torch.equal(before[k], after[k]), f"{k} changed on a skipped step"
    assert trainer.skipped == 2 and trainer.step == 5
    trainer.fit()
    assert trainer.bad_steps == 0 and trainer.step == 8
    assert any(not torch.equal(before[k], v) for k, v in all_state(trainer).items() if k.startswith("model."))


def test_repeated_nan_stops_with_clear_message():
    trainer = Trainer(rich_config(steps=50, max_bad_steps=3))
    _inject_nan(trainer, set(range(100)))
    with pytest.warns(UserWarning), pytest.raises(NonFiniteLossError, match="4 consecutive steps with a non-finite"):
        trainer.fit()
    assert trainer.step == 3 and trainer.skipped == 4


def test_accumulation_matches_full_batch():
    cfg = rich_config(steps=5, model_args={}, learned_weighting=False)
    one = Trainer(cfg.replace(accum_steps=1))
    one.fit()
    four = Trainer(cfg.replace(accum_steps=4))
    four.fit()
    for k, v in all_state(one).items():
        assert torch.allclose(v.float(), all_state(four)[k].float(), rtol=1e-4, atol=1e-6), k


def test_two_process_ddp_matches_one_process(tmp_path):
    """torchrun-style launch of 2 CPU processes (gloo) vs one process with the same global batch."""
    overrides = ["steps=6", "conditional=true", "timesteps=iddpm", "timestep_args={num_steps: 8, history: 1}",
                 "learned_weighting=true", "accum_steps=2", "batch_size=16", "log_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "fewstep.training", "toy-tiny", *overrides, "--out", str(tmp_path / "ddp"), "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cpu x 2" in proc.stdout
    single = Trainer(resolve_config("toy-tiny", overrides), out=tmp_path / "one")
    assert single.dist.world_size == 1
    single.fit()
    meta, tensors = load_checkpoint(tmp_path / "ddp")
    assert meta["world_size"] == 2 and meta["step"] == 6 and len(meta["rng"]["per_rank"]) == 2
    mine = all_state(single)
    for k, v in mine.items():
        assert torch.allclose(tensors[k].float(), v.float(), rtol=1e-4, atol=1e-6), k


# ------------------------------------------------------------------ configs


def test_presets_are_valid_and_round_trip():
    for name in ("digits-speed", "digits-uniform", "fashion-speed", "fashion-uniform", "toy-2d"):
        assert name in PRESETS
    for name, cfg in PRESETS.items():
        assert TrainConfig.from_yaml(cfg.to_yaml()) == cfg
        assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    s = get_preset("digits-speed")
    assert (s.dataset, s.model, s.process, s.prediction, s.timesteps, s.weighting) == (
        "digits", "unet-digits", "vp", "eps", "speed", "speed")
    assert s.timestep_args == {"k": 5.0, "tau": 700} and s.weighting_args["lam"] == 0.6
    assert get_preset("fashion-uniform").dataset == "fashion-mnist"


def test_overrides():
    cfg = get_preset("digits-speed").with_overrides(
        ["steps=7", "lr=1e-3", "timestep_args.k=2", "betas=[0.9, 0.99]", "out=null", "model_args.dropout=0"])
    assert cfg.steps == 7 and cfg.lr == 1e-3 and cfg.timestep_args == {"k": 2, "tau": 700}
    assert cfg.betas == (0.9, 0.99) and cfg.model_args == {"dropout": 0}


@pytest.mark.parametrize("override,match", [
    ("stepz=3", "unknown key"),
    ("steps=abc", "steps must be an integer"),
    ("lr=-1", "lr must be a positive"),
    ("lr=nan", "lr must be"),
    ("timesteps=bogus", "unknown timestep sampler"),
    ("timestep_args.bogus=1", "unknown option"),
    ("timestep_args.k=0.5", "k must be"),
    ("weighting_args.lam=5", r"lam must lie in \[0.5, 1\]"),
    ("weighting=nope", "unknown weighting"),
    ("prediction=noise", "prediction must be one of"),
    ("batch_size=10", "divisible by accum_steps"),
    ("model=unet-huge", "unknown model preset"),
    ("dataset=imagenet", "unknown dataset"),
    ("process=ddim", "unknown process"),
    ("process_args.bogus=1", "bad process_args"),
    ("conditional=maybe", "true or false"),
    ("noequals", "key=value"),
    ("lr_cooldown=-1", r"lr_cooldown must lie in \[0, steps"),
    ("lr_cooldown=1000000000", r"lr_cooldown must lie in \[0, steps"),
])
def test_bad_config_input(override, match):
    cfg = get_preset("digits-speed").replace(accum_steps=4)
    with pytest.raises(ValueError, match=match) as info:
        cfg.with_overrides([override])
    assert "\n" not in str(info.value)


def test_bad_specs():
    with pytest.raises(ValueError, match="unknown training preset"):
        get_preset("digits-fast")
    with pytest.raises(ValueError, match="neither a training preset"):
        resolve_config("digits-fast")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_config("missing.yaml")
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"steps": 3, "colour": "red"})


# ------------------------------------------------------------------ CLI


def test_cli_dry_run_and_errors(tmp_path, capsys):
    assert main(["digits-speed", "steps=3", "timestep_args.k=2", "--dry-run"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["steps"] == 3 and printed["timestep_args"]["k"] == 2 and printed["out"] == "runs/digits-speed"
    path = tmp_path / "c.yaml"
    get_preset("toy-tiny").replace(steps=4).save(path)
    assert main([str(path), "lr=0.01", "--dry-run", "--out", str(tmp_path / "o")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["lr"] == 0.01 and printed["steps"] == 4 and printed["out"] == str(tmp_path / "o")
    assert main(["digits-fast"]) == 2
    assert "neither a training preset" in capsys.readouterr().err
    assert main(["digits-speed", "colour=red", "--dry-run"]) == 2
    assert "unknown key(s) 'colour'" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--list-presets"]) == 0 and "digits-speed" in capsys.readouterr().out
    # overrides may also follow the options, in both entry points; other leftovers stay errors
    assert main(["digits-speed", "--out", str(tmp_path / "late"), "steps=5", "--dry-run", "lr=0.002"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["steps"] == 5 and printed["lr"] == 0.002 and printed["out"] == str(tmp_path / "late")
    from fewstep.cli import main as fewstep_main

    assert fewstep_main(["distill", "digits-sct", "--out", str(tmp_path / "d"), "steps=7", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["steps"] == 7
    for argv in (["train", "digits-speed", "--dry-run", "steps=5", "--bogus"], ["sample", "digits-sct", "x=1"]):
        with pytest.raises(SystemExit):
            fewstep_main(argv)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_cli_train_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["toy-tiny", "steps=4", "--out", str(out), "--no-progress"]) == 0
    assert (out / "config.yaml").is_file() and (out / "config.json").is_file()
    assert latest_checkpoint(out / "checkpoints").name == "ckpt-00000004.json"
    assert main(["--out", str(out), "--resume", "steps=6"]) == 0  # config from OUT/config.yaml
    text = capsys.readouterr().out
    assert "resumed at step 4" in text and "done: step 6" in text
    assert TrainConfig.load(out / "config.yaml").steps == 6


def test_add_train_parser_hooks_into_a_cli():
    import argparse

    parser = argparse.ArgumentParser(prog="fewstep")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    args = parser.parse_args(["train", "digits-speed", "steps=5", "--out", "x", "--resume", "--dry-run"])
    assert args.fn.__name__ == "run_train" and args.items == ["digits-speed", "steps=5"]
    assert args.resume is True and args.out == "x" and args.dry_run


def test_progress_bar_denoiser_and_bf16_on_cpu(capsys):
    with pytest.warns(UserWarning, match="bf16 autocasts on CUDA only"):
        trainer = Trainer(get_preset("toy-tiny").replace(steps=3, precision="bf16"), progress=True)
    result = trainer.fit()
    assert result["step"] == 3 and result["checkpoint"] is None
    from fewstep import sample

    x = sample(trainer.denoiser(), torch.randn(5, 2), steps=3)
    assert x.shape == (5, 2) and torch.isfinite(x).all()
