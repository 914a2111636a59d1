import pytest
import torch

from conftest import all_processes
from fewstep.predictions import PREDICTIONS, Denoiser, from_x0, to_x0, wrap
from fewstep.processes import EDM, Flow, TrigFlow, VPDiscrete, VPLinear
from fewstep.testing import GaussianMixture

PROCESSES = all_processes()
IDS = [repr(p) for p in PROCESSES]


def _state(p, n=8, d=5):
    x0 = torch.randn(n, d, dtype=torch.float64)
    eps = torch.randn(n, d, dtype=torch.float64)
    t = torch.linspace(p.t_min, p.t_max, n, dtype=torch.float64)
    a, s = p.alpha_sigma(t)
    return a[:, None] * x0 + s[:, None] * eps, t, x0, eps, a[:, None], s[:, None]


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_round_trip(p, kind):
    x, t, x0, _, _, _ = _state(p)
    pred = from_x0(x0, kind, x, t, p)
    assert torch.allclose(to_x0(pred, kind, x, t, p), x0, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
def test_closed_forms(p):
    x, t, x0, eps, a, s = _state(p)
    assert torch.allclose(from_x0(x0, "eps", x, t, p), eps, atol=1e-7)
    assert torch.allclose(from_x0(x0, "score", x, t, p), -eps / s, rtol=1e-7, atol=1e-7)
    r = torch.sqrt(a**2 + s**2)
    assert torch.allclose(from_x0(x0, "v", x, t, p), (a * eps - s * x0) / r, atol=1e-7)
    da, ds = p.alpha_sigma_dot(t)
    assert torch.allclose(from_x0(x0, "flow", x, t, p), da[:, None] * x0 + ds[:, None] * eps, atol=1e-6)


def test_named_closed_forms():
    # rectified flow velocity is eps - x0; VP v is alpha eps - sigma x0; TrigFlow F is (cos z/sd - sin x0/sd)
    f = Flow()
    x, t, x0, eps, _, _ = _state(f)
    assert torch.allclose(from_x0(x0, "flow", x, t, f), eps - x0, atol=1e-7)
    vp = VPLinear()
    x, t, x0, eps, a, s = _state(vp)
    assert torch.allclose(from_x0(x0, "v", x, t, vp), a * eps - s * x0, atol=1e-7)
    sd = 0.5
    tf = TrigFlow(sigma_data=sd)
    x, t, x0, eps, a, s = _state(tf)
    z = sd * eps  # TrigFlow's noise z ~ N(0, sd^2)
    # sCM: the PF-ODE is dx/dt = sd F, and dx/dt = cos(t) z - sin(t) x0 on a pair
    F = from_x0(x0, "trigflow", x, t, tf, sigma_data=sd)
    assert torch.allclose(sd * F, torch.cos(t)[:, None] * z - torch.sin(t)[:, None] * x0, atol=1e-7)
    # EDM: F = (x0 - c_skip x) / c_out
    e = EDM()
    x, t, x0, eps, _, s = _state(e)
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / torch.sqrt(s**2 + sd**2)
    assert torch.allclose(from_x0(x0, "edm", x, t, e), (x0 - c_skip * x) / c_out, atol=1e-7)


@pytest.mark.parametrize("p", PROCESSES, ids=IDS)
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_wrap_every_prediction_gives_the_exact_denoiser(p, kind):
    g = GaussianMixture.random(d=6, K=4, seed=3)
    t = torch.linspace(p.t_min, p.t_max, 9, dtype=torch.float64)[1:-1]
    x, _, _ = g.sample_xt(7, t, p)
    D = wrap(g.as_model(p, kind), p, kind)
    assert torch.allclose(D(x, t), g.x0(x, t, p), atol=1e-8, rtol=1e-8)
    assert torch.allclose(D.eps(x, t), g.eps(x, t, p), atol=1e-7, rtol=1e-6)
    assert D.calls == 2


def test_denoiser_scalar_time_dtype_and_shape_errors():
    p = VPDiscrete.linear()
    calls = []

    def model(x, t, **kw):
        calls.append((x.dtype, t.shape, kw))
        return torch.zeros_like(x)

    D = Denoiser(model, p, "eps", model_dtype=torch.bfloat16)
    x = torch.randn(4, 3)
    out = D(x, 0.5, class_labels=torch.tensor([1, 2, 3, 4]))
    assert out.dtype == torch.float32
    assert calls[0][0] == torch.bfloat16 and calls[0][1] == (4,) and "class_labels" in calls[0][2]
    times = []
    Denoiser(lambda x, t: times.append(t) or torch.zeros_like(x), p, "eps", model_dtype=torch.bfloat16)(x, 1.0)
    assert times[0].dtype == torch.float32 and float(times[0][0]) == 999.0  # not rounded to bf16
    a = float(p.alpha(0.5))
    assert torch.allclose(out, x / a, rtol=1e-5)  # eps = 0 => x0 = x / alpha
    with pytest.raises(ValueError, match="returned shape"):
        Denoiser(lambda x, t: x[:, :1], p)(x, 0.5)
    with pytest.raises(ValueError, match="unknown prediction type"):
        wrap(model, p, "noise")
    with pytest.raises(ValueError, match="outside its domain"):
        D(x, 2.0)
