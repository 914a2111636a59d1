"""DiffusionLoss: targets in closed form for every prediction type, every process/prediction pair
round-trips to x0, label dropout for CFG, sharded randomness, importance and learned weights;
EMA half-life maths."""

import math

import pytest
import torch

from fewstep.predictions import PREDICTIONS, network_input, to_x0
from fewstep.processes import EDM, Flow, TrigFlow, VPCosine, VPDiscrete, VPLinear
from fewstep.training.ema import EMA, ema_beta
from fewstep.training.losses import DiffusionLoss
from fewstep.training.timesteps import LossSecondMoment, make_sampler
from fewstep.training.weighting import LearnedWeighting, MinSNR

PROCESSES = [VPDiscrete.linear(), VPLinear(), VPCosine(), EDM(), Flow(), TrigFlow()]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread (conftest.one_thread)."""


class Recorder(torch.nn.Module):
    """A 'network' returning zeros (so loss = w * mean(target^2)) that records its inputs."""

    def forward(self, x, t, class_labels=None):
        self.x, self.t, self.labels = x, t, class_labels
        return torch.zeros_like(x)


def draws(loss_fn, n, shape, seed):
    """Replay the loss's draws: (t, eps) from the same generator state."""
    g = torch.Generator().manual_seed(seed)
    t, _ = loss_fn.sampler.sample(n, generator=g)
    eps = torch.randn((n, *shape), generator=g, dtype=torch.float64)
    return t, eps


def closed_form_target(kind, process, x0, eps, t, sd=0.5):
    a, s = process.alpha_sigma(t)
    a, s = a[:, None], s[:, None]
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return (a * eps - s * x0) / torch.sqrt(a**2 + s**2)
    if kind == "score":
        return -eps / s
    if kind == "flow":
        da, ds = process.alpha_sigma_dot(t)
        return da[:, None] * x0 + ds[:, None] * eps
    if kind == "trigflow":  # on TrigFlow itself: F = (cos t z - sin t x0) / sd, z = sd eps
        assert isinstance(process, TrigFlow)
        c, sn = torch.cos(t)[:, None], torch.sin(t)[:, None]
        return (c * sd * eps - sn * x0) / sd
    if kind == "edm":  # on EDM: F = (x0 - c_skip x) / c_out (Karras et al. 2022, eq. 8)
        assert isinstance(process, EDM)
        sig = t[:, None]
        x = x0 + sig * eps
        c_skip = sd**2 / (sig**2 + sd**2)
        c_out = sig * sd / torch.sqrt(sig**2 + sd**2)
        return (x0 - c_skip * x) / c_out
    raise AssertionError(kind)


CASES = [(p, k) for p in (VPDiscrete.linear(), VPLinear(), Flow()) for k in ("eps", "x0", "v", "score", "flow")]
CASES += [(TrigFlow(), "trigflow"), (EDM(), "edm"), (EDM(), "eps"), (TrigFlow(), "v")]


@pytest.mark.parametrize("process,kind", CASES, ids=lambda v: v if isinstance(v, str) else repr(v))
def test_targets_closed_form(process, kind):
    n, shape = 32, (3,)
    x0 = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))
    loss_fn = DiffusionLoss(process, kind, generator=torch.Generator().manual_seed(5))
    model = Recorder()
    loss, stats = loss_fn(model, x0)
    t, eps = draws(loss_fn, n, shape, 5)
    assert torch.equal(stats["t"], t)
    target = closed_form_target(kind, process, x0.double(), eps, t)
    per_sample = (target.float() ** 2).mean(dim=1)
    assert torch.allclose(stats["mse"], per_sample, rtol=1e-5)
    assert torch.allclose(loss, per_sample.mean(), rtol=1e-5)
    # the network saw the state x_t = alpha x0 + sigma eps through network_input
    a, s = process.alpha_sigma(t)
    x_t = a[:, None] * x0.double() + s[:, None] * eps
    x_in, t_in = network_input(x_t, t, process, kind)
    assert torch.allclose(model.x, x_in.float(), rtol=1e-6, atol=1e-6)
    assert torch.allclose(model.t, t_in.float(), rtol=1e-6)
    assert model.labels is None


def test_vp_discrete_network_sees_ddpm_indices():
    loss_fn = DiffusionLoss(VPDiscrete.linear(), "eps", generator=torch.Generator().manual_seed(0))
    model = Recorder()
    loss_fn(model, torch.zeros(64, 1, 2, 2))
    assert torch.equal(model.t, model.t.round()) and model.t.min() >= 0 and model.t.max() <= 999


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_every_pair_round_trips(process, kind):
    """The target the loss builds is the prediction whose x0 is the data, for every pair."""
    captured = {}

    class Perfect(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            return captured["target"].float()

    import fewstep.training.losses as L

    original = L.from_x0

    def spy(x0, k, x, t, p, sd):
        out = original(x0, k, x, t, p, sd)
        captured.update(target=out, x=x, t=t)
        return out

    L.from_x0 = spy
    try:
        x0 = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
        loss_fn = DiffusionLoss(process, kind, generator=torch.Generator().manual_seed(3))
        loss, _ = loss_fn(Perfect(), x0)
    finally:
        L.from_x0 = original
    assert float(loss) == 0.0
    back = to_x0(captured["target"], kind, captured["x"], captured["t"], process)
    assert torch.allclose(back, x0.double(), rtol=1e-6, atol=1e-6)


def test_label_dropout_for_cfg():
    n, C = 4000, 10
    labels = torch.arange(n) % C
    model = Recorder()
    loss_fn = DiffusionLoss(VPDiscrete.linear(), "eps", num_classes=C, generator=torch.Generator().manual_seed(0))
    assert loss_fn.p_uncond == 0.1  # default when conditional
    loss_fn(model, torch.zeros(n, 2), labels)
    dropped = model.labels == C
    assert abs(dropped.float().mean().item() - 0.1) < 0.015
    assert torch.equal(model.labels[~dropped], labels[~dropped])
    # p_uncond = 0 keeps all labels; unconditional losses pass none
    DiffusionLoss(VPDiscrete.linear(), num_classes=C, p_uncond=0.0)(model, torch.zeros(8, 2), labels[:8])
    assert torch.equal(model.labels, labels[:8])
    DiffusionLoss(VPDiscrete.linear())(model, torch.zeros(8, 2), labels[:8])
    assert model.labels is None
    with pytest.raises(ValueError, match="p_uncond"):
        DiffusionLoss(VPDiscrete.linear(), num_classes=C, p_uncond=1.5)


def test_sharded_randomness_matches_global_batch():
    process = VPDiscrete.linear()
    x0 = torch.randn(12, 3)
    labels = torch.arange(12) % 4
    full = DiffusionLoss(process, "v", make_sampler("speed", process), num_classes=4,
                         generator=torch.Generator().manual_seed(9))
    _, s_full = full(Recorder(), x0, labels)
    parts = []
    for rank in range(3):
        shard = DiffusionLoss(process, "v", make_sampler("speed", process), num_classes=4,
                              generator=torch.Generator().manual_seed(9), rank=rank, world_size=3)
        m = Recorder()
        _, s = shard(m, x0[rank * 4:(rank + 1) * 4], labels[rank * 4:(rank + 1) * 4])
        parts.append(s)
    for key in ("t", "mse", "loss"):
        assert torch.allclose(torch.cat([p[key] for p in parts]), s_full[key])


def test_importance_and_learned_weights_enter_the_loss():
    process = VPDiscrete.linear(num_steps=20)
    sampler = LossSecondMoment(process, history=1)
    sampler.update(process.timestep_to_t(torch.arange(20)), torch.arange(1.0, 21.0))
    base = MinSNR(process, "eps")
    lw = LearnedWeighting(process, base=base)
    with torch.no_grad():
        lw.net[2].bias.fill_(-0.5)
    loss_fn = DiffusionLoss(process, "eps", sampler, lw, generator=torch.Generator().manual_seed(4))
    loss, stats = loss_fn(Recorder(), torch.randn(64, 2))
    g = torch.Generator().manual_seed(4)
    t, iw = sampler.sample(64, generator=g)
    assert torch.equal(stats["t"], t) and not torch.all(iw == 1)
    expected = (base(t).float() * stats["mse"] / math.exp(-0.5) - 0.5) * iw.float()
    assert torch.allclose(stats["loss"], expected, rtol=1e-5)
    assert torch.allclose(loss, expected.mean(), rtol=1e-5)
    assert sum(1 for _ in loss_fn.parameters()) == 4  # the learned weighting is a submodule


def test_loss_checks_model_output_shape():
    with pytest.raises(ValueError, match="shape"):
        DiffusionLoss(Flow())(lambda x, t: torch.zeros(3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="prediction"):
        DiffusionLoss(Flow(), "noise")


# ------------------------------------------------------------------ EMA


def test_ema_beta_half_life_in_images():
    assert ema_beta(64, 6400) == pytest.approx(0.5 ** 0.01)
    # after half_life images the initial weights keep weight 1/2, whatever the batch size
    for b in (1, 16, 250):
        assert ema_beta(b, 1000) ** (1000 / b) == pytest.approx(0.5)
    # warm-up: half-life min(h, ratio * images_seen)
    assert ema_beta(10, 1000, images_seen=100, warmup_ratio=0.5) == pytest.approx(0.5 ** (10 / 50))
    assert ema_beta(10, 1000, images_seen=1e6, warmup_ratio=0.5) == pytest.approx(0.5 ** (10 / 1000))
    assert ema_beta(10, 0) == 0.0


def test_ema_tracks_weights_and_state_round_trips():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, batch_size=10, half_life_images=100)
    w0 = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    for step in range(10):  # 100 images = one half-life: w_ema = w0 + (1 - 0.5) * 1
        ema.update(net, images_seen=10 * (step + 1))
    assert torch.allclose(ema.module.weight, w0 + 0.5, atol=1e-6)
    assert not ema.module.weight.requires_grad and not ema.module.training
    other = EMA(torch.nn.Linear(2, 1), 10, 100)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.module.weight, ema.module.weight)
    with pytest.raises(ValueError):
        EMA(net, batch_size=0, half_life_images=1)
    with pytest.raises(ValueError):
        EMA(net, batch_size=1, half_life_images=-1)
