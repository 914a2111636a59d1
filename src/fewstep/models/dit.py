"""DiT: a diffusion transformer with adaLN-zero conditioning (Peebles & Xie 2023, arXiv 2212.09748).

Patchify with a stride-p convolution, add a fixed 2-D sin-cos (or learned) position embedding, run
transformer blocks whose LayerNorms are modulated by the time + class embedding c:
    x = x + gate_msa * Attn(norm1(x) (1 + scale_msa) + shift_msa)
    x = x + gate_mlp * MLP(norm2(x) (1 + scale_mlp) + shift_mlp)
with the six modulation vectors from Linear(SiLU(c)) initialised to zero ("adaLN-zero": every block
starts as the identity), then a final adaLN + linear layer and unpatchify. The attention is the
JVP-safe one of `attention.py`.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import MultiHeadSelfAttention
from .config import ModelConfig
from .embedding import ClassEmbedding, TimeEmbedding, batch_time

__all__ = ["DiTConfig", "DiT", "DiTBlock", "sincos_2d"]


@dataclasses.dataclass(frozen=True)
class DiTConfig(ModelConfig):
    """DiT hyper-parameters.

    in_channels / out_channels (None = in_channels), resolution (divisible by patch_size),
    num_classes (0 = unconditional), patch_size, hidden, depth, num_heads, mlp_ratio, dropout (in the
    MLPs), pos_embed ("sincos" fixed | "learned"), time_embedding ("positional" | "fourier"),
    time_scale, zero_out (zero-initialise the final linear layer, as in DiT).
    """

    ARCH = "dit"
    in_channels: int = 1
    out_channels: int | None = None
    resolution: int = 8
    num_classes: int = 0
    patch_size: int = 2
    hidden: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    pos_embed: str = "sincos"
    time_embedding: str = "positional"
    time_scale: float = 1.0
    zero_out: bool = True

    def validate(self) -> None:
        if self.resolution % self.patch_size:
            raise ValueError(f"resolution {self.resolution} is not divisible by patch_size {self.patch_size}")
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by num_heads {self.num_heads}")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"unknown pos_embed {self.pos_embed!r}; valid: sincos, learned")
        if self.pos_embed == "sincos" and self.hidden % 4:
            raise ValueError(f"sincos position embedding needs hidden divisible by 4, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes < 0 or self.depth < 1:
            raise ValueError("num_classes must be >= 0 and depth >= 1")

    def build(self) -> "DiT":
        return DiT(self)


def sincos_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos position embedding [grid*grid, dim] (MAE / DiT): half for rows, half for columns."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    pos = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def emb(p):
        a = p.reshape(-1, 1) * omega[None]
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([emb(rows), emb(cols)], dim=1).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Transformer block with adaLN-zero modulation."""

    def __init__(self, hidden: int, num_heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = MultiHeadSelfAttention(hidden, num_heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Dropout(dropout),
                                 nn.Linear(inner, hidden))
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class DiT(nn.Module):
    """Diffusion transformer: `model(x, t, class_labels=None) -> tensor shaped like x`.

    Construct with a `DiTConfig` or its keyword arguments; the config is kept as `self.config`.
    """

    def __init__(self, config: DiTConfig | None = None, **kwargs):
        super().__init__()
        cfg = DiTConfig(**kwargs) if config is None else config.replace(**kwargs)
        self.config = cfg
        p, d = cfg.patch_size, cfg.hidden
        self.grid = cfg.resolution // p
        self.out_channels = cfg.out_channels or cfg.in_channels
        self.patchify = nn.Conv2d(cfg.in_channels, d, p, stride=p)
        if cfg.pos_embed == "sincos":
            self.register_buffer("pos", sincos_2d(d, self.grid)[None], persistent=False)
        else:
            self.pos = nn.Parameter(torch.randn(1, self.grid ** 2, d) * 0.02)
        self.time_embed = TimeEmbedding(min(256, 2 * d), d, cfg.time_embedding, cfg.time_scale)
        self.class_embed = ClassEmbedding(cfg.num_classes, d) if cfg.num_classes > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(d, 2 * d)
        self.linear_out = nn.Linear(d, p * p * self.out_channels)
        nn.init.zeros_(self.ada_out.weight)
        nn.init.zeros_(self.ada_out.bias)
        if cfg.zero_out:
            nn.init.zeros_(self.linear_out.weight)
            nn.init.zeros_(self.linear_out.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        """[B, grid*grid, p*p*C] -> [B, C, H, W]."""
        B, g, p, C = x.shape[0], self.grid, self.config.patch_size, self.out_channels
        x = x.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, C, g * p, g * p)

    def forward(self, x: Tensor, t, class_labels=None, **extra) -> Tensor:
        B = x.shape[0]
        c = self.time_embed(batch_time(t, B, x.device))
        if self.class_embed is not None:
            c = c + self.class_embed(class_labels, B, x.device).to(c.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional model (num_classes = 0)")
        h = self.patchify(x).flatten(2).transpose(1, 2) + self.pos.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=1)
        h = self.linear_out(_modulate(self.norm_out(h), shift, scale))
        return self.unpatchify(h)
