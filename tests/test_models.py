"""Tests for fewstep.models: shapes, conditioning, JVP through every network, attention paths, configs."""

import json
import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from fewstep.models import (DiT, MLP, PRESETS, UNet, UNetConfig, attention_backend, build_model,
                            build_model_from_config, config_from_dict, count_params, dot_product_attention,
                            drop_labels, get_config, list_presets, needs_math_attention)
from fewstep.models import attention as attention_module
from fewstep.models.attention import GroupNorm
from fewstep.models.embedding import FourierEmbedding, PositionalEmbedding

TINY = ["unet-tiny", "dit-tiny", "mlp-tiny"]


def _input(name, batch=3, dtype=torch.float32):
    cfg = get_config(name)
    if cfg.ARCH == "mlp":
        return torch.randn(batch, cfg.dim, dtype=dtype)
    return torch.randn(batch, cfg.in_channels, cfg.resolution, cfg.resolution, dtype=dtype)


def _randomize(model, seed=0):
    """Random weights everywhere (zero-initialised layers would make JVP / conditioning tests vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                std = 1.0 / math.sqrt(p[0].numel())
                p.copy_(torch.randn(p.shape, generator=g) * std)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _tiny(name, **overrides):
    return _randomize(build_model(name, **overrides))


# ----------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", TINY)
def test_tiny_forward_shape(name):
    model = build_model(name)
    x = _input(name)
    assert model(x, torch.rand(3) * 100).shape == x.shape
    assert model(x, 5.0).shape == x.shape  # scalar t broadcast
    assert model(x, torch.tensor([7])).shape == x.shape  # [1] broadcast, integer t
    assert model(x, torch.arange(3)).shape == x.shape  # discrete indices
    with pytest.raises(ValueError):
        model(x, torch.rand(2))


@pytest.mark.parametrize("res,channels", [(8, 1), (28, 1), (32, 3)])
def test_unet_resolutions(res, channels):
    model = _randomize(UNet(in_channels=channels, resolution=res, channels=8, channel_mult=(1, 2, 2),
                            num_blocks=1, attn_resolutions=(math.ceil(res / 4),), num_classes=10))
    x = torch.randn(2, channels, res, res)
    y = model(x, torch.tensor([10.0, 500.0]), class_labels=torch.tensor([1, 2]))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_unet_bad_attn_resolution():
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNet(resolution=28, channel_mult=(1, 2), attn_resolutions=(8,))


def test_dit_options():
    model = _randomize(DiT(in_channels=3, resolution=8, patch_size=4, hidden=32, depth=1, num_heads=4,
                           pos_embed="learned", out_channels=6))
    y = model(torch.randn(2, 3, 8, 8), torch.rand(2))
    assert y.shape == (2, 6, 8, 8)
    with pytest.raises(ValueError, match="divisible"):
        DiT(resolution=10, patch_size=4)


def test_dit_unpatchify_is_inverse_of_patch_layout():
    model = DiT(in_channels=2, resolution=8, patch_size=2, hidden=32, depth=1, num_heads=2)
    x = torch.randn(2, 2, 8, 8)
    # tokens in row-major patch order, each (p_row, p_col, C) flattened, as the final linear emits them
    p = x.reshape(2, 2, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 8)
    assert torch.equal(model.unpatchify(p), x)


def test_mlp_flattened_images():
    model = _randomize(MLP(dim=64, hidden=32, num_blocks=1))
    x = torch.randn(4, 1, 8, 8)
    assert model(x, torch.rand(4)).shape == x.shape
    with pytest.raises(ValueError, match="features"):
        model(torch.randn(4, 3), torch.rand(4))


def test_preset_sizes():
    counts = {name: count_params(build_model(name)) for name in list_presets()}
    assert counts["unet-tiny"] < 100_000 and counts["dit-tiny"] < 100_000 and counts["mlp-tiny"] < 100_000
    assert 1_000_000 <= counts["unet-digits"] <= 3_000_000
    assert 1_000_000 <= counts["dit-s-digits"] <= 3_000_000
    assert counts["unet-mnist"] > counts["unet-digits"]
    assert counts["unet-cifar"] > counts["unet-mnist"]
    for name in ("unet-digits", "unet-mnist", "unet-cifar"):
        cfg = get_config(name)
        assert (cfg.in_channels, cfg.resolution) == {"unet-digits": (1, 8), "unet-mnist": (1, 28),
                                                     "unet-cifar": (3, 32)}[name]


# ------------------------------------------------------------------------------------ conditioning


@pytest.mark.parametrize("name", TINY)
def test_class_conditioning(name):
    model = _tiny(name, num_classes=4).eval()
    x, t = _input(name), torch.full((3,), 30.0)
    y0 = model(x, t, class_labels=torch.tensor([0, 0, 0]))
    y1 = model(x, t, class_labels=torch.tensor([1, 1, 1]))
    assert not torch.allclose(y0, y1)
    null = model(x, t, class_labels=torch.tensor([4, 4, 4]))  # null index = num_classes
    assert torch.allclose(model(x, t), null)  # None -> null class
    assert torch.allclose(model(x, t, class_labels=torch.tensor([-1, -1, -1])), null)
    assert not torch.allclose(null, y0)
    assert torch.allclose(model(x, t, class_labels=1), y1)  # int broadcast
    onehot = F.one_hot(torch.tensor([1, 1, 1]), 4).float()
    assert torch.allclose(model(x, t, class_labels=onehot), y1, atol=1e-6)
    mixed = model(x, t, class_labels=torch.tensor([0, 1, 4]))  # per-sample labels
    assert torch.allclose(mixed[0], y0[0], atol=1e-6) and torch.allclose(mixed[2], null[2], atol=1e-6)


@pytest.mark.parametrize("name", TINY)
def test_unconditional_rejects_labels(name):
    model = build_model(name, num_classes=0)
    with pytest.raises(ValueError, match="unconditional"):
        model(_input(name), torch.rand(3), class_labels=torch.tensor([0, 1, 2]))


def test_drop_labels():
    labels = torch.randint(0, 10, (4000,))
    dropped = drop_labels(labels, 0.25, num_classes=10)
    frac = (dropped == 10).float().mean().item()
    assert abs(frac - 0.25) < 0.04
    keep = dropped != 10
    assert torch.equal(dropped[keep], labels[keep])
    assert drop_labels(labels, 0.0, 10) is labels


def test_time_embeddings():
    t = torch.tensor([0.0, 0.5, 1.5])
    pe = PositionalEmbedding(16, scale=1000.0)(t)
    assert pe.shape == (3, 16) and torch.allclose(pe[0, :8], torch.ones(8))
    fe = FourierEmbedding(16, scale=2.0)(t)
    assert fe.shape == (3, 16) and torch.allclose(fe.square().reshape(3, 2, 8).sum(1), torch.ones(3, 8))
    model = _tiny("unet-tiny", time_embedding="fourier", time_scale=0.5)
    assert model(_input("unet-tiny"), torch.rand(3)).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="time embedding"):
        build_model("mlp-tiny", time_embedding="nope")


# --------------------------------------------------------------------------------------- attention


def test_attention_math_equals_sdpa():
    q, k, v = (torch.randn(2, 3, 17, 8) for _ in range(3))
    a = dot_product_attention(q, k, v, backend="math")
    b = dot_product_attention(q, k, v, backend="sdpa")
    assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    a64 = dot_product_attention(q.double(), k.double(), v.double(), backend="math")
    b64 = dot_product_attention(q.double(), k.double(), v.double(), backend="sdpa")
    assert torch.allclose(a64, b64, atol=1e-12)
    with pytest.raises(ValueError, match="backend"):
        dot_product_attention(q, k, v, backend="flash")


def test_needs_math_detection():
    x = torch.randn(4)
    assert not needs_math_attention(x)
    seen = []

    def probe(y):
        seen.append(needs_math_attention(y))
        return y * 2

    torch.func.jvp(probe, (x,), (torch.ones_like(x),))
    with fwAD.dual_level():
        probe(fwAD.make_dual(x, torch.ones_like(x)))
        probe(x)  # no tangent on this one
    assert seen == [True, True, False]


@pytest.mark.parametrize("name", ["unet-tiny", "dit-tiny"])
def test_sdpa_used_normally_math_under_jvp(name, monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counting)
    model = _tiny(name).eval()
    x, t = _input(name), torch.rand(3) * 100
    y = model(x, t)
    assert len(calls) > 0
    n = len(calls)
    y2, _ = torch.func.jvp(lambda x_, t_: model(x_, t_), (x, t), (torch.randn_like(x), torch.ones_like(t)))
    assert len(calls) == n  # math path only
    assert torch.allclose(y, y2, atol=1e-5)
    with attention_backend("math"):
        y3 = model(x, t)
    assert len(calls) == n and torch.allclose(y, y3, atol=1e-5)


def test_group_norm_non_contiguous_jvp():
    gn = GroupNorm(2, 8)
    x = torch.randn(2, 8, 4, 5).transpose(-1, -2)
    assert not x.is_contiguous()
    y, dy = torch.func.jvp(gn, (x,), (torch.randn_like(x),))
    assert y.shape == dy.shape == x.shape


# --------------------------------------------------------------------------------------------- JVP


def _jvp_check(model, x, t, labels):
    f = lambda x_, t_: model(x_, t_, class_labels=labels)  # noqa: E731
    vx, vt = torch.randn_like(x), torch.randn_like(t)
    y, dy = torch.func.jvp(f, (x, t), (vx, vt))
    return f, y, dy, vx, vt


JVP_MODELS = {
    "unet-tiny": {},
    "unet-tiny-double-norm": {"adaptive_double_norm": True},
    "dit-tiny": {},
    "dit-tiny-learned-pos": {"pos_embed": "learned"},
    "mlp-tiny": {"num_classes": 3},
}


@pytest.mark.parametrize("key", list(JVP_MODELS))
def test_jvp_matches_finite_difference(key):
    name = "-".join(key.split("-")[:2])
    model = _tiny(name, **JVP_MODELS[key]).eval()
    labels = torch.tensor([0, 1, 2])
    x, t = _input(name), torch.tensor([3.0, 40.0, 700.0])

    # float32: runs and gives the same primal as a plain forward
    _, y32, dy32, vx, vt = _jvp_check(model, x, t, labels)
    assert torch.allclose(y32, model(x, t, class_labels=labels), atol=1e-5)

    # float64: tangent equals a central finite difference
    model = model.double()
    x, t, vx, vt = x.double(), t.double(), vx.double(), vt.double()
    f = lambda x_, t_: model(x_, t_, class_labels=labels)  # noqa: E731
    y, dy = torch.func.jvp(f, (x, t), (vx, vt))
    h = 1e-4
    with torch.no_grad():
        fd = (f(x + h * vx, t + h * vt) - f(x - h * vx, t - h * vt)) / (2 * h)
    assert dy.norm() > 1e-3
    assert (dy - fd).norm() / dy.norm() < 1e-6
    assert (dy32.double() - dy).norm() / dy.norm() < 1e-3


@pytest.mark.parametrize("name", TINY)
def test_forward_ad_dual_tensors(name):
    model = _tiny(name).eval()
    x, t = _input(name), torch.rand(3) * 100
    vx, vt = torch.randn_like(x), torch.randn_like(t)
    _, dy = torch.func.jvp(lambda a, b: model(a, b), (x, t), (vx, vt))
    with fwAD.dual_level():
        out = model(fwAD.make_dual(x, vx), fwAD.make_dual(t, vt))
        y2, dy2 = fwAD.unpack_dual(out)
    assert torch.allclose(dy, dy2, atol=1e-5, rtol=1e-4)
    assert torch.allclose(y2, model(x, t), atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_jvp_with_respect_to_time_only(name):
    """sCM takes d/dt F(x_t/sd, t) with tangents on both inputs; t alone must work too."""
    model = _tiny(name).eval()
    x, t = _input(name), torch.rand(3)
    _, dt_only = torch.func.jvp(lambda t_: model(x, t_), (t,), (torch.ones_like(t),))
    assert dt_only.shape == x.shape and dt_only.abs().sum() > 0


@pytest.mark.parametrize("name", TINY)
def test_dropout_masks_match_when_seeded(name):
    model = _tiny(name, dropout=0.3).train()
    x, t = _input(name), torch.rand(3) * 100
    vx, vt = torch.randn_like(x), torch.ones_like(t)  # drawn before seeding: they must not shift the RNG
    torch.manual_seed(123)
    y_plain = model(x, t)
    torch.manual_seed(123)
    y_jvp, _ = torch.func.jvp(lambda a, b: model(a, b), (x, t), (vx, vt))
    torch.manual_seed(124)
    y_other = model(x, t)
    assert torch.allclose(y_plain, y_jvp, atol=1e-5)
    assert not torch.allclose(y_plain, y_other)  # dropout is active
    with torch.random.fork_rng():
        torch.manual_seed(7)
        a = model(x, t)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        with fwAD.dual_level():
            b = fwAD.unpack_dual(model(fwAD.make_dual(x, vx), t)).primal
    assert torch.allclose(a, b, atol=1e-5)


def test_jvp_backward_through_tangent():
    """sCM needs gradients of a loss built from JVP outputs (here with dual weights through attention)."""
    model = _tiny("dit-tiny").eval()
    x, t = _input("dit-tiny"), torch.rand(3)
    y, dy = torch.func.jvp(lambda a, b: model(a, b), (x, t), (torch.randn_like(x), torch.ones_like(t)))
    (y + dy).square().mean().backward()  # (a bias gets no gradient from the tangent alone)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", list_presets())
def test_config_round_trip(name):
    cfg = get_config(name)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["arch"] == cfg.ARCH
    assert config_from_dict(d) == cfg
    assert hash(config_from_dict(d)) == hash(cfg)


@pytest.mark.parametrize("name", TINY)
def test_rebuild_from_config_dict(name):
    model = _tiny(name)
    clone = build_model_from_config(json.loads(json.dumps(model.config.to_dict())))
    clone.load_state_dict(model.state_dict())
    x, t = _input(name), torch.rand(3)
    assert torch.equal(model.eval()(x, t), clone.eval()(x, t))


def test_overrides_and_errors():
    model = build_model("unet-tiny", channel_mult=[1, 1], attn_resolutions=[])
    assert model.config.channel_mult == (1, 1) and model.config.attn_resolutions == ()
    assert build_model("unet-tiny", num_classes=0).class_embed is None
    with pytest.raises(ValueError, match="unet-big.*valid: .*unet-tiny"):
        build_model("unet-big")
    with pytest.raises(ValueError, match="'chanels'.*valid: .*channels"):
        build_model("unet-tiny", chanels=8)
    with pytest.raises(ValueError, match="arch"):
        build_model_from_config({"channels": 8})
    with pytest.raises(ValueError, match="'transformer'"):
        build_model_from_config({"arch": "transformer"})
    with pytest.raises(ValueError, match="'foo'"):
        build_model_from_config({**get_config("mlp-tiny").to_dict(), "foo": 1})
    with pytest.raises(ValueError, match="dropout"):
        get_config("mlp-tiny", dropout=1.5)
    assert isinstance(PRESETS["unet-digits"], UNetConfig)
    with pytest.raises(Exception):
        PRESETS["unet-digits"].channels = 3  # frozen
