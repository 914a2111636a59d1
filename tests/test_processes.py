import math

import pytest
import torch

from conftest import all_processes
from fewstep.processes import EDM, Flow, TrigFlow, VPCosine, VPDiscrete, VPLinear, convert, get_process

PROCESSES = all_processes()
IDS = [repr(p) for p in PROCESSES]


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_t_of_lambda_inverts_lambda(p):
    t = torch.linspace(p.t_min, p.t_max, 20001, dtype=torch.float64)
    lam = p.lambda_(t)
    assert torch.all(lam[1:] < lam[:-1]), "lambda must decrease strictly in t"
    assert torch.allclose(p.t_of_lambda(lam), t, rtol=0, atol=1e-9 * max(1.0, p.T))


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_alpha_sigma_lambda_consistent(p):
    t = torch.linspace(p.t_min, p.t_max, 101, dtype=torch.float64)
    a, s = p.alpha_sigma(t)
    assert torch.allclose(p.lambda_(t), torch.log(a / s), atol=1e-12)
    assert float(p.sigma(0.0)) == 0.0 and float(p.alpha(0.0)) == pytest.approx(1.0)
    assert float(p.t_of_lambda(torch.tensor(math.inf, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_alpha_sigma_dot_matches_finite_difference(p):
    t = torch.linspace(p.t_min + 0.01 * (p.t_max - p.t_min), 0.99 * p.t_max, 37, dtype=torch.float64)
    h = 1e-6 * max(1.0, p.T)
    if isinstance(p, VPDiscrete):  # piecewise linear: stay inside one segment
        t = (torch.floor(t * p.N) + 0.5) / p.N
        h = 1e-3 / p.N
    da, ds = p.alpha_sigma_dot(t)
    ap, sp = p.alpha_sigma(t + h)
    am, sm = p.alpha_sigma(t - h)
    assert torch.allclose(da, (ap - am) / (2 * h), rtol=1e-5, atol=1e-7)
    assert torch.allclose(ds, (sp - sm) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_model_time_round_trip_and_config(p):
    t = torch.linspace(p.t_min, p.t_max, 11, dtype=torch.float64)
    assert torch.allclose(p.t_of_model_time(p.model_time(t)), t, atol=1e-12)
    q = get_process(p.config())
    assert torch.allclose(q.lambda_(t), p.lambda_(t), atol=1e-12)


def test_closed_forms():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    p = VPLinear()
    assert torch.allclose(p.alpha(t), torch.exp(-0.25 * t**2 * 19.9 - 0.05 * t))
    assert torch.allclose(p.alpha(t) ** 2 + p.sigma(t) ** 2, torch.ones(3, dtype=torch.float64))
    f = Flow()
    assert torch.allclose(f.alpha(t), 1 - t) and torch.allclose(f.sigma(t), t)
    tf = TrigFlow(sigma_data=0.5)
    assert torch.allclose(tf.alpha(t), torch.cos(t)) and torch.allclose(tf.sigma(t), 0.5 * torch.sin(t))
    assert tf.t_max == pytest.approx(1.56454, abs=1e-5)
    e = EDM()
    assert torch.allclose(e.sigma(t), t) and torch.allclose(e.alpha(t), torch.ones(3, dtype=torch.float64))
    c = VPCosine()
    s = 0.008
    ref = torch.cos((t + s) / (1 + s) * math.pi / 2) / math.cos(s / (1 + s) * math.pi / 2)
    assert torch.allclose(c.alpha(t), ref)


def test_discrete_matches_alphas_cumprod_at_grid_points():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    p = VPDiscrete(betas=betas)
    n = torch.tensor([0, 1, 10, 500, 999])
    t = p.timestep_to_t(n)
    assert torch.allclose(p.alpha(t) ** 2, ac[n], rtol=1e-12)
    assert torch.allclose(p.model_time(t), n.to(torch.float64))
    # scaled_linear is linear in sqrt(beta) (Stable Diffusion)
    sl = VPDiscrete.scaled_linear()
    b = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(sl.alphas_cumprod, torch.cumprod(1 - b, 0))
    # iDDPM cosine: alphas_cumprod close to f(t)/f(0)
    cos = VPDiscrete.cosine()
    f = lambda u: math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(cos.alphas_cumprod[499]) == pytest.approx(f(500) / f(0), rel=1e-6)


@pytest.mark.parametrize("src", PROCESSES, ids=IDS)
def test_convert_keeps_snr_and_signal(src):
    dsts = [VPLinear(), EDM(), Flow(), TrigFlow()]
    x0 = torch.randn(6, 3, dtype=torch.float64)
    eps = torch.randn(6, 3, dtype=torch.float64)
    t = torch.linspace(src.t_min, src.t_max, 6, dtype=torch.float64)
    a, s = src.alpha_sigma(t)
    x = a[:, None] * x0 + s[:, None] * eps
    for dst in dsts:
        lam = src.lambda_(t)
        if (lam > dst.lambda_(torch.tensor(dst.t_min * 1e-3)).item()).any() or (lam < dst.lambda_(dst.T * 0.999999)).any():
            continue  # outside dst's representable range
        y, t2 = convert(x, t, src, dst)
        a2, s2 = dst.alpha_sigma(t2)
        assert torch.allclose(dst.lambda_(t2), lam, atol=1e-9)
        assert torch.allclose(y, a2[:, None] * x0 + s2[:, None] * eps, atol=1e-9)
        back, t3 = convert(y, t2, dst, src)
        assert torch.allclose(back, x, atol=1e-9) and torch.allclose(t3, t, atol=1e-9 * src.T)


def test_convert_to_trigflow_matches_scm_formula():
    # sCM: t = arctan(s / (sd a)), x_t = sd x' / sqrt(a^2 sd^2 + s^2); EDM: t = arctan(sigma / sd)
    sd = 0.5
    src, dst = EDM(), TrigFlow(sigma_data=sd)
    sig = torch.tensor([0.01, 0.5, 3.0, 79.0], dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    y, t = convert(x, sig, src, dst)
    assert torch.allclose(t, torch.atan(sig / sd))
    assert torch.allclose(y, torch.cos(t)[:, None] * x)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="outside its domain"):
        VPLinear().alpha(1.5)
    with pytest.raises(ValueError, match="outside its domain"):
        TrigFlow().sigma(-0.1)
    with pytest.raises(ValueError, match="outside its domain"):
        VPDiscrete.linear().lambda_(torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="non-decreasing"):
        VPDiscrete(betas=[0.01, 0.02, 0.015])
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        VPDiscrete(betas=[0.0, 0.5])
    with pytest.raises(ValueError, match="strictly decreasing"):
        VPDiscrete(alphas_cumprod=[0.9, 0.95])
    with pytest.raises(ValueError, match="exactly one"):
        VPDiscrete()
    with pytest.raises(ValueError, match="sigma_data must be positive"):
        TrigFlow(sigma_data=-0.5)
    with pytest.raises(ValueError, match="sigma_data must be positive"):
        EDM(sigma_data=0.0)
    with pytest.raises(ValueError, match="beta_0 < beta_1"):
        VPLinear(beta_0=20, beta_1=0.1)
    with pytest.raises(ValueError, match="t_min < t_max"):
        Flow(t_max=1.0)
    with pytest.raises(ValueError, match="unknown process"):
        get_process("vpp")
