"""Timestep samplers: histograms against their densities (chi-square), SpeeD's formula, dual
sampling, IDDPM importance sampling and its unbiasing weights, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from fewstep.processes import EDM, Flow, TrigFlow, VPDiscrete, VPLinear
from fewstep.training.timesteps import (LogitNormal, LogNormal, LossSecondMoment, SpeeD, TimeGrid, Uniform,
                                        make_sampler, noise_fraction)

P_MIN = 1e-3  # fixed seeds: deterministic; a correct sampler passes with a wide margin


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread (conftest.one_thread)."""



def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def chi2_discrete(index: np.ndarray, pmf: np.ndarray, groups: int = 25) -> float:
    """p-value of grid-index counts against a pmf, grouping neighbouring indices."""
    counts = np.bincount(index, minlength=len(pmf)).astype(float)
    edges = np.linspace(0, len(pmf), groups + 1).round().astype(int)
    obs = np.add.reduceat(counts, edges[:-1])
    exp = np.add.reduceat(pmf, edges[:-1]) * counts.sum()
    keep = exp > 0
    return stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue


def chi2_continuous(x: np.ndarray, cdf, edges: np.ndarray) -> float:
    obs, _ = np.histogram(x, bins=edges)
    exp = np.diff(cdf(edges)) * len(x)
    keep = exp > 5
    return stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue


def speed_formula(N, k, tau):
    """SpeeD, REFERENCE.md: p(t) = k/(T + tau(k-1)) for t < tau, 1/(T + tau(k-1)) for t >= tau."""
    return np.array([(k if n < tau else 1.0) / (N + tau * (k - 1)) for n in range(N)])


# ------------------------------------------------------------------ grid and time convention


def test_vp_discrete_grid_is_ddpm_timesteps():
    p = VPDiscrete.linear()
    s = Uniform(p)
    assert s.discrete and s.grid.N == 1000
    t = s(5000, generator=gen())
    n = torch.round(t * 1000 - 1)
    assert torch.allclose(p.timestep_to_t(n), t, atol=0, rtol=1e-15)  # exactly the points (n + 1) / N
    assert n.min() >= 0 and n.max() <= 999
    assert torch.equal(s.grid.index(t), n.long())


def test_continuous_grid_cells():
    g = TimeGrid(Flow())
    assert not g.discrete and g.N == 1000
    t = torch.tensor([g.t_min, g.t_min + 0.5 * g.h, g.t_max])
    assert g.index(t).tolist() == [0, 0, 999]
    assert np.allclose(noise_fraction(VPLinear(), torch.tensor([0.3])).numpy(),
                       1 - VPLinear().alpha(torch.tensor([0.3])).numpy() ** 2)


@pytest.mark.parametrize("process", [VPDiscrete.linear(), VPLinear(), EDM(), Flow(), TrigFlow()], ids=repr)
@pytest.mark.parametrize("name", ["uniform", "speed", "logit-normal", "lognormal", "iddpm"])
def test_times_in_range_and_reproducible(process, name):
    s = make_sampler(name, process)
    t1, w1 = s.sample(4096, generator=gen(3))
    t2, _ = s.sample(4096, generator=gen(3))
    assert t1.dtype == torch.float64 and t1.shape == (4096,)
    assert torch.equal(t1, t2)
    assert t1.min() >= process.t_min - 1e-12 and t1.max() <= process.t_max + 1e-12
    assert torch.all(w1 == 1)
    process.check(t1)


# ------------------------------------------------------------------ histograms vs densities


@pytest.mark.parametrize("k,tau", [(5, 700), (2, 700), (3, 250)])
def test_speed_discrete_histogram(k, tau):
    s = SpeeD(VPDiscrete.linear(), k=k, tau=tau)
    pmf = speed_formula(1000, k, tau)
    assert np.allclose(s.pmf(), pmf, rtol=1e-12) and math.isclose(pmf.sum(), 1.0)
    idx = s.grid.index(s(200_000, generator=gen(1))).numpy()
    assert chi2_discrete(idx, pmf) > P_MIN
    # the boundary: mass below tau is k tau / (N + tau (k - 1))
    assert abs((idx < tau).mean() - k * tau / (1000 + tau * (k - 1))) < 0.005
    # power: the same counts are rejected against the uniform law
    assert chi2_discrete(idx, np.full(1000, 1e-3)) < 1e-10


def test_speed_defaults_follow_official_configs():
    s = SpeeD(VPDiscrete.linear())
    assert (s.k, s.tau, s.dual) == (5.0, 700, False)
    s = SpeeD(Flow())
    assert s.tau == 700 and s.grid.N == 1000


@pytest.mark.parametrize("process", [VPLinear(), EDM(), Flow(), TrigFlow()], ids=repr)
def test_speed_continuous_histogram(process):
    s = SpeeD(process, k=5, tau=700)
    t = s(200_000, generator=gen(2)).numpy()
    edges = np.linspace(process.t_min, process.t_max, 41)
    assert chi2_continuous(t, s.cdf, edges) > P_MIN
    t_tau = process.t_min + 0.7 * (process.t_max - process.t_min)
    assert math.isclose(float(s.cdf(t_tau)), 5 * 700 / (1000 + 700 * 4), rel_tol=1e-12)
    assert abs((t < t_tau).mean() - 5 * 700 / (1000 + 700 * 4)) < 0.005


@pytest.mark.parametrize("process", [VPDiscrete.linear(), VPLinear(), Flow(), TrigFlow()], ids=repr)
def test_uniform_histogram(process):
    s = Uniform(process)
    t = s(100_000, generator=gen(4))
    if s.discrete:
        assert chi2_discrete(s.grid.index(t).numpy(), s.pmf()) > P_MIN
    else:
        edges = np.linspace(process.t_min, process.t_max, 41)
        assert chi2_continuous(t.numpy(), lambda x: (x - process.t_min) / (process.t_max - process.t_min),
                               edges) > P_MIN


@pytest.mark.parametrize("m,s_", [(0.0, 1.0), (-0.5, 0.8)])
def test_logit_normal_histogram(m, s_):
    p = Flow()
    s = LogitNormal(p, m=m, s=s_)
    t = s(100_000, generator=gen(5)).numpy()
    edges = np.linspace(p.t_min, p.t_max, 41)
    assert chi2_continuous(t, s.cdf, edges) > P_MIN
    # density of u = (t - t_min)/(t_max - t_min): logit(u) ~ N(m, s^2)
    u = (t - p.t_min) / (p.t_max - p.t_min)
    z = np.log(u / (1 - u))
    assert abs(z.mean() - m) < 0.02 and abs(z.std() - s_) < 0.02
    # discrete on VPDiscrete: grid point floor(u N)
    d = LogitNormal(VPDiscrete.linear(), m=m, s=s_)
    idx = d.grid.index(d(100_000, generator=gen(6))).numpy()
    assert chi2_discrete(idx, d.pmf()) > P_MIN


@pytest.mark.parametrize("process", [EDM(), VPLinear(), Flow()], ids=repr)
def test_lognormal_histogram(process):
    s = LogNormal(process, P_mean=-1.2, P_std=1.2)
    t = s(100_000, generator=gen(7))
    log_s = -process.lambda_(t).numpy()  # ln(sigma/alpha)
    lo, hi = s.log_s_range
    edges = np.linspace(max(lo, -6.0), min(hi, 3.5), 41)
    edges[0], edges[-1] = lo, hi
    assert chi2_continuous(log_s, s.cdf_log_s, edges) > P_MIN
    if isinstance(process, EDM):  # truncation is negligible: plain N(-1.2, 1.2^2)
        assert abs(log_s.mean() + 1.2) < 0.02 and abs(log_s.std() - 1.2) < 0.02
        assert log_s.min() >= math.log(0.002) - 1e-9 and log_s.max() <= math.log(80) + 1e-9


# ------------------------------------------------------------------ dual (mirrored) sampling


def test_speed_dual_mirrors_around_official_boundary():
    p = VPDiscrete.linear()
    ac = p.alphas_cumprod.numpy()
    ms = int(np.argmax(np.gradient(np.sqrt(1 - ac)) < 1e-4) + 1)  # the official code's boundary
    s = SpeeD(p, dual=True)
    assert s.mirror == ms == 642
    n = 20_001
    t = s(n, generator=gen(8))
    idx = s.grid.index(t).numpy()
    first, rest = idx[: n // 2 + 1], idx[n // 2 + 1:]
    expected = np.where(first < ms, ms - first, first - ms)[: len(rest)]
    assert np.array_equal(rest, expected)
    assert chi2_discrete(first, s.pmf()) > P_MIN
    # continuous processes mirror in grid units too
    c = SpeeD(VPLinear(), dual=True)
    t = c(1001, generator=gen(9))
    v = ((t - c.grid.t_min) / c.grid.h).numpy()
    a, b = v[:501], v[501:]
    assert np.allclose(b, np.where(a < c.mirror, c.mirror - a, a - c.mirror)[:500], atol=1e-9)


# ------------------------------------------------------------------ IDDPM importance sampling


def _filled(sampler, f):
    """Feed `history` losses f(n) to every cell."""
    N = sampler.grid.N
    t = sampler.grid.draw(torch.arange(N).repeat(sampler.history), gen(0))
    sampler.update(t, f(sampler.grid.index(t).double()))
    return sampler


def test_iddpm_uniform_until_warm_then_second_moment():
    p = VPDiscrete.linear(num_steps=50)
    s = LossSecondMoment(p, history=4, uniform_prob=0.01)
    t, w = s.sample(1000, generator=gen())
    assert not s.warm and torch.all(w == 1)
    _filled(s, lambda n: 1.0 + n)  # L_n = n + 1: E[L^2]^(1/2) = n + 1
    assert s.warm
    expected = (np.arange(50) + 1.0) / np.sum(np.arange(50) + 1.0) * 0.99 + 0.01 / 50
    assert np.allclose(s.pmf(), expected, rtol=1e-12)
    t, w = s.sample(100_000, generator=gen(1))
    idx = s.grid.index(t)
    assert chi2_discrete(idx.numpy(), expected, groups=10) > P_MIN
    assert torch.allclose(w, 1.0 / (50 * torch.from_numpy(expected)[idx]))
    # unbiasedness: E_p[w h(t)] = uniform mean of h
    h = torch.cos(idx.double() / 7.0) + 2.0
    assert abs(float((w * h).mean()) - float((torch.cos(torch.arange(50.0) / 7.0) + 2.0).mean())) < 0.01


def test_iddpm_history_is_a_ring_and_state_round_trips():
    p = VPLinear()
    s = LossSecondMoment(p, history=2, num_steps=10)
    cell = s.grid.draw(torch.zeros(1, dtype=torch.long), gen())
    for v in (1.0, 2.0, 3.0, float("nan")):  # non-finite losses are ignored
        s.update(cell, torch.tensor([v]))
    assert s.state_dict()["losses"][0].tolist() == [2.0, 3.0]
    _filled(s, lambda n: torch.ones_like(n))
    s2 = LossSecondMoment(p, history=2, num_steps=10)
    s2.load_state_dict(s.state_dict())
    assert np.array_equal(s2.pmf(), s.pmf())
    with pytest.raises(ValueError, match="does not match"):
        LossSecondMoment(p, history=3, num_steps=10).load_state_dict(s.state_dict())


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name,kwargs,match", [
    ("speed", {"k": 0.5}, "k must be"),
    ("speed", {"tau": 1000}, "tau must lie"),
    ("speed", {"tau": 0.7}, "integer grid index"),
    ("speed", {"lam": 0.6}, "unknown option"),
    ("logit-normal", {"s": 0.0}, "s must be"),
    ("lognormal", {"P_std": -1.0}, "P_std"),
    ("iddpm", {"history": 0}, "history"),
    ("iddpm", {"uniform_prob": 2.0}, "uniform_prob"),
    ("uniform", {"num_steps": 1}, "num_steps"),
    ("bogus", {}, "unknown timestep sampler"),
])
def test_bad_sampler_input(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sampler(name, VPDiscrete.linear(), **kwargs)


def test_bad_counts():
    s = Uniform(Flow())
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            s(n)
    with pytest.raises(ValueError, match="Process"):
        Uniform("vp")
