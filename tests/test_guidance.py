import pytest
import torch

from fewstep import sample
from fewstep.guidance import CFG, ClassifierGuidance, LabelCFG, Thresholded
from fewstep.processes import VPDiscrete, VPLinear
from fewstep.testing import GaussianMixture


@pytest.fixture(scope="module")
def labelled():
    # two classes far apart on the first axis, two components each
    means = [[-3.0, 0.0], [-3.0, 2.0], [3.0, 0.0], [3.0, 2.0]]
    return GaussianMixture(means, [0.3, 0.3, 0.3, 0.3], labels=[0, 0, 1, 1])


def test_cfg_scale_one_is_the_conditional_model(labelled):
    p = VPDiscrete.linear()
    D = labelled.denoiser(p)
    x = labelled.sample_xt(16, 0.5, p)[0]
    y = torch.ones(16, dtype=torch.long)
    null = torch.full_like(y, 2)
    cfg = CFG(D, 1.0, {"class_labels": y}, {"class_labels": null})
    assert torch.equal(cfg(x, torch.tensor(0.5)), D(x, torch.tensor(0.5), class_labels=y))
    assert torch.allclose(cfg(x, 0.5), labelled.x0(x, 0.5, p, y=y))
    # at scale w, one batched call: D_u + w (D_c - D_u)
    calls = D.calls
    cfg3 = CFG(D, 3.0, {"class_labels": y}, {"class_labels": null})
    out = cfg3(x, torch.tensor(0.5))
    assert D.calls == calls + 1
    d_u, d_c = labelled.x0(x, 0.5, p), labelled.x0(x, 0.5, p, y=y)
    assert torch.allclose(out, d_u + 3.0 * (d_c - d_u))


def test_label_cfg_is_cfg_with_the_labels_of_each_call(labelled):
    p = VPDiscrete.linear()
    D = labelled.denoiser(p)
    x = labelled.sample_xt(16, 0.5, p)[0]
    y = torch.arange(16) % 2
    lab = LabelCFG(D, 3.0, null_label=2)
    want = CFG(D, 3.0, {"class_labels": y}, {"class_labels": torch.full_like(y, 2)})(x, 0.5)
    assert torch.equal(lab(x, 0.5, class_labels=y), want)
    assert torch.equal(lab(x[:5], 0.5, class_labels=y[:5]), want[:5])  # any part of the batch
    with torch.no_grad():  # sample() treats it as guided: the guided default (DPM-Solver++(2M) at 5 calls)
        z = torch.randn(8, 2, dtype=torch.float64)
        out = sample(lab, z, steps=5, class_labels=y[:8])
        assert torch.equal(out, sample(lab, z, solver="dpm++2m", steps=5, class_labels=y[:8]))


def test_classifier_guidance_with_the_exact_classifier_is_the_conditional_denoiser(labelled):
    # Bayes: grad log p(x | y) = grad log p(x) + grad log p(y | x), so scale 1 gives the exact conditional
    p = VPLinear()
    D = labelled.denoiser(p)
    y = torch.zeros(8, dtype=torch.long)
    g = ClassifierGuidance(D, lambda x, t, y: labelled.log_prob_class(x, t, p, y), y, scale=1.0)
    for t in (0.2, 0.6, 0.95):
        x = labelled.sample_xt(8, t, p)[0]
        assert torch.allclose(g(x, t), labelled.x0(x, t, p, y=y), atol=1e-8)


@pytest.mark.parametrize("how", ["cfg", "classifier"])
def test_guided_sampling_lands_in_the_class(labelled, how):
    p = VPDiscrete.linear()
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.randint(0, 2, (256,), generator=torch.Generator().manual_seed(1))
    D = labelled.denoiser(p)
    if how == "cfg":
        out = sample(D, noise, solver="dpm++2m", steps=15, class_labels=y, uncond={"class_labels": torch.full_like(y, 2)},
                     guidance_scale=2.0)
    else:
        out = sample(D, noise, solver="dpm++2m", steps=15, class_labels=None,
                     classifier=lambda x, t, yy: labelled.log_prob_class(x, t, p, yy), classifier_scale=1.0,
                     cond={"class_labels": y})
        # (the exact classifier at scale 1 on the unconditional model == the conditional model)
    side = (out[:, 0] > 0).long()
    assert torch.equal(side, y)


def test_thresholding():
    class Big:
        process = VPLinear()

        def __call__(self, x, t):
            return x * 3.0

    x = torch.linspace(-1, 1, 200, dtype=torch.float64).reshape(2, 100)
    st = Thresholded(Big(), "static", max_val=1.0)(x, 0.5)
    assert st.abs().max() <= 1.0 and torch.equal(st, (3 * x).clamp(-1, 1))
    dy = Thresholded(Big(), "dynamic", ratio=0.9, max_val=1.0)(x, 0.5)
    s = torch.quantile((3 * x).abs(), 0.9, dim=1, keepdim=True).clamp(min=1.0)
    assert torch.allclose(dy, (3 * x).clamp(-s, s) / s)
    assert dy.abs().max() <= 1.0 + 1e-12
    with pytest.raises(ValueError, match="static' or 'dynamic"):
        Thresholded(Big(), "soft")


def test_guidance_bad_input(labelled):
    D = labelled.denoiser(VPLinear())
    with pytest.raises(ValueError, match="same keys"):
        CFG(D, 2.0, {"class_labels": torch.zeros(1)}, {})
    with pytest.raises(ValueError, match="needs uncond"):
        sample(D, torch.randn(2, 2, dtype=torch.float64), class_labels=torch.zeros(2, dtype=torch.long), guidance_scale=2.0)


def test_guidance_interval_guides_only_inside_it(labelled):
    """CFG with interval (lo, hi] (Kynkaanniemi et al. 2024): guided where sigma / alpha is inside, the
    conditional model alone outside (one call of the batch size), per sample when times differ."""
    p = VPDiscrete.linear()
    D = labelled.denoiser(p)
    y = torch.ones(16, dtype=torch.long)
    c, u = {"class_labels": y}, {"class_labels": torch.full_like(y, 2)}
    t_in, t_out = 0.5, 0.05  # sigma / alpha: about 3.4 and 0.2
    s_in, s_out = (float(torch.exp(-p.lambda_(torch.tensor(t, dtype=torch.float64)))) for t in (t_in, t_out))
    assert s_out < 0.5 < s_in < 5.0
    t_in64, t_out64 = (torch.tensor(t, dtype=torch.float64) for t in (t_in, t_out))
    cfg, ranged = CFG(D, 3.0, c, u), CFG(D, 3.0, c, u, interval=(0.5, 5.0))
    x = labelled.sample_xt(16, t_in, p)[0]
    assert torch.equal(ranged(x, t_in64), cfg(x, t_in64))
    seen = []

    class Counting:
        process = p

        def __call__(self, x, t, **kw):
            seen.append(x.shape[0])
            return D(x, t, **kw)

    out = CFG(Counting(), 3.0, c, u, interval=(0.5, 5.0))(x, t_out64)
    assert torch.equal(out, D(x, t_out64, class_labels=y)) and seen == [16]  # one call, batch 16
    # per-sample times: each sample guided or not by its own noise level
    tt = torch.tensor([t_in, t_out] * 8, dtype=torch.float64)
    mixed = ranged(x, tt)
    assert torch.equal(mixed[0::2], cfg(x, tt)[0::2]) and torch.equal(mixed[1::2], D(x, tt, class_labels=y)[1::2])
    # an interval over every noise level is plain CFG; LabelCFG takes one too
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kw = dict(class_labels=y[:8], uncond={"class_labels": torch.full_like(y[:8], 2)}, guidance_scale=3.0)
    assert torch.equal(sample(labelled.denoiser(p), z, steps=6, guidance_interval=(0.0, float("inf")), **kw),
                       sample(labelled.denoiser(p), z, steps=6, **kw))
    # sampling with the interval differs from both ends: plain CFG and no guidance
    limited = sample(labelled.denoiser(p), z, steps=6, guidance_interval=(0.5, 5.0), **kw)
    assert not torch.equal(limited, sample(labelled.denoiser(p), z, steps=6, **kw))
    assert not torch.equal(limited, sample(labelled.denoiser(p), z, steps=6, class_labels=y[:8], solver="dpm++2m"))
    lab = LabelCFG(D, 3.0, null_label=2, interval=(0.5, 5.0))
    assert torch.equal(lab(x, tt, class_labels=y), mixed)


def test_guidance_interval_bad_input(labelled):
    p = VPDiscrete.linear()
    D = labelled.denoiser(p)
    y = torch.ones(4, dtype=torch.long)
    c, u = {"class_labels": y}, {"class_labels": torch.full_like(y, 2)}
    for bad in ((2.0, 1.0), (1.0, 1.0), (-1.0, 2.0), (1.0,), "wide", 3.0):
        with pytest.raises(ValueError, match="guidance interval"):
            CFG(D, 3.0, c, u, interval=bad)
    z = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="guidance_interval needs guidance_scale"):
        sample(D, z, steps=5, class_labels=y, guidance_interval=(0.5, 5.0))
