"""A small UNet in the DDPM++ / ADM style.

References: DDPM (Ho et al. 2020) and its "DDPM++" refinement (Song et al. 2021, as in EDM's
`SongUNet`, Karras et al. 2022); ADM (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs"):
residual blocks GroupNorm -> SiLU -> conv, the time (+ class) embedding injected by adaptive
GroupNorm scale-shift  h = norm(h) (1 + s) + b, dropout before the second conv, self-attention at
chosen resolutions and in the middle, skip connections concatenated in the decoder, residual sums
scaled by 1/sqrt(2) (DDPM++).

`adaptive_double_norm=True` uses sCM's adaptive double normalisation (Lu & Song 2025, Sec. 4.1):
h = norm(h) * pnorm(s) + pnorm(b), with pnorm the pixel norm (Karras et al. 2018) over channels of
the embedding's scale and shift, which bounds how strongly the time input can modulate features.

Resolutions need not be powers of two: stride-2 convolutions go 28 -> 14 -> 7 -> 4 and the decoder
upsamples to the size of the matching skip.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import GroupNorm, SelfAttention2d, group_count
from .config import ModelConfig
from .embedding import ClassEmbedding, TimeEmbedding, batch_time

__all__ = ["UNetConfig", "UNet", "ResBlock", "pixel_norm"]


@dataclasses.dataclass(frozen=True)
class UNetConfig(ModelConfig):
    """UNet hyper-parameters.

    in_channels / out_channels (None = in_channels), resolution (square input side), num_classes
    (0 = unconditional), channels (base width), channel_mult (per level), num_blocks (residual
    blocks per level in the encoder; the decoder has one more), attn_resolutions (feature-map sides
    that get self-attention), head_channels (channels per attention head), mid_attention, dropout,
    emb_mult (embedding width = channels * emb_mult), time_embedding ("positional" | "fourier"),
    time_scale (multiplies the time input inside the embedding), zero_out (zero-initialise the
    output conv), adaptive_double_norm (sCM), rescale_skip (1/sqrt 2 residual sums, DDPM++).
    """

    ARCH = "unet"
    in_channels: int = 1
    out_channels: int | None = None
    resolution: int = 8
    num_classes: int = 0
    channels: int = 64
    channel_mult: tuple = (1, 2, 2)
    num_blocks: int = 2
    attn_resolutions: tuple = (4,)
    head_channels: int = 64
    mid_attention: bool = True
    dropout: float = 0.0
    emb_mult: int = 4
    time_embedding: str = "positional"
    time_scale: float = 1.0
    zero_out: bool = True
    adaptive_double_norm: bool = False
    rescale_skip: bool = True

    def level_sizes(self) -> list[int]:
        sizes = [self.resolution]
        for _ in self.channel_mult[1:]:
            sizes.append(math.ceil(sizes[-1] / 2))
        return sizes

    def validate(self) -> None:
        if self.in_channels < 1 or self.resolution < 1 or self.channels < 1 or self.num_blocks < 1:
            raise ValueError("in_channels, resolution, channels and num_blocks must be positive")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult must be a non-empty tuple of positive ints, got {self.channel_mult}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        sizes = self.level_sizes()
        bad = [r for r in self.attn_resolutions if r not in sizes]
        if bad:
            raise ValueError(f"attn_resolutions {bad} are not feature-map sizes of this UNet; valid: {sizes}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    def build(self) -> "UNet":
        return UNet(self)


def pixel_norm(x: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """x / sqrt(mean(x^2 over dim) + eps) (Karras et al. 2018, ProGAN)."""
    return x * torch.rsqrt(x.square().mean(dim=dim, keepdim=True) + eps)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, adaptive scale-shift from the embedding, SiLU-dropout-conv, skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0,
                 double_norm: bool = False, skip_scale: float = 1.0):
        super().__init__()
        self.double_norm, self.skip_scale = double_norm, skip_scale
        self.norm1 = GroupNorm(group_count(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = GroupNorm(group_count(out_ch), out_ch, affine=False)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # ADM: each residual branch starts at zero
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        if self.double_norm:
            h = self.norm2(h) * pixel_norm(scale) + pixel_norm(shift)
        else:
            h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return (self.skip(x) + h) * self.skip_scale


class _Level(nn.Module):
    """A ResBlock optionally followed by self-attention."""

    def __init__(self, res: ResBlock, attn: SelfAttention2d | None):
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class _Down(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, size) -> Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class UNet(nn.Module):
    """DDPM++ / ADM-style UNet: `model(x, t, class_labels=None) -> tensor shaped like x`.

    Construct with a `UNetConfig` or keyword arguments of one (`UNet(in_channels=3, resolution=32)`);
    the config is kept as `self.config`. Extra keyword arguments of `forward` are ignored.
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = UNetConfig(**kwargs) if config is None else config.replace(**kwargs)
        self.config = cfg
        ch0 = cfg.channels
        emb_dim = ch0 * cfg.emb_mult
        skip_scale = math.sqrt(0.5) if cfg.rescale_skip else 1.0
        sizes = cfg.level_sizes()

        def res(i, o):
            return ResBlock(i, o, emb_dim, cfg.dropout, cfg.adaptive_double_norm, skip_scale)

        def attn(c, size):
            if size not in cfg.attn_resolutions:
                return None
            return SelfAttention2d(c, max(1, c // cfg.head_channels), skip_scale=skip_scale)

        self.time_embed = TimeEmbedding(ch0, emb_dim, cfg.time_embedding, cfg.time_scale)
        self.class_embed = ClassEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes > 0 else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch0, 3, padding=1)

        self.down = nn.ModuleList()
        skips, ch = [ch0], ch0
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_blocks):
                self.down.append(_Level(res(ch, ch0 * mult), attn(ch0 * mult, sizes[level])))
                ch = ch0 * mult
                skips.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.down.append(_Down(ch))
                skips.append(ch)

        mid_attn = SelfAttention2d(ch, max(1, ch // cfg.head_channels), skip_scale=skip_scale) \
            if cfg.mid_attention else None
        self.mid = nn.ModuleList([_Level(res(ch, ch), mid_attn), _Level(res(ch, ch), None)])

        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.channel_mult))):
            out = ch0 * cfg.channel_mult[level]
            for _ in range(cfg.num_blocks + 1):
                self.up.append(_Level(res(ch + skips.pop(), out), attn(out, sizes[level])))
                ch = out
            if level != 0:
                self.up.append(_Up(ch))

        out_ch = cfg.out_channels or cfg.in_channels
        self.norm_out = GroupNorm(group_count(ch), ch)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)
        if cfg.zero_out:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def embed(self, t, class_labels, batch_size: int, device) -> Tensor:
        emb = self.time_embed(batch_time(t, batch_size, device))
        if self.class_embed is not None:
            emb = emb + self.class_embed(class_labels, batch_size, device).to(emb.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional model (num_classes = 0)")
        return emb

    def forward(self, x: Tensor, t, class_labels=None, **extra) -> Tensor:
        emb = self.embed(t, class_labels, x.shape[0], x.device)
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h) if isinstance(block, _Down) else block(h, emb)
            hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for block in self.up:
            if isinstance(block, _Up):
                h = block(h, hs[-1].shape[-2:])
            else:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))
