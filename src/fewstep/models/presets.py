"""Named model presets and construction from plain-dict configs.

    model = build_model("unet-digits", num_classes=0, dropout=0.1)
    json.dump(model.config.to_dict(), f)             # saved beside the checkpoint
    model = build_model_from_config(json.load(f))    # the same architecture back

Each preset is a frozen dataclass config (`UNetConfig`, `DiTConfig`, `MLPConfig`); overrides are
checked against its fields. Parameter counts of the presets as defined:

    unet-tiny 48,545      unet-digits 1,742,433   unet-mnist 6,945,985   unet-cifar 38,302,851
    dit-tiny 43,716       dit-s-digits 1,865,988  mlp-tiny 14,946        mlp-2d 429,698

All presets use the positional time embedding with time_scale = 1, which suits discrete indices
0..999; for inputs in [0, 1] or TrigFlow angles in [0, pi/2] pass time_scale (e.g. 1000 as VP /
EDM code does), bearing in mind sCM's advice that large scales make dF/dt (the JVP) large.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .config import ModelConfig
from .dit import DiTConfig
from .mlp import MLPConfig
from .unet import UNetConfig

__all__ = ["ARCHS", "PRESETS", "list_presets", "get_config", "build_model", "config_from_dict",
           "build_model_from_config", "count_params"]

ARCHS: dict[str, type[ModelConfig]] = {"unet": UNetConfig, "dit": DiTConfig, "mlp": MLPConfig}

PRESETS: dict[str, ModelConfig] = {
    # 1x8x8 (sklearn digits); for unit tests.
    "unet-tiny": UNetConfig(in_channels=1, resolution=8, num_classes=10, channels=8, channel_mult=(1, 2),
                            num_blocks=1, attn_resolutions=(4,), head_channels=16, emb_mult=4),
    # 1x8x8 digits, fast on CPU.
    "unet-digits": UNetConfig(in_channels=1, resolution=8, num_classes=10, channels=32, channel_mult=(1, 2, 2),
                              num_blocks=2, attn_resolutions=(4,), dropout=0.1),
    # 1x28x28 (MNIST / Fashion-MNIST): 28 -> 14 -> 7.
    "unet-mnist": UNetConfig(in_channels=1, resolution=28, num_classes=10, channels=64, channel_mult=(1, 2, 2),
                             num_blocks=2, attn_resolutions=(7,), dropout=0.1),
    # 3x32x32 (CIFAR-10), the DDPM CIFAR layout: 128 channels, (1, 2, 2, 2), attention at 16x16.
    "unet-cifar": UNetConfig(in_channels=3, resolution=32, num_classes=10, channels=128,
                             channel_mult=(1, 2, 2, 2), num_blocks=2, attn_resolutions=(16,), dropout=0.1),
    "dit-tiny": DiTConfig(in_channels=1, resolution=8, num_classes=10, patch_size=2, hidden=32, depth=2,
                          num_heads=2),
    # A small DiT for 1x8x8 digits (patch 2 -> 16 tokens), about the size of unet-digits.
    "dit-s-digits": DiTConfig(in_channels=1, resolution=8, num_classes=10, patch_size=2, hidden=128, depth=6,
                              num_heads=4),
    "mlp-2d": MLPConfig(dim=2, hidden=128, num_blocks=4),
    "mlp-tiny": MLPConfig(dim=2, hidden=32, num_blocks=2),
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_config(name: str, **overrides) -> ModelConfig:
    """The preset's config with `overrides` applied (ValueError on an unknown name or option)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid: {', '.join(list_presets())}")
    return PRESETS[name].replace(**overrides)


def build_model(name: str, **overrides) -> nn.Module:
    """Construct the preset `name` with `overrides`, e.g. build_model("unet-mnist", num_classes=0)."""
    return get_config(name, **overrides).build()


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Inverse of `ModelConfig.to_dict()`; d["arch"] picks the config class."""
    if "arch" not in d:
        raise ValueError(f"model config dict has no 'arch' key; valid archs: {', '.join(ARCHS)}")
    if d["arch"] not in ARCHS:
        raise ValueError(f"unknown model arch {d['arch']!r}; valid: {', '.join(ARCHS)}")
    return ARCHS[d["arch"]].from_dict(d)


def build_model_from_config(config: dict[str, Any] | ModelConfig, **overrides) -> nn.Module:
    """Construct a network from a config dict (as saved beside checkpoints) or a config object."""
    cfg = config if isinstance(config, ModelConfig) else config_from_dict(config)
    return cfg.replace(**overrides).build()


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
