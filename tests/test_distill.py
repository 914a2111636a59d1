"""Tests for fewstep.distill (sCM: sCT / sCD on TrigFlow): the tangent against finite differences of
the consistency function, JVP through every model family, the teacher adapter against the exact
oracle, the loss's stop-gradient structure, sampling, validation, and short sCD / sCT runs."""

import json
import math

import pytest
import torch

from fewstep.data import gmm2d_oracle
from fewstep.distill import (SCMConfig, SCMLoss, TeacherVelocity, TrigFlowModel, build_student, consistency,
                             consistency_sample, consistency_times, copy_student, distill, init_from_teacher,
                             model_tangent, normalize_tangent, sample_t, scm_tangent, tangent_warmup,
                             trigflow_to_process)
from fewstep import sample
from fewstep.distill import TeacherParameterised, build_student_from_spec, student_from_teacher, student_spec
from fewstep.models import build_model, get_config
from fewstep.predictions import PREDICTIONS, wrap
from fewstep.processes import EDM, VE, Flow, TrigFlow, VPCosine, VPDiscrete, VPLinear
from fewstep.guidance import CFG
from fewstep.testing.gmm import GaussianMixture

TINY = ["unet-tiny", "dit-tiny", "mlp-tiny"]


def _randomize(model, seed=0, scale=1.0):
    """Random weights everywhere (zero-initialised output layers would make tangents vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * scale / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _input(name, batch, dtype=torch.float32, seed=0):
    cfg = get_config(name)
    g = torch.Generator().manual_seed(seed)
    shape = (batch, cfg.dim) if cfg.ARCH == "mlp" else (batch, cfg.in_channels, cfg.resolution, cfg.resolution)
    return torch.randn(shape, generator=g, dtype=dtype)


def _student(name="mlp-tiny", sd=0.5, seed=0, scale=1.0, **overrides):
    return TrigFlowModel(_randomize(build_model(name, time_scale=10.0, **overrides), seed, scale), sd)


# ------------------------------------------------------------------------------------------ tangent


def test_tangent_is_cos_t_times_total_derivative_of_consistency_function():
    """g (r = 1, unnormalised) = cos(t) df/dt along dx/dt = v, f = cos t x - sin t sd F (float64 FD)."""
    sd = 0.7
    model = _student(sd=sd).double()
    g0 = torch.Generator().manual_seed(1)
    x_t = torch.randn(6, 2, generator=g0, dtype=torch.float64)
    v = torch.randn(6, 2, generator=g0, dtype=torch.float64)
    t = torch.linspace(0.05, 1.5, 6, dtype=torch.float64)
    F, g = scm_tangent(lambda a, b: model(a, b), x_t, t, v, sd)
    h = 1e-5
    with torch.no_grad():
        fd = (model.consistency(x_t + h * v, t + h) - model.consistency(x_t - h * v, t - h)) / (2 * h)
        F_direct = model(x_t / sd, t)
    assert g.dtype == torch.float64
    torch.testing.assert_close(g, torch.cos(t)[:, None] * fd, atol=1e-6, rtol=0)
    torch.testing.assert_close(F, F_direct, atol=1e-12, rtol=0)  # the JVP's primal is F^-
    # the warm-up factor r scales only the second term
    _, g_half = scm_tangent(lambda a, b: model(a, b), x_t, t, v, sd, r=0.5)
    first = -(torch.cos(t) ** 2)[:, None] * (sd * F - v)
    torch.testing.assert_close(g_half - first, 0.5 * (g - first), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", TINY)
def test_jvp_through_every_model_family(name):
    """The JVP tangent through UNet (attention), DiT and MLP equals a float64 central difference, and
    the whole loss runs forward and backward in float32 on CPU."""
    cfg = get_config(name)
    labels = torch.tensor([1, 3, 10]) if cfg.num_classes else None  # 10 = the null class
    cond = {"class_labels": labels} if labels is not None else {}
    model = _student(name, sd=0.5, seed=2, scale=0.5).double()
    x_t = _input(name, 3, torch.float64) * 0.5
    v = _input(name, 3, torch.float64, seed=1)
    t = torch.tensor([0.2, 0.8, 1.4], dtype=torch.float64)
    fn = lambda a, b: model(a, b, **cond)  # noqa: E731
    F, g = scm_tangent(fn, x_t, t, v, 0.5, method="jvp")
    _, g_fd = scm_tangent(fn, x_t, t, v, 0.5, method="fd", fd_step=1e-5)
    assert torch.isfinite(g).all() and g.abs().max() > 0
    torch.testing.assert_close(g, g_fd, atol=1e-6, rtol=1e-6)

    model = model.float()
    loss = SCMLoss(SCMConfig(mode="sct", tangent_warmup=0), generator=torch.Generator().manual_seed(0))
    value, stats = loss(model, _input(name, 3), labels, step=5)
    value.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(value) and grads and all(torch.isfinite(gr).all() for gr in grads)
    assert set(stats) == {"t", "mse", "w", "g_norm", "loss"} and stats["t"].shape == (3,)


def test_dropout_masks_shared_between_tangent_and_gradient_pass():
    model = TrigFlowModel(_randomize(build_model("mlp-tiny", dropout=0.5, time_scale=10.0)), 0.5).double().train()
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 0.7, dtype=torch.float64)
    u_x, u_t = torch.randn(8, 2, dtype=torch.float64), torch.full((8,), 0.3, dtype=torch.float64)
    torch.manual_seed(123)
    F_minus, dF = model_tangent(lambda a, b: model(a, b), x, t, u_x, u_t)
    F = model(x, t)  # the next forward draws the same dropout masks
    torch.testing.assert_close(F, F_minus, atol=0, rtol=0)
    other = model(x, t)  # ... and a further one different masks (dropout is active)
    assert not torch.allclose(other, F)
    # the tangent is the derivative of the network with those masks: FD with the same seed
    h = 1e-5
    outs = []
    for s in (h, -h):
        torch.manual_seed(123)
        with torch.no_grad():
            outs.append(model(x + s * u_x, t + s * u_t))
    torch.testing.assert_close(dF, (outs[0] - outs[1]) / (2 * h), atol=1e-6, rtol=1e-6)


def test_jvp_stays_float32_under_bf16_autocast():
    model = _student("dit-tiny", seed=3, scale=0.5)
    x, u = _input("dit-tiny", 2), _input("dit-tiny", 2, seed=4)
    t, ut = torch.tensor([0.3, 1.0]), torch.tensor([0.2, 0.4])
    ref = model_tangent(lambda a, b: model(a, b), x, t, u, ut)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model_tangent(lambda a, b: model(a, b), x, t, u, ut)
    for r, gt in zip(ref, got):
        assert gt.dtype == torch.float32
        torch.testing.assert_close(gt, r, atol=1e-6, rtol=1e-5)


def test_tangent_normalisation():
    g = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(normalize_tangent(g, 0.1), torch.tensor([[3 / 5.1, 4 / 5.1], [0.0, 0.0]]))
    rms = 5.0 / math.sqrt(2)
    torch.testing.assert_close(normalize_tangent(g, 0.1, "rms"), g / (rms + 0.1))
    assert tangent_warmup(0, 100) == 0.0 and tangent_warmup(50, 100) == 0.5 and tangent_warmup(500, 100) == 1.0
    assert tangent_warmup(0, 0) == 1.0


def test_time_proposal_is_log_normal_in_sd_tan_t():
    t = sample_t(20000, -1.0, 1.4, 0.5, torch.Generator().manual_seed(0), dtype=torch.float64)
    tau = torch.log(0.5 * torch.tan(t))
    assert 0 < t.min() and t.max() < math.pi / 2
    assert abs(tau.mean().item() + 1.0) < 0.05 and abs(tau.std().item() - 1.4) < 0.05


# ------------------------------------------------------------------------------------------ loss


def test_loss_is_stop_gradient_and_moves_F_along_g():
    """At F = F^- the loss is e^w ||g||^2 / D - w and its gradient -2 e^w / D g . dF/dtheta (mean over
    the batch): F^- and g carry no gradient (target = stop-grad current model, not the EMA)."""
    model = _student(seed=4).double()
    loss = SCMLoss(SCMConfig(mode="sct", tangent_warmup=0, adaptive_weight=False), generator=torch.Generator())
    x0 = torch.randn(16, 2, dtype=torch.float64)
    loss.generator.manual_seed(7)
    value, stats = loss(model, x0)
    value.backward()
    got = [p.grad.clone() for p in model.parameters()]

    # rebuild the same draws and the expected gradient by hand
    gen = torch.Generator().manual_seed(7)
    t = sample_t(16, -1.0, 1.4, 0.5, gen, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64) * 0.5
    x_t = torch.cos(t)[:, None] * x0 + torch.sin(t)[:, None] * z
    v = torch.cos(t)[:, None] * z - torch.sin(t)[:, None] * x0
    _, g = scm_tangent(lambda a, b: model(a, b), x_t, t, v, 0.5)
    g = normalize_tangent(g)
    torch.testing.assert_close(stats["t"], t)
    torch.testing.assert_close(value.detach(), g.square().mean(1).mean(), atol=1e-12, rtol=0)
    model.zero_grad()
    F = model(x_t / 0.5, t)
    (-(2.0 / 2) * (g * F).sum(1).mean()).backward()
    for a, b in zip(got, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_adaptive_weight_is_learned_and_minimised_at_log_mse():
    loss = SCMLoss(SCMConfig(mode="sct", tangent_warmup=0), generator=torch.Generator().manual_seed(0))
    model = _student(seed=5)
    value, stats = loss(model, torch.randn(32, 2))
    assert torch.all(stats["w"] == 0)  # zero-initialised
    value.backward()
    assert loss.weight.mlp[2].weight.grad.abs().sum() > 0  # w gets a gradient
    params = list(model.parameters()) + list(loss.parameters())
    assert len(list(loss.parameters())) > 0 and len(params) > len(list(model.parameters()))
    # for a fixed mse m, e^w m - w is minimised at w = -log m
    w = torch.linspace(-3, 3, 601)
    m = 0.2
    assert abs(w[torch.argmin(torch.exp(w) * m - w)].item() + math.log(m)) < 0.01


def test_finite_difference_tangent_fallback_matches_jvp():
    model = _student(seed=6)
    x0 = torch.randn(64, 2)
    losses = []
    for method in ("jvp", "fd"):
        loss = SCMLoss(SCMConfig(mode="sct", tangent=method, fd_step=1e-3, tangent_warmup=0, adaptive_weight=False),
                       generator=torch.Generator().manual_seed(3))
        losses.append(loss(model, x0)[0].item())
    assert abs(losses[0] - losses[1]) < 1e-4 * max(1.0, abs(losses[0]))


# ------------------------------------------------------------------------------------------ teacher


ALL_PROCESSES = [VPDiscrete.linear(), VPDiscrete.cosine(), VPLinear(), VPCosine(), EDM(), VE(), Flow(), TrigFlow(),
                 TrigFlow(sigma_data=1.0)]


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=lambda p: repr(p)[:20])
@pytest.mark.parametrize("sd", [0.5, 0.8])
def test_teacher_velocity_exact_for_every_process_and_prediction(process, sd):
    gmm = GaussianMixture.random(d=3, K=4, seed=1)
    trig = TrigFlow(sigma_data=sd)
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0.05, 1.45, 8, dtype=torch.float64)
    x_t = torch.randn(8, 3, generator=g, dtype=torch.float64)
    exact = sd * gmm.predict(x_t, t, trig, "trigflow", sigma_data=sd)
    for kind in PREDICTIONS:
        teacher = TeacherVelocity(gmm.denoiser(process, kind), sigma_data=sd)
        torch.testing.assert_close(teacher(x_t, t), exact, atol=1e-9, rtol=1e-9, msg=f"{kind} on {process}")
        torch.testing.assert_close(teacher.F(x_t, t), exact / sd, atol=1e-9, rtol=1e-9)


def test_teacher_state_conversion_equals_processes_convert():
    from fewstep.processes import convert

    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 1.0, 1.4], dtype=torch.float64)
    for process in ALL_PROCESSES:
        xp, tp = trigflow_to_process(x, t, process, 0.5)
        xc, tc = convert(x, t, TrigFlow(0.5), process)
        torch.testing.assert_close(xp, xc, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(tp, tc, atol=1e-10, rtol=1e-10)


def test_teacher_outside_its_domain_is_clamped_not_refused():
    gmm = GaussianMixture.random(d=2, K=3, seed=2)
    teacher = TeacherVelocity(gmm.denoiser(EDM(sigma_max=80.0), "edm"), 0.5)
    t = torch.tensor([1.5705, 1.0], dtype=torch.float64)  # sigma = 0.5 tan(1.5705) ~ 1700 > 80
    x = torch.randn(2, 2, dtype=torch.float64)
    v = teacher(x, t)
    assert torch.isfinite(v).all()
    _, tp = trigflow_to_process(x, t, EDM(), 0.5)
    assert tp[0].item() == pytest.approx(80.0) and tp[1].item() == pytest.approx(0.5 * math.tan(1.0))


def test_teacher_classifier_free_guidance_per_sample_scale():
    gmm = GaussianMixture.random(d=2, K=4, seed=3, num_classes=2)
    sd, trig = 0.5, TrigFlow(0.5)
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.linspace(0.2, 1.4, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 1.5, 4.0], dtype=torch.float64)
    x0_c, x0_u = gmm.x0(x, t, trig, y), gmm.x0(x, t, trig)
    x0 = x0_u + w[:, None] * (x0_c - x0_u)
    exact = (torch.cos(t)[:, None] * x - x0) / torch.sin(t)[:, None]
    for process, kind in [(VPDiscrete.linear(), "eps"), (EDM(), "edm"), (Flow(), "flow")]:
        teacher = TeacherVelocity(gmm.denoiser(process, kind), sd, null_class=gmm.num_classes)
        torch.testing.assert_close(teacher(x, t, guidance=w, class_labels=y), exact, atol=1e-9, rtol=1e-9)
        fixed = TeacherVelocity(gmm.denoiser(process, kind), sd, guidance_scale=2.0, null_class=gmm.num_classes)
        x0_2 = x0_u + 2.0 * (x0_c - x0_u)
        torch.testing.assert_close(fixed(x, t, class_labels=y),
                                   (torch.cos(t)[:, None] * x - x0_2) / torch.sin(t)[:, None], atol=1e-9, rtol=1e-9)
    with pytest.raises(ValueError, match="class_labels"):
        TeacherVelocity(gmm.denoiser(EDM(), "edm"), sd)(x, t, guidance=2.0)


class _Counting:
    """A denoiser that records the batch size of each call."""

    def __init__(self, denoiser, seen: list):
        self.denoiser, self.seen, self.process = denoiser, seen, denoiser.process

    def __call__(self, x, t, **cond):
        self.seen.append(x.shape[0])
        return self.denoiser(x, t, **cond)


def test_teacher_guidance_interval_equals_the_interval_cfg_denoiser():
    """guidance_interval=(lo, hi): the teacher is guided only where its sigma / alpha lies in (lo, hi] (per
    sample, here on both sides of each bound), exactly as the CFG transform with that interval; w = 1
    outside. Refused for sCT and for an unguided teacher."""
    gmm = GaussianMixture.random(d=2, K=4, seed=5, num_classes=2)
    sd, interval = 0.5, (0.28, 5.42)  # TrigFlow t in (0.51, 1.48]
    x = torch.randn(8, 2, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 0.52, 0.9, 1.2, 1.47, 1.49, 1.55], dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    for process, kind in [(VPDiscrete.linear(), "eps"), (EDM(), "edm"), (TrigFlow(sd), "trigflow")]:
        D = gmm.denoiser(process, kind)
        limited = TeacherVelocity(D, sd, guidance_scale=2.5, null_class=2, guidance_interval=interval)
        cfg = CFG(D, 2.5, {"class_labels": y}, {"class_labels": torch.full_like(y, 2)}, interval=interval)
        torch.testing.assert_close(limited(x, t, class_labels=y), TeacherVelocity(cfg, sd)(x, t), atol=1e-9, rtol=1e-9)
        inside = (sd * torch.tan(t) > interval[0]) & (sd * torch.tan(t) <= interval[1])
        assert inside.tolist() == [False, False, True, True, True, True, False, False]
        plain = TeacherVelocity(D, sd)(x, t, class_labels=y)
        full = TeacherVelocity(D, sd, guidance_scale=2.5, null_class=2)(x, t, class_labels=y)
        v = limited(x, t, class_labels=y)
        torch.testing.assert_close(v[~inside], plain[~inside])
        torch.testing.assert_close(v[inside], full[inside])
        assert (v[inside] - plain[inside]).abs().max() > 1e-3  # guidance does act inside
        seen = []  # the unconditional branch is evaluated only where guided: 8 + 4 samples, one call
        counted = TeacherVelocity(_Counting(D, seen), sd, guidance_scale=2.5, null_class=2, guidance_interval=interval)
        torch.testing.assert_close(counted(x, t, class_labels=y), v, atol=1e-12, rtol=1e-12)
        assert seen == [12]
    assert SCMConfig(mode="scd", guidance=2.0, guidance_interval=[0.28, 5.42]).to_dict()["guidance_interval"] == [
        0.28, 5.42]
    for bad in (dict(mode="sct", guidance_interval=(0.1, 1.0)), dict(mode="scd", guidance_interval=(0.1, 1.0)),
                dict(mode="scd", guidance=2.0, guidance_interval=(1.0, 0.1))):
        with pytest.raises(ValueError, match="guidance"):
            SCMConfig(**bad)


# ------------------------------------------------------------------------------------------ students


def test_student_initialised_from_trigflow_teacher():
    teacher_net = _randomize(build_model("unet-tiny", time_scale=10.0))
    teacher = wrap(teacher_net, VPDiscrete.linear(), "trigflow", sigma_data=0.5)
    x, t, y = _input("unet-tiny", 2), torch.tensor([0.3, 1.2]), torch.tensor([2, 5])
    for guided in (False, True):
        student = build_student("unet-tiny", 0.5, guidance=guided)
        init_from_teacher(student, teacher)
        kw = {"guidance": torch.tensor([1.0, 3.0])} if guided else {}
        torch.testing.assert_close(student(x, t, class_labels=y, **kw), teacher_net(x, t, class_labels=y))
    with pytest.raises(ValueError, match="only TrigFlow-F"):
        init_from_teacher(build_student("unet-tiny"), wrap(teacher_net, VPDiscrete.linear(), "eps"))
    with pytest.raises(ValueError, match="time_scale"):
        init_from_teacher(build_student("unet-tiny", time_scale=1.0), teacher)
    with pytest.raises(ValueError, match="architecture"):
        init_from_teacher(build_student("unet-tiny", channels=16), teacher)


def test_guidance_conditioned_student():
    student = build_student("mlp-tiny", 0.5, guidance=True)
    _randomize(student, seed=8)
    x, t = torch.randn(3, 2), torch.tensor([0.2, 0.7, 1.3])
    a = student(x, t, guidance=torch.tensor([1.0, 1.0, 1.0]))
    b = student(x, t, guidance=torch.tensor([1.0, 4.0, 1.0]))
    assert torch.allclose(a[[0, 2]], b[[0, 2]]) and not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="guidance"):
        student(x, t)
    with pytest.raises(ValueError, match="guidance"):
        build_student("mlp-tiny")(x, t, guidance=2.0)
    # the loss draws w per sample from guidance_range and hands it to the teacher
    gmm = GaussianMixture.random(d=2, K=4, seed=3, num_classes=2)
    seen = []

    class Spy(TeacherVelocity):
        def __call__(self, x_t, t, guidance=None, **cond):
            seen.append(guidance)
            return super().__call__(x_t, t, guidance, **cond)

    teacher = Spy(gmm.denoiser(EDM(), "edm"), 0.5, null_class=2)
    loss = SCMLoss(SCMConfig(mode="scd", guidance_range=(1.0, 3.0)), teacher, generator=torch.Generator())
    student = build_student("mlp-tiny", 0.5, guidance=True, num_classes=2)
    _randomize(student.net, seed=9)  # the network's zero-initialised output layer would block every gradient
    value, _ = loss(student, torch.randn(64, 2), torch.randint(0, 2, (64,)))
    value.backward()
    w = seen[0]
    assert w.shape == (64,) and 1.0 <= w.min() and w.max() <= 3.0 and w.std() > 0.3
    assert student.guidance_embed.mlp[2].weight.grad.abs().sum() > 0


def test_generate_feeds_the_guidance_scale_to_a_guidance_conditioned_student():
    """`generate(D, n, guidance=w)` (fewstep sample / eval --guidance) hands w to a guidance-conditioned
    student as its input instead of wrapping it in CFG; it is required, and warned about outside the
    student's guidance_range."""
    from fewstep.commands.common import generate

    student = build_student("mlp-tiny", 0.5, guidance=True, num_classes=2)
    _randomize(student, seed=4)
    D = wrap(student.eval(), TrigFlow(sigma_data=0.5), "trigflow", sigma_data=0.5)
    D.sample_shape, D.num_classes, D.method = (2,), 2, "scd"
    D.config = {"scm_args": {"guidance_range": [1.0, 2.0]}}
    x, labels, nfe, _ = generate(D, 6, guidance=1.7, seed=3, progress=False, solver="consistency", steps=2)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = sample(D, noise, solver="consistency", steps=2, class_labels=labels, cond={"guidance": 1.7},
                     generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(x, ref)
    assert nfe == 2 and labels.tolist() == [0, 1, 0, 1, 0, 1]
    other, *_ = generate(D, 6, guidance=1.2, seed=3, progress=False, solver="consistency", steps=2)
    assert not torch.allclose(x, other)  # w reaches the network
    with pytest.raises(ValueError, match="guidance-conditioned"):
        generate(D, 2, progress=False, solver="consistency", steps=1)
    with pytest.warns(UserWarning, match="outside the range"):
        generate(D, 2, guidance=3.0, progress=False, solver="consistency", steps=1)


def test_a_guidance_conditioned_student_takes_one_scale_per_step():
    """guidance=(w1, w2) (`--guidance 1.0,1.5`) gives the student w1 at its first step and w2 at its
    second: the samples of sample(..., step_cond={"guidance": [w1, w2]}), equal to the constant scale
    when w1 = w2 and different otherwise; a schedule of the wrong length, or for a CFG model, is refused."""
    from fewstep.commands.common import generate, guidance_arg

    student = build_student("mlp-tiny", 0.5, guidance=True, num_classes=2)
    _randomize(student, seed=5)
    D = wrap(student.eval(), TrigFlow(sigma_data=0.5), "trigflow", sigma_data=0.5)
    D.sample_shape, D.num_classes, D.method = (2,), 2, "scd"
    D.config = {"scm_args": {"guidance_range": [1.0, 2.0]}}
    assert guidance_arg("1.5") == 1.5 and guidance_arg("1.0,1.5") == (1.0, 1.5)
    x, labels, nfe, _ = generate(D, 6, guidance=guidance_arg("1.0,1.5"), seed=3, progress=False,
                                 solver="consistency", steps=2)
    noise = torch.randn(6, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = sample(D, noise, solver="consistency", steps=2, class_labels=labels,
                     step_cond={"guidance": [1.0, 1.5]}, generator=torch.Generator().manual_seed(4))
        # by hand: the first step at w = 1.0, the re-noised second at w = 1.5
        t_max, t_mid = float(D.process.t_max), 1.1
        x0 = D(noise * D.process.prior_std(t_max), torch.tensor(t_max, dtype=torch.float64), class_labels=labels,
               guidance=1.0)
        z = torch.randn(6, 2, generator=torch.Generator().manual_seed(4))
        a, s = (float(v) for v in D.process.alpha_sigma(torch.tensor(t_mid, dtype=torch.float64)))
        by_hand = D(a * x0 + s * z, torch.tensor(t_mid, dtype=torch.float64), class_labels=labels, guidance=1.5)
    torch.testing.assert_close(x, ref)
    torch.testing.assert_close(ref, by_hand.float())
    assert nfe == 2
    same, *_ = generate(D, 6, guidance=(1.5, 1.5), seed=3, progress=False, solver="consistency", steps=2)
    const, *_ = generate(D, 6, guidance=1.5, seed=3, progress=False, solver="consistency", steps=2)
    torch.testing.assert_close(same, const)
    assert not torch.allclose(x, const)
    with pytest.raises(ValueError, match="one value per step"):
        generate(D, 2, guidance=(1.0, 1.5, 1.2), progress=False, solver="consistency", steps=2)
    with pytest.raises(ValueError, match="both in cond and in step_cond"):
        sample(D, noise, solver="consistency", steps=2, class_labels=labels, cond={"guidance": 1.0},
               step_cond={"guidance": [1.0, 1.5]})
    with pytest.warns(UserWarning, match="outside the range"):
        generate(D, 2, guidance=(1.0, 2.5), progress=False, solver="consistency", steps=2)
    teacher = wrap(build_student("mlp-tiny", 0.5, num_classes=2).eval(), TrigFlow(sigma_data=0.5), "trigflow",
                   sigma_data=0.5)
    teacher.sample_shape, teacher.num_classes = (2,), 2
    with pytest.raises(ValueError, match="one guidance scale per step"):
        generate(teacher, 2, guidance=(1.0, 1.5), progress=False, steps=2)


# ------------------------------------------------------------------------------------------ sampling


def test_consistency_sampling_one_two_and_custom_steps():
    sd = 0.5
    student = _student(sd=sd, seed=9).eval()
    noise = torch.randn(5, 2)
    t_max = math.atan(80 / sd)
    with torch.no_grad():
        one = consistency_sample(student, noise, steps=1)
        torch.testing.assert_close(one, student.consistency(sd * noise, t_max))
        two = consistency_sample(student, noise, steps=2, generator=torch.Generator().manual_seed(1))
        z = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
        x_mid = math.cos(1.1) * one + math.sin(1.1) * sd * z
        torch.testing.assert_close(two, student.consistency(x_mid, 1.1), atol=1e-6, rtol=1e-6)
        custom = consistency_sample(student, noise, times=[t_max, 1.1], generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(custom, two)
        three = consistency_sample(student, noise, times=[1.5, 1.0, 0.4], generator=torch.Generator().manual_seed(2))
        assert three.shape == noise.shape and torch.isfinite(three).all()
        # the solver works on any process's denoiser; its grid is the TrigFlow one at equal SNR
        D = student.denoiser()
        ts = consistency_times(2, process=D.process)
        torch.testing.assert_close(consistency(D, sd * noise, ts, generator=torch.Generator().manual_seed(1)), two,
                                   atol=1e-6, rtol=1e-6)
        assert D.last_nfe == 2
        # ... and through fewstep.sample(solver="consistency"): default grid, custom list, model-call count
        via, nfe = sample(D, noise, solver="consistency", steps=2, generator=torch.Generator().manual_seed(1),
                          return_nfe=True)
        torch.testing.assert_close(via, two)
        assert nfe == 2
        torch.testing.assert_close(sample(D, noise, solver="consistency", spacing=[t_max, 1.1],
                                          generator=torch.Generator().manual_seed(1)), two)
        torch.testing.assert_close(sample(D, noise, solver="consistency", steps=1), one)
        for bad in (dict(order=2), dict(spacing="logsnr"), dict(end="t_min"), dict(steps=0)):
            with pytest.raises(ValueError):
                sample(D, noise, solver="consistency", **{"steps": 2, **bad})
    torch.testing.assert_close(consistency_times(1), torch.tensor([t_max, 0.0], dtype=torch.float64))
    torch.testing.assert_close(consistency_times(4), torch.tensor([t_max, 1.1, 1.1 * 2 / 3, 1.1 / 3, 0.0],
                                                                  dtype=torch.float64))
    vp = consistency_times(2, process=VPDiscrete.linear())
    assert float(VPDiscrete.linear().lambda_(vp[1])) == pytest.approx(float(TrigFlow(0.5).lambda_(1.1)), abs=1e-9)


# ------------------------------------------------------------------------------------------ validation


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="constant c"):
        SCMConfig(tangent_c=0.0)
    with pytest.raises(ValueError, match="constant c"):
        SCMConfig(tangent_c=-0.1)
    with pytest.raises(ValueError, match="P_std"):
        SCMConfig(P_std=0.0)
    with pytest.raises(ValueError, match="P_std"):
        SCMConfig(P_std=-1.0)
    with pytest.raises(ValueError, match="tangent_warmup"):
        SCMConfig(tangent_warmup=-1)
    with pytest.raises(ValueError, match="mode"):
        SCMConfig(mode="cd")
    with pytest.raises(ValueError, match="tangent_norm"):
        SCMConfig(tangent_norm="l1")
    with pytest.raises(ValueError, match="tangent method"):
        SCMConfig(tangent="reverse")
    with pytest.raises(ValueError, match="guidance_range"):
        SCMConfig(guidance_range=(3.0, 1.0))
    with pytest.raises(ValueError, match="teacher"):
        SCMLoss(SCMConfig(mode="scd"))
    with pytest.raises(ValueError, match="no teacher"):
        SCMLoss(SCMConfig(mode="sct"), TeacherVelocity(GaussianMixture.random(d=2, K=2).denoiser(EDM()), 0.5))
    with pytest.raises(ValueError, match="sigma_data"):
        SCMLoss(SCMConfig(mode="scd"), TeacherVelocity(GaussianMixture.random(d=2, K=2).denoiser(EDM()), 0.8))
    with pytest.raises(ValueError, match="constant c"):
        normalize_tangent(torch.ones(2, 2), c=0.0)
    student, noise = _student(), torch.randn(2, 2)
    for t_mid in (0.0, -0.5, math.pi / 2, 2.0):
        with pytest.raises(ValueError, match="t_mid"):
            consistency_sample(student, noise, steps=2, t_mid=t_mid)
        with pytest.raises(ValueError, match="t_mid"):
            consistency_times(2, t_mid=t_mid)
    with pytest.raises(ValueError, match="steps"):
        consistency_sample(student, noise, steps=0)
    with pytest.raises(ValueError, match="sigma_data"):
        TrigFlowModel(build_model("mlp-tiny"), sigma_data=0.0)
    with pytest.raises(ValueError, match="guidance_range"):
        SCMLoss(SCMConfig(mode="sct"))(build_student("mlp-tiny", guidance=True), torch.randn(4, 2))


# ------------------------------------------------------------------------------------------ training


def _endpoint_errors(model, gmm, sd, n=1000):
    """RMSE of the 1-step and 2-step (t_mid = 1.1) samples to the exact PF-ODE end points of their
    own starting states, and the 2-step samples' mean / covariance errors."""
    trig = TrigFlow(sd)
    m = copy_student(model).double()
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        x1 = consistency_sample(m, noise, steps=1)
        e1 = (x1 - gmm.ode(sd * noise, trig.t_max, 0.0, trig)).square().sum(1).mean().sqrt().item()
        x_mid = math.cos(1.1) * x1 + math.sin(1.1) * sd * z
        x2 = m.consistency(x_mid, 1.1)
        e2 = (x2 - gmm.ode(x_mid, 1.1, 0.0, trig)).square().sum(1).mean().sqrt().item()
    mean_err = (x2.mean(0) - gmm.mean()).norm().item()
    cov_err = (torch.cov(x2.T) - gmm.cov()).norm().item()
    return e1, e2, mean_err, cov_err


def test_scd_on_exact_oracle_teacher_approaches_the_ode_end_points():
    torch.manual_seed(0)
    gmm = gmm2d_oracle(k=4, radius=1.0, std=0.15)
    sd = float(gmm.cov().diag().mean().sqrt())
    teacher = TeacherVelocity(gmm.denoiser(VPDiscrete.linear(), "eps"), sd)  # an eps teacher on DDPM's VP
    student = build_student("mlp-tiny", sd, hidden=64, num_blocks=3)
    before = _endpoint_errors(student, gmm, sd)
    # adaptive weighting off: on this 2-D toy it down-weights the large t that 1-step sampling needs
    loss = SCMLoss(SCMConfig(mode="scd", sigma_data=sd, tangent_warmup=200, adaptive_weight=False), teacher)
    result = distill(student, loss, lambda n, g: gmm.sample(n, g).float(), steps=600, batch_size=256, lr=1e-3)
    after = _endpoint_errors(result.ema, gmm, sd)
    assert after[0] < before[0] / 3, (before, after)  # 1-step RMSE to the exact end points
    assert after[1] < before[1] / 3, (before, after)  # 2-step
    assert after[2] < 0.1 and after[3] < 0.15 and after[3] < before[3] / 3, (before, after)  # moments


def test_sct_from_scratch_finds_every_mode():
    torch.manual_seed(0)
    gmm = gmm2d_oracle(k=4, radius=1.0, std=0.1)
    sd = float(gmm.cov().diag().mean().sqrt())
    data = gmm.sample(5000, torch.Generator().manual_seed(1)).float()
    student = build_student("mlp-tiny", sd, hidden=64, num_blocks=3)
    loss = SCMLoss(SCMConfig(mode="sct", sigma_data=sd, tangent_warmup=200, adaptive_weight=False))
    result = distill(student, loss, data, steps=800, batch_size=256, lr=1e-3)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(3))
    for steps in (1, 2):
        with torch.no_grad():
            x = consistency_sample(result.ema, noise, steps=steps, generator=torch.Generator().manual_seed(4))
        d = torch.cdist(x.double(), gmm.means)
        near = d.min(1).values < 0.3  # within 3 std of a mode
        hits = torch.bincount(d.argmin(1)[near], minlength=4)
        assert near.float().mean() > 0.7, (steps, near.float().mean())
        assert hits.min() > 0.1 * len(x), (steps, hits)


# ------------------------------------------------------------------------------------------ students from any teacher


def test_student_from_a_guided_student():
    """A guidance-conditioned student's guidance embedding hooks its network: copied into a guided student
    it comes along (the copy computes the source at every scale and its hook reads the copy's own
    embedding); copying the network alone would silently drop it, so an unguided copy, a widened copy
    and another sigma_data are refused."""
    model = _randomize(build_student("unet-tiny", 0.5, guidance=True), seed=2)
    torch.nn.init.normal_(model.guidance_embed.mlp[2].weight, std=0.1)  # a trained (non-zero) embedding
    guided = wrap(model, TrigFlow(0.5), "trigflow", sigma_data=0.5)
    copy_ = student_from_teacher(guided, 0.5, guidance=True, dropout=0.2)
    assert copy_.guided and copy_.net.config.dropout == 0.2 and model.net.config.dropout != 0.2
    x, t, y = _input("unet-tiny", 3), torch.tensor([0.3, 0.8, 1.4]), torch.tensor([1, 2, 3])
    w = torch.tensor([1.0, 1.5, 2.5])
    copy_.eval()
    with torch.no_grad():
        torch.testing.assert_close(copy_(x, t, class_labels=y, guidance=w), model(x, t, class_labels=y, guidance=w))
        assert (model(x, t, class_labels=y, guidance=w) - model(x, t, class_labels=y, guidance=1.0)).abs().max() > 1e-4
        before = model(x, t, class_labels=y, guidance=w)
        copy_.guidance_embed.mlp[2].bias.add_(1.0)  # the copy's own embedding, not the source's
        torch.testing.assert_close(model(x, t, class_labels=y, guidance=w), before)
        assert (copy_(x, t, class_labels=y, guidance=w) - before).abs().max() > 1e-3
    with pytest.raises(ValueError, match="guidance-conditioned"):
        student_from_teacher(guided, 0.5)
    with pytest.raises(ValueError, match="cannot be widened"):
        student_from_teacher(guided, 0.5, guidance=True, channel_mult=(1, 2, 4))
    with pytest.raises(ValueError, match="sigma_data"):
        student_from_teacher(guided, 0.8, guidance=True)
    plain = wrap(build_student("mlp-tiny", 0.5), TrigFlow(0.5), "trigflow", sigma_data=0.5)
    assert not student_from_teacher(plain, 0.5).guided


@pytest.mark.parametrize("process, prediction", [(VPDiscrete.linear(), "eps"), (EDM(), "edm"), (Flow(), "flow"),
                                                 (VPCosine(), "v"), (VPLinear(), "x0"), (TrigFlow(0.5), "trigflow")],
                         ids=["vp-eps", "edm", "flow", "vpcos-v", "vplin-x0", "trigflow"])
def test_student_from_any_teacher_starts_as_the_teacher_and_has_exact_tangents(process, prediction):
    """f(x_t, t) of the reparameterised student equals the teacher's D at the converted state, its JVP
    equals a float64 central difference, and the JSON spec rebuilds the same function."""
    # index-time VP networks use the presets' scale; keep |dF/dt| moderate so the difference is accurate
    scale = 0.01 if process.name.startswith("vp") else 10.0
    net = _randomize(build_model("mlp-tiny", time_scale=scale), seed=5, scale=0.5).double()
    teacher = wrap(net, process, prediction, sigma_data=0.5)
    student = student_from_teacher(teacher, 0.5).double()
    assert isinstance(student.net, TeacherParameterised) == (prediction != "trigflow")
    x = torch.randn(6, 2, dtype=torch.float64)
    t = torch.tensor([0.01, 0.2, 0.5, 0.9, 1.2, 1.5], dtype=torch.float64)
    with torch.no_grad():
        x_p, t_p = trigflow_to_process(x, t, process, 0.5)
        torch.testing.assert_close(student.consistency(x, t), teacher(x_p, t_p), atol=1e-12, rtol=1e-10)
    u, ut = torch.randn_like(x), torch.rand(6, dtype=torch.float64)
    _, dF = model_tangent(lambda a, b: student(a, b), x / 0.5, t, u, ut)
    h = 1e-6
    with torch.no_grad():
        fd = (student(x / 0.5 + h * u, t + h * ut) - student(x / 0.5 - h * u, t - h * ut)) / (2 * h)
    torch.testing.assert_close(dF, fd, atol=1e-6, rtol=1e-6)
    rebuilt = build_student_from_spec(json.loads(json.dumps(student_spec(student)))).double()
    rebuilt.load_state_dict(student.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, t), student(x, t), atol=0, rtol=0)
    # the copy is trainable and independent of the teacher's weights
    assert all(p.requires_grad for p in student.parameters())
    next(student.parameters()).data.add_(1.0)
    assert not torch.equal(next(student.parameters()), next(net.parameters()))
