"""Tests for fewstep.models.widen: a widened UNet computes the same function, then trains its new channels."""

import math

import pytest
import torch

from fewstep.distill import build_student_from_spec, student_from_teacher, student_spec
from fewstep.models import UNet, build_model, widen_unet
from fewstep.models import widen as widen_module
from fewstep.predictions import wrap
from fewstep.processes import TrigFlow, VPDiscrete


def _randomize(model, seed=0):
    """Random weights everywhere: the zero-initialised output / residual convs would hide layout bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = 1.0 / math.sqrt(p[0].numel()) if p.ndim > 1 else 0.3
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return model


def _inputs(cfg, batch=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_channels, cfg.resolution, cfg.resolution, generator=g, dtype=dtype)
    t = torch.rand(batch, generator=g, dtype=dtype) * 1.5
    y = torch.arange(batch) % cfg.num_classes if cfg.num_classes else None
    return x, t, y


LAYOUTS = [  # (network settings, wider channel_mult)
    (dict(channels=8, channel_mult=(1, 2, 2), attn_resolutions=(4,), num_classes=10), (1, 2, 4)),
    (dict(channels=8, channel_mult=(1, 2, 2), attn_resolutions=(8, 4), num_classes=10), (2, 3, 4)),
    (dict(channels=8, channel_mult=(1, 2), attn_resolutions=(4,), num_classes=0, head_channels=8), (1, 4)),
    (dict(channels=8, channel_mult=(1, 1, 2), attn_resolutions=(), mid_attention=False, num_blocks=1), (1, 2, 3)),
]


@pytest.mark.parametrize("settings, mult", LAYOUTS, ids=["level2", "all-levels-attn", "multi-head", "no-attn-1-block"])
def test_widened_unet_computes_the_same_function(settings, mult):
    """float64, random weights everywhere: the wider network's output equals the original's to round-off,
    for conditional / unconditional nets, attention at several levels or none, several heads of equal
    width, one block per level; the original is left untouched."""
    net = _randomize(UNet(in_channels=1, resolution=8, dropout=0.1, **settings).double())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    wide = widen_unet(net, mult)
    assert wide.config.channel_mult == mult and wide.config.channels == net.config.channels
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in net.parameters())
    assert wide.training == net.training and next(wide.parameters()).dtype == torch.float64
    x, t, y = _inputs(net.config)
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(x, t, y), net.eval()(x, t, y), atol=1e-12, rtol=1e-10)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_new_channels_train_and_change_the_function():
    """The weights from new channels into old ones start at 0 but get gradients at once; after that
    first step the gradients reach the new channels' own weights too, and the function moves away
    from the original's."""
    net = _randomize(build_model("unet-tiny", channel_mult=(1, 2), dropout=0.0))
    wide = widen_unet(net, (1, 4))
    x, t, y = _inputs(net.config, dtype=torch.float32)
    opt = torch.optim.SGD(wide.parameters(), lr=0.1)
    conv2 = wide.get_submodule("down.2.res.conv2").weight  # level 1: 16 -> 32 channels
    wide(x, t, y).square().mean().backward()
    assert conv2[:16, 16:].abs().sum() == 0 and conv2.grad[:16, 16:].abs().sum() > 0
    opt.step()
    opt.zero_grad()
    wide(x, t, y).square().mean().backward()
    assert conv2.grad[16:].abs().sum() > 0
    with torch.no_grad():
        assert (wide(x, t, y) - net(x, t, y)).abs().max() > 1e-4


def test_widen_refuses_what_it_cannot_preserve():
    net = _randomize(build_model("unet-tiny", channel_mult=(1, 2)))
    with pytest.raises(ValueError, match="narrows"):
        widen_unet(widen_unet(net, (1, 4)), (1, 2))
    with pytest.raises(ValueError, match="must have 2 levels"):
        widen_unet(net, (1, 2, 2))
    with pytest.raises(ValueError, match="needs a fewstep UNet"):
        widen_unet(build_model("mlp-tiny"), (1, 2))
    with pytest.raises(ValueError, match="adaptive double normalisation"):
        widen_unet(UNet(resolution=8, channels=8, channel_mult=(1, 2), adaptive_double_norm=True), (1, 4))
    # 6 channels are one group of 6; at 12 they would be 3 groups of 4, mixing old and new channels
    with pytest.raises(ValueError, match="GroupNorm of .* channels per group"):
        widen_unet(UNet(resolution=8, channels=6, channel_mult=(1, 1), attn_resolutions=()), (1, 2))
    # a learned 1x1 skip (8 -> 16 channels) that would have to become an identity (16 -> 16)
    with pytest.raises(ValueError, match="skip projections into identities"):
        widen_unet(UNet(resolution=8, channels=8, channel_mult=(1, 2), attn_resolutions=()), (2, 2))
    # one head of 16 channels -> 4 heads of 12: the old head's channels would be split between heads
    with pytest.raises(ValueError, match="only one head, or an unchanged head width"):
        widen_unet(UNet(resolution=8, channels=8, channel_mult=(1, 2), attn_resolutions=(4,), head_channels=12),
                   (1, 6))


def test_the_output_check_catches_a_broken_layout(monkeypatch):
    """widen_unet compares the two networks' outputs itself: a layout bug (here the attention's
    1/sqrt(d) correction left out) is reported instead of silently changing the function."""
    net = _randomize(build_model("unet-tiny", channel_mult=(1, 2), head_channels=64))  # one head before and after
    monkeypatch.setattr(widen_module, "_fix_attention", lambda *a, **k: None)
    with pytest.raises(ValueError, match="differs from the original"):
        widen_unet(net, (1, 4))


@pytest.mark.parametrize("process, prediction", [(TrigFlow(0.5), "trigflow"), (VPDiscrete.linear(), "eps")],
                         ids=["trigflow", "vp-eps"])
def test_student_from_teacher_widens_a_unet_copy(process, prediction):
    """A student copied from a teacher may be wider (model_args.channel_mult): it starts as the
    teacher's denoiser all the same, its spec rebuilds the wider network, and a non-UNet is refused."""
    scale = 1.0 if prediction == "trigflow" else 0.01
    net = _randomize(build_model("unet-tiny", channel_mult=(1, 2), dropout=0.1, time_scale=scale)).double()
    teacher = wrap(net, process, prediction, sigma_data=0.5)
    student = student_from_teacher(teacher, 0.5, dropout=0.0, channel_mult=[1, 4]).double()
    inner = student.net.net if prediction != "trigflow" else student.net
    assert inner.config.channel_mult == (1, 4) and inner.config.dropout == 0.0
    assert student.training and all(p.requires_grad for p in student.parameters())
    x, t, y = _inputs(net.config)
    same = student_from_teacher(teacher, 0.5).double()
    with torch.no_grad():
        torch.testing.assert_close(student.eval().consistency(x, t, class_labels=y),
                                   same.eval().consistency(x, t, class_labels=y), atol=1e-10, rtol=1e-8)
    rebuilt = build_student_from_spec(student_spec(student))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
        {k: v.shape for k, v in student.state_dict().items()}
    mlp = wrap(build_model("mlp-tiny"), TrigFlow(0.5), "trigflow", sigma_data=0.5)
    with pytest.raises(ValueError, match="widens a UNet"):
        student_from_teacher(mlp, 0.5, channel_mult=[1, 4])
