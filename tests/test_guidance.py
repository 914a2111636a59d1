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
