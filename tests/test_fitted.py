"""Fitted solvers (solvers/fitted.py, fitting.py): the multistep map reproduces the solvers exactly,
fitting lowers the held-out error on the oracle, never raises it, and bad input is refused."""

import math

import pytest
import torch

from fewstep import FittedSolver, fit_solver, sample
from fewstep.guidance import LabelCFG
from fewstep.processes import EDM, Flow, TrigFlow, VPDiscrete
from fewstep.solvers import ddim, dpm_multistep, fitted_solve, solver_weights, unipc
from fewstep.spacing import make_grid
from fewstep.testing import GaussianMixture

F64 = torch.float64


@pytest.fixture(scope="module")
def sharp():
    """A sharp mixture (narrow components) under DDPM's linear schedule: few-call solvers flip modes."""
    g = GaussianMixture.random(d=8, K=6, std_range=(0.05, 0.3), seed=0)
    return g, VPDiscrete.linear()


def _noise(n, seed, d=8):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


CASES = [
    ("unipc-3 bh1", unipc, dict(order=3, variant="bh1")),
    ("unipc-3 bh2", unipc, dict(order=3, variant="bh2")),
    ("unipc-2 noise form", unipc, dict(order=2, form="noise")),
    ("unip-3 without corrector", unipc, dict(order=3, corrector=False)),
    ("dpm++3m", dpm_multistep, dict(order=3, form="data")),
    ("dpm-solver-2m", dpm_multistep, dict(order=2, form="noise")),
    ("ddim", ddim, {}),
]


@pytest.mark.parametrize("name,fn,opts", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("steps", [3, 6])
def test_solver_weights_reproduce_the_solver(sharp, name, fn, opts, steps):
    g, p = sharp
    D = g.denoiser(p)
    ts = make_grid(p, steps, "vp-power")
    fs = solver_weights(fn, p, ts, **opts)
    assert fs.nfe == steps
    torch.testing.assert_close(fs.weights.sum(1)[1:], torch.ones(steps, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(fs.lambdas, p.lambda_(ts[:-1]), atol=1e-12, rtol=0)
    x = _noise(64, 1) * p.prior_std()
    want = fn(D, x, ts, **opts)
    got = fitted_solve(D, x, fs.lambdas, fs.weights)
    torch.testing.assert_close(got, want, atol=1e-11, rtol=0)


def test_fitted_solver_is_the_same_on_every_process(sharp):
    """The map only sees alpha, sigma at the fitted lambdas: the same fitted solver on the same mixture
    under other processes gives the same samples (the ODE is the same in lambda)."""
    g, p = sharp
    fs = solver_weights(unipc, p, make_grid(p, 5, "vp-power"), order=3)
    noise = _noise(32, 2)
    ref = sample(g.denoiser(p), noise, solver=fs)
    for q in (EDM(sigma_max=200.0), Flow(t_max=200 / 201), TrigFlow(t_max=math.atan(400.0))):  # sigma/alpha 200
        torch.testing.assert_close(sample(g.denoiser(q), noise, solver=fs), ref, atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match="noisier than this process reaches"):
        sample(g.denoiser(EDM()), noise, solver=fs)  # sigma_max = 80 < VP's 157


def test_fit_lowers_held_out_error_on_the_oracle(sharp, one_thread):
    """Fitted on 1200 calibration samples against the model's own 100-call solve (the default
    reference), tested on 2000 other samples against the exact ODE end points: the fitted 5-call solver
    has at most 0.85x the error of the default 5-call solver (measured 0.62x)."""
    g, p = sharp
    D = g.denoiser(p)
    fs = fit_solver(D, _noise(1200, 3), 5, max_iter=40, progress=False)
    assert fs.meta["val_rmse"] < fs.meta["val_rmse_init"]
    test = _noise(2000, 4)
    exact = g.ode(test * p.prior_std(), p.t_max, 0.0, p)
    err = lambda out: float(((out - exact) ** 2).mean().sqrt())  # noqa: E731
    e_default, e_fitted = err(sample(D, test, steps=5)), err(sample(D, test, solver=fs))
    assert e_fitted < 0.85 * e_default, (e_fitted, e_default)
    out, nfe = sample(D, test[:4], solver=fs, return_nfe=True)
    assert nfe == 5 and D.last_nfe == 5


def test_fit_under_guidance(one_thread):
    """Under CFG at scale 5 (LabelCFG: labels per call, so the calibration batch can be split) the fit starts
    from the guided default (DPM-Solver++(2M) at 5 calls) and lowers the error to the guided ODE's end
    point on new noise by at least 20% (measured 41%)."""
    g = GaussianMixture.random(d=8, K=6, std_range=(0.05, 0.3), seed=0, num_classes=3)
    p = VPDiscrete.linear()
    D = LabelCFG(g.denoiser(p), 5.0, null_label=3)
    fs = fit_solver(D, _noise(800, 3), 5, cond={"class_labels": torch.arange(800) % 3}, max_iter=30, progress=False)
    assert fs.meta["init"] == "dpm++2m-2 vp-power"
    test, y = _noise(1000, 4), torch.arange(1000) % 3
    ref = sample(D, test, solver="unipc", order=3, steps=300, spacing="logsnr", class_labels=y)
    err = lambda out: float(((out - ref) ** 2).mean().sqrt())  # noqa: E731
    e_default, e_fitted = err(sample(D, test, steps=5, class_labels=y)), err(sample(D, test, solver=fs, class_labels=y))
    assert e_fitted < 0.8 * e_default, (e_fitted, e_default)


def test_fit_never_returns_a_worse_solver(sharp):
    """max_iter=0 (or no gain on the held-out part) gives back the starting solver, the default without
    its implicit first step (a fitted solver's first call is at its start)."""
    g, p = sharp
    D = g.denoiser(p)
    noise = _noise(40, 5)
    fs = fit_solver(D, noise, 4, max_iter=0, progress=False)
    init = solver_weights(unipc, p, make_grid(p, 4, "vp-power"), order=3, variant="bh1")
    torch.testing.assert_close(fs.weights, init.weights)
    torch.testing.assert_close(fs.lambdas, init.lambdas)
    assert fs.meta["val_rmse"] == fs.meta["val_rmse_init"]
    torch.testing.assert_close(sample(D, noise, solver=fs), sample(D, noise, steps=4, ifs=False), atol=1e-11, rtol=0)
    # another starting solver (init=): DPM-Solver++(2M) on its own grid
    fs2 = fit_solver(D, noise, 4, init={"solver": "dpm++2m"}, max_iter=0, progress=False)
    assert fs2.meta["init"] == "dpm++2m-2 vp-power"
    torch.testing.assert_close(sample(D, noise, solver=fs2), sample(D, noise, solver="dpm++2m", steps=4),
                               atol=1e-11, rtol=0)


def test_fit_in_chunks_equals_full_batch(sharp):
    """The gradient accumulated over chunks is the full-batch gradient: the same fit either way."""
    g, p = sharp
    D = g.denoiser(p)
    noise, ref = _noise(60, 6), None
    ref = sample(D, noise, solver="unipc", order=3, steps=40)
    a = fit_solver(D, noise, 4, reference=ref, max_iter=3, batch_size=1000, progress=False)
    b = fit_solver(D, noise, 4, reference=ref, max_iter=3, batch_size=7, progress=False)
    torch.testing.assert_close(a.lambdas, b.lambdas, atol=1e-9, rtol=0)
    torch.testing.assert_close(a.weights, b.weights, atol=1e-9, rtol=0)


def test_fit_with_history_learns_only_the_recent_weights(sharp):
    """history=h: only W_kj with k - h <= j < k move; the others keep the starting solver's weights."""
    g, p = sharp
    D = g.denoiser(p)
    fs = fit_solver(D, _noise(400, 8), 5, history=2, max_iter=5, progress=False)
    start = solver_weights(unipc, p, make_grid(p, 5, "vp-power"), order=3, variant="bh1")
    moved = (fs.weights - start.weights).abs() > 0
    k, j = torch.meshgrid(torch.arange(6), torch.arange(5), indexing="ij")
    assert moved.any() and not moved[(j < k - 2) | (j >= k)].any()
    with pytest.raises(ValueError, match="history must be a positive integer"):
        fit_solver(D, _noise(8, 8), 3, history=0)


def test_save_and_load(sharp, tmp_path):
    g, p = sharp
    fs = solver_weights(unipc, p, make_grid(p, 5, "vp-power"), order=3)
    fs.meta["note"] = "x"
    path = fs.save(tmp_path / "fit.json")
    back = FittedSolver.load(path)
    torch.testing.assert_close(back.lambdas, fs.lambdas, atol=0, rtol=0)
    torch.testing.assert_close(back.weights, fs.weights, atol=0, rtol=0)
    assert back.meta == {"note": "x"}
    with pytest.raises(FileNotFoundError, match="no fitted solver"):
        FittedSolver.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not a fewstep fitted solver"):
        FittedSolver.from_dict({"kind": "checkpoint"})


def test_bad_input_is_refused(sharp):
    g, p = sharp
    D = g.denoiser(p)
    fs = solver_weights(unipc, p, make_grid(p, 3, "vp-power"), order=2)
    with pytest.raises(ValueError, match="strictly increasing"):
        FittedSolver(fs.lambdas.flip(0), fs.weights)
    with pytest.raises(ValueError, match="shape"):
        FittedSolver(fs.lambdas, fs.weights[:-1])
    with pytest.raises(ValueError, match="lower triangular"):
        FittedSolver(fs.lambdas, fs.weights + torch.eye(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="finite"):
        FittedSolver(fs.lambdas, fs.weights * float("nan"))
    noise = _noise(4, 0)
    with pytest.raises(ValueError, match="makes 3 model calls; steps=5"):
        sample(D, noise, solver=fs, steps=5)
    with pytest.raises(ValueError, match="takes no order, spacing"):
        sample(D, noise, solver=fs, order=2, spacing="logsnr")
    with pytest.raises(ValueError, match="takes no afs"):
        sample(D, noise, solver=fs, afs=True)
    with pytest.raises(ValueError, match="solver must be a name"):
        sample(D, noise, solver=3)
    with pytest.raises(ValueError, match="ends at t = 0"):
        solver_weights(unipc, p, make_grid(p, 3, "logsnr", end="t_min"), order=2)

    def not_multistep(D_, x, ts):  # uses x_T with a weight that is not sigma_k / sigma_0
        for t in ts[:-1]:
            x = 2.0 * x + D_(x, t)
        return x
    with pytest.raises(ValueError, match="not a multistep map"):
        solver_weights(not_multistep, p, make_grid(p, 3, "vp-power"))
    with pytest.raises(ValueError, match="model calls"):
        solver_weights(lambda D_, x, ts: D_(x, ts[0]), p, make_grid(p, 3, "vp-power"))
    with pytest.raises(ValueError, match="steps must be an integer >= 2"):
        fit_solver(D, noise, 1)
    with pytest.raises(ValueError, match="val_fraction"):
        fit_solver(D, noise, 3, val_fraction=1.0)
    with pytest.raises(ValueError, match="reference has shape"):
        fit_solver(D, noise, 3, reference=noise[:2])
    with pytest.raises(ValueError, match="batch >= 2"):
        fit_solver(D, noise[:1], 3)
    with pytest.raises(ValueError, match="init must name a solver"):
        fit_solver(D, noise, 3, init={"solver": "dpm++9m"})


def test_a_model_carrying_fitted_solvers_uses_them_by_default(sharp):
    """sample() without solver= uses the fitted solver the denoiser carries for the calls and guidance asked
    (pretrained.load_denoiser fills `fitted_solvers`), and the fixed default otherwise."""
    g, p = sharp
    D = g.denoiser(p)
    noise = _noise(16, 7)
    fs = solver_weights(unipc, p, make_grid(p, 5, "logsnr"), order=2)  # visibly not the default
    fixed = sample(D, noise, steps=5)
    D.fitted_solvers = {(5, None): fs}
    torch.testing.assert_close(sample(D, noise, steps=5), sample(D, noise, solver=fs), atol=0, rtol=0)
    assert (sample(D, noise, steps=5) - fixed).abs().max() > 1e-3
    torch.testing.assert_close(sample(D, noise, steps=6), sample(g.denoiser(p), noise, steps=6), atol=0, rtol=0)
    torch.testing.assert_close(sample(D, noise, steps=5, ifs=True), fixed, atol=0, rtol=0)


def test_shipped_teacher_samples_with_its_fitted_5_call_solver(one_thread):
    """digits-teacher ships a 5-call fitted solver (scripts/ship_solvers.py); sample() uses it by default
    and it is much closer than the fixed default to the teacher's own 100-call solve on new noise
    (fit: 0.084 -> 0.027 on its held-out part; FD 0.35 -> 0.14, BENCHMARKS.md)."""
    from fewstep.pretrained import load_denoiser

    D = load_denoiser("digits-teacher")
    assert set(D.fitted_solvers) == {(5, None)}
    z = torch.randn(96, 1, 8, 8, generator=torch.Generator().manual_seed(99))
    y = torch.arange(96) % 10
    with torch.no_grad():
        ref = sample(D, z, solver="unipc", order=3, steps=100, class_labels=y)
        fitted = sample(D, z, steps=5, class_labels=y)
        fixed = sample(D, z, steps=5, spacing="vp-power", class_labels=y)  # a grid option: the fixed default
    err = lambda x: float(((x - ref) ** 2).mean().sqrt())  # noqa: E731
    assert err(fitted) < 0.5 * err(fixed), (err(fitted), err(fixed))
