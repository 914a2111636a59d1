"""Helper scripts under scripts/: average_checkpoints.py."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fewstep.training import Trainer, get_preset, load_checkpoint
from fewstep.training.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_average_checkpoints(tmp_path, one_thread):
    cfg = get_preset("toy-tiny").replace(steps=6, checkpoint_every=2, keep_checkpoints=5, progress=False)
    Trainer(cfg, out=tmp_path / "run").fit()
    paths = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert len(paths) == 3
    out = tmp_path / "avg"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "average_checkpoints.py"), *map(str, paths),
                    "--out", str(out)], check=True, capture_output=True)
    meta, avg = load_checkpoint(out)
    states = [load_checkpoint(p)[1] for p in paths]
    assert meta["step"] == 6 and meta["averaged_from"] == [str(p) for p in paths]
    ema = [k for k in avg if k.startswith("ema.")]
    assert ema
    for k in ema:
        assert torch.equal(avg[k], (sum(s[k].double() for s in states) / 3).to(avg[k].dtype))
    assert any(not torch.equal(states[0][k], states[2][k]) for k in ema)  # the average is not trivial
    for k in avg:
        if not k.startswith("ema."):
            assert torch.equal(avg[k], states[2][k])  # the rest is the last checkpoint's


def test_average_checkpoints_refuses_other_networks(tmp_path, one_thread):
    a = get_preset("toy-tiny").replace(steps=2, progress=False)
    Trainer(a, out=tmp_path / "a").fit()
    Trainer(get_preset("digits-tiny").replace(steps=2), out=tmp_path / "b").fit()
    average_ema = _script("average_checkpoints").average_ema
    with pytest.raises(ValueError, match="does not match"):
        average_ema([load_path(tmp_path / "a"), load_path(tmp_path / "b")])
    with pytest.raises(ValueError, match="at least one"):
        average_ema([])


def load_path(run):
    return list_checkpoints(run / "checkpoints")[-1]
