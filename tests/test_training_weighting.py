"""Loss weightings against their formulas (SpeeD, Min-SNR-gamma per prediction type, P2, EDM,
EDM2 learned uncertainty) and bad input."""

import math

import numpy as np
import pytest
import torch

from fewstep.predictions import PREDICTIONS
from fewstep.processes import EDM, Flow, TrigFlow, VPDiscrete, VPLinear
from fewstep.training.weighting import (EDMWeighting, LearnedWeighting, MinSNR, NoWeighting, P2, SpeeDWeighting,
                                        make_weighting, snr, x0_gain)

PROCESSES = [VPDiscrete.linear(), VPLinear(), EDM(), Flow(), TrigFlow()]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread (conftest.one_thread)."""



def times(process, n=64):
    return torch.linspace(process.t_min, process.t_max, n, dtype=torch.float64)


def alpha_sigma(process, t):
    a, s = process.alpha_sigma(t)
    return a, s


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_x0_gain_closed_forms(process):
    t = times(process)
    a, s = alpha_sigma(process, t)
    r = (a / s) ** 2  # SNR
    assert torch.allclose(x0_gain(process, "x0", t), torch.ones_like(t))
    assert torch.allclose(x0_gain(process, "eps", t), 1 / r, rtol=1e-10)
    assert torch.allclose(x0_gain(process, "v", t), 1 / (r + 1), rtol=1e-10)
    assert torch.allclose(x0_gain(process, "score", t), (s**2 / a) ** 2, rtol=1e-10)
    assert torch.allclose(snr(process, t), r, rtol=1e-10)


@pytest.mark.parametrize("process", [VPDiscrete.linear(), VPLinear(), Flow()], ids=repr)
@pytest.mark.parametrize("gamma", [5.0, 1.0])
def test_min_snr_forms(process, gamma):
    t = times(process)
    a, s = alpha_sigma(process, t)
    r = (a / s) ** 2
    m = torch.minimum(r, torch.full_like(r, gamma))
    assert torch.allclose(MinSNR(process, "eps", gamma)(t), m / r, rtol=1e-10)
    assert torch.allclose(MinSNR(process, "x0", gamma)(t), m, rtol=1e-10)
    assert torch.allclose(MinSNR(process, "v", gamma)(t), m / (r + 1), rtol=1e-10)
    # where SNR < gamma the eps weight is exactly 1 (Hang et al. 2023)
    assert torch.allclose(MinSNR(process, "eps", gamma)(t)[r < gamma], torch.ones_like(r[r < gamma]))


def test_min_snr_edm_preconditioned():
    p, sd = EDM(), 0.5
    t = times(p)
    w = MinSNR(p, "edm", 5.0, sigma_data=sd)(t)
    expected = torch.clamp(1 / t**2, max=5.0) * (t * sd) ** 2 / (t**2 + sd**2)  # c_out^2
    assert torch.allclose(w, expected, rtol=1e-10)


@pytest.mark.parametrize("k,gamma", [(1.0, 1.0), (1.0, 0.5), (2.0, 1.5)])
def test_p2(k, gamma):
    p = VPDiscrete.linear()
    t = times(p)
    ac = p.alpha(t) ** 2
    r = ac / (1 - ac)
    assert torch.allclose(P2(p, "eps", k, gamma)(t), 1 / (k + r) ** gamma, rtol=1e-10)
    assert torch.allclose(P2(p, "x0", k, gamma)(t), r / (k + r) ** gamma, rtol=1e-10)
    assert torch.allclose(P2(p, "v", k, gamma)(t), r / (k + r) ** gamma / (r + 1), rtol=1e-10)


@pytest.mark.parametrize("sd", [0.5, 1.0])
def test_edm_weighting(sd):
    p = EDM(sigma_data=sd)
    t = times(p)  # sigma = t
    lam = (t**2 + sd**2) / (t * sd) ** 2
    assert torch.allclose(EDMWeighting(p, "x0", sd)(t), lam, rtol=1e-10)
    assert torch.allclose(EDMWeighting(p, "edm", sd)(t), torch.ones_like(t), rtol=1e-10)  # lambda c_out^2 = 1
    assert torch.allclose(EDMWeighting(p, "eps", sd)(t), lam * t**2, rtol=1e-10)
    # on a VP process s = sigma/alpha
    v = VPLinear()
    tv = times(v)
    a, s = alpha_sigma(v, tv)
    sv = s / a
    assert torch.allclose(EDMWeighting(v, "x0", sd)(tv), (sv**2 + sd**2) / (sv * sd) ** 2, rtol=1e-9)


@pytest.mark.parametrize("lam", [0.5, 0.6, 0.8, 1.0])
def test_speed_weighting_formula_vp_discrete(lam):
    p = VPDiscrete.linear()
    w = SpeeDWeighting(p, lam=lam)
    tau = 700
    g = np.gradient(1 - p.alphas_cumprod.numpy())  # g(t) = d(1 - abar_t)/dt
    gh = g[:tau]
    expected = np.ones(1000)
    expected[:tau] = (1 - lam) + (2 * lam - 1) * (gh - gh.min()) / (gh.max() - gh.min())
    n = torch.arange(1000)
    got = w(p.timestep_to_t(n)).numpy()
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-12)
    assert got[:tau].min() == pytest.approx(1 - lam) and got[:tau].max() == pytest.approx(lam)
    assert np.all(got[tau:] == 1.0)


def test_speed_weighting_continuous_process():
    p = VPLinear()
    w = SpeeDWeighting(p, lam=0.6)
    assert w.grid.N == 1000 and not w.grid.discrete
    c = torch.from_numpy(w.grid.points)
    g = np.gradient((1 - p.alpha(c) ** 2).numpy())  # 1 - abar = 1 - alpha^2 for VP
    gh = g[:700]
    expected = np.ones(1000)
    expected[:700] = 0.4 + 0.2 * (gh - gh.min()) / (gh.max() - gh.min())
    assert np.allclose(w(c).numpy(), expected, rtol=1e-10)
    # defined on non-VP processes through sigma^2 / (alpha^2 + sigma^2)
    for q in (EDM(), Flow(), TrigFlow()):
        v = SpeeDWeighting(q)(times(q))
        assert torch.isfinite(v).all() and v.min() >= 0.4 - 1e-12 and v.max() <= 1.0


@pytest.mark.parametrize("lam", [0.49, 1.01, 5, -1, "0.6", True])
def test_speed_lambda_validated(lam):
    with pytest.raises(ValueError, match=r"lam must lie in \[0.5, 1\]"):
        SpeeDWeighting(VPDiscrete.linear(), lam=lam)


def test_learned_weighting():
    p = VPDiscrete.linear()
    t = times(p, 8)
    mse = torch.rand(8)
    base = MinSNR(p, "eps")
    lw = LearnedWeighting(p, base=base)
    assert torch.allclose(lw(mse, t), base(t).float() * mse)  # u starts at 0
    with torch.no_grad():
        lw.net[2].bias.fill_(0.3)
    u = lw.u(t)
    assert torch.allclose(u, torch.full_like(u, 0.3))
    expected = base(t).float() * mse / math.exp(0.3) + 0.3
    assert torch.allclose(lw(mse, t), expected, rtol=1e-6)
    lw(mse, t).sum().backward()
    assert lw.net[2].bias.grad is not None and torch.isfinite(lw.net[2].bias.grad).all()
    # the optimum of w mse / exp(u) + u is u = log(w mse)
    lw2 = LearnedWeighting(p)
    opt = torch.optim.Adam(lw2.parameters(), lr=0.05)
    target_mse = torch.full((8,), 0.2)
    for _ in range(300):
        opt.zero_grad()
        lw2(target_mse, t).mean().backward()
        opt.step()
    assert torch.allclose(lw2.u(t), torch.full((8,), math.log(0.2)), atol=0.05)


@pytest.mark.parametrize("name", ["none", "speed", "min-snr", "p2", "edm"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_every_weighting_every_prediction(name, prediction):
    for p in PROCESSES:
        w = make_weighting(name, p, prediction)(times(p))
        assert w.shape == (64,) and torch.isfinite(w).all() and (w >= 0).all()


def test_none_is_one():
    t = times(Flow())
    assert torch.equal(NoWeighting()(t), torch.ones_like(t))


@pytest.mark.parametrize("name,kwargs,match", [
    ("bogus", {}, "unknown weighting"),
    ("min-snr", {"gamma": 0}, "gamma must be a positive"),
    ("min-snr", {"k": 1}, "unknown option"),
    ("p2", {"gamma": -1}, "gamma must be"),
    ("edm", {"lam": 1}, "unknown option"),
])
def test_bad_weighting_input(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_weighting(name, VPDiscrete.linear(), "eps", **kwargs)
    with pytest.raises(ValueError, match="prediction"):
        MinSNR(VPDiscrete.linear(), "noise")
