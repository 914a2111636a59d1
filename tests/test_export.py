"""Model files (`fewstep export`, fewstep.export): a checkpoint reduced to its EMA weights loads as the
same denoiser (exactly in float32, to half precision in float16 / bfloat16), keeps a student a student
and a run's fitted solvers, serves as teacher= / student_init= of a distillation, and bad input is refused."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fewstep import sample
from fewstep.cli import main as fewstep_main
from fewstep.export import export_model, is_model_file
from fewstep.pretrained import load_denoiser
from fewstep.solvers import solver_weights, unipc
from fewstep.spacing import make_grid
from fewstep.training import Trainer, get_preset, load_checkpoint
from fewstep.training.checkpoint import save_checkpoint


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny toy run (20 steps of toy-tiny) with its checkpoint."""
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    Trainer(get_preset("toy-tiny"), out=out).fit()
    return out


def _outputs(D, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *D.sample_shape, generator=g)
    t = torch.rand(n, generator=g) * 0.9 + 0.05
    with torch.no_grad():
        return D(x, t * D.process.t_max)


def test_float32_model_file_is_the_checkpoints_ema(run, tmp_path):
    path = export_model(run, tmp_path / "m")
    assert path == tmp_path / "m.json" and is_model_file(path) and not is_model_file(run / "config.json")
    meta, tensors = load_checkpoint(run)
    weights = load_file(str(tmp_path / "m.safetensors"))
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    assert set(weights) == set(ema) and all(torch.equal(weights[k], ema[k]) for k in ema)
    assert not any(k.startswith(("model.", "optim.")) for k in weights)  # no optimiser state
    saved = json.loads(path.read_text())
    assert saved["step"] == meta["step"] and saved["config"]["out"] is None and saved["dtype"] == "float32"
    a, b = load_denoiser(str(run)), load_denoiser(str(path))
    assert b.source == str(path) and b.method == "diffusion" and b.sample_shape == a.sample_shape
    torch.testing.assert_close(_outputs(b), _outputs(a), atol=0, rtol=0)
    # the same through the command line, named with .json
    assert fewstep_main(["export", str(run), str(tmp_path / "cli.json")]) == 0
    torch.testing.assert_close(_outputs(load_denoiser(str(tmp_path / "cli.json"))), _outputs(a), atol=0, rtol=0)


@pytest.mark.parametrize("dtype,tol", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_half_precision_model_file(run, tmp_path, dtype, tol):
    """Weights stored in half precision, cast back to float32 on load: outputs within the format's precision."""
    path = export_model(run, tmp_path / "h", dtype=dtype)
    weights = load_file(str(tmp_path / "h.safetensors"))
    assert all(v.dtype == getattr(torch, dtype) for v in weights.values() if v.is_floating_point())
    full, half = load_denoiser(str(run)), load_denoiser(str(path))
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    ref, out = _outputs(full), _outputs(half)
    err = (out - ref).abs().max() / ref.abs().max()
    assert 0 < err < tol, err  # rounded (not the float32 weights), but only by the format's precision
    assert (tmp_path / "h.safetensors").stat().st_size < 0.6 * (export_model(run, tmp_path / "f").with_suffix(
        ".safetensors").stat().st_size)


def test_student_model_file_and_distillation_from_model_files(run, tmp_path):
    """A student exported keeps its consistency parameterisation; model files serve as teacher= and
    student_init= (the new student starts as the exported one) and the recorded teacher can be renamed."""
    teacher = export_model(run, tmp_path / "teacher", dtype="float16")
    cfg = get_preset("toy-tiny").replace(method="scd", teacher=str(teacher), optimizer="radam", steps=2,
                                         batch_size=16, scm_args={"tangent_warmup": 3})
    Trainer(cfg, out=tmp_path / "student").fit()
    student = export_model(tmp_path / "student", tmp_path / "student-model", teacher="my-teacher")
    S, S_run = load_denoiser(str(student)), load_denoiser(str(tmp_path / "student"))
    assert S.method == "scd" and S.config["teacher"] == "my-teacher"
    z = torch.randn(8, *S.sample_shape)
    torch.testing.assert_close(sample(S, z, solver="consistency", steps=1),
                               sample(S_run, z, solver="consistency", steps=1), atol=0, rtol=0)
    again = Trainer(cfg.replace(student_init=str(student)))
    x, t = torch.randn(8, 2), torch.linspace(0.05, 1.5, 8)
    with torch.no_grad():
        torch.testing.assert_close(again.net.eval().consistency(x, t), S.model.consistency(x, t))


def test_run_fitted_solvers_travel_with_the_model_file(run, tmp_path):
    D = load_denoiser(str(run))
    fs = solver_weights(unipc, D.process, make_grid(D.process, 4, "vp-power"), order=3)
    (run / "solvers").mkdir(exist_ok=True)
    fs.save(run / "solvers" / "fit-4.json")
    try:
        loaded = load_denoiser(str(export_model(run, tmp_path / "m")))
        assert set(loaded.fitted_solvers) == {(fs.nfe, None)}
        torch.testing.assert_close(loaded.fitted_solvers[(fs.nfe, None)].weights, fs.weights)
    finally:
        (run / "solvers" / "fit-4.json").unlink()
        (run / "solvers").rmdir()


def test_bad_input(run, tmp_path, capsys):
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_model(run, tmp_path / "m", dtype="int8")
    with pytest.raises(ValueError, match="no checkpoint"):
        export_model(tmp_path, tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="neither a model file"):
        load_denoiser(str(tmp_path / "missing.json"))
    path = export_model(run, tmp_path / "m")
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(ValueError, match="missing tensor file"):
        load_denoiser(str(path))
    # a weight beyond float16's range is refused, not stored as inf
    meta, tensors = load_checkpoint(run)
    big = tmp_path / "big"
    key = next(k for k in tensors if k.startswith("ema.") and tensors[k].is_floating_point())
    save_checkpoint(big, 1, {**tensors, key: torch.full_like(tensors[key], 1e6)},
                    {k: v for k, v in meta.items() if k not in ("step", "tensors", "format")})
    with pytest.raises(ValueError, match="does not fit float16"):
        export_model(big, tmp_path / "b", dtype="float16")
    assert fewstep_main(["export", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "fewstep export: error" in capsys.readouterr().err
