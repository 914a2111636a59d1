"""A residual MLP for vector data (2-D toy distributions, flattened small images).

Each block is  x + Linear(Dropout(SiLU(Linear(LN(x) (1 + s) + b))))  with (s, b) from the time
(+ class) embedding, i.e. the adaptive-norm conditioning of ADM / DiT applied to an MLP.
"""

from __future__ import annotations

import dataclasses

import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .embedding import ClassEmbedding, TimeEmbedding, batch_time

__all__ = ["MLPConfig", "MLP", "MLPBlock"]


@dataclasses.dataclass(frozen=True)
class MLPConfig(ModelConfig):
    """MLP hyper-parameters.

    dim (number of features per sample; inputs [B, dim] or [B, *shape] with prod(shape) = dim),
    hidden, num_blocks, num_classes (0 = unconditional), dropout, time_embedding, time_scale,
    zero_out (zero-initialise the output layer).
    """

    ARCH = "mlp"
    dim: int = 2
    hidden: int = 256
    num_blocks: int = 4
    num_classes: int = 0
    dropout: float = 0.0
    time_embedding: str = "positional"
    time_scale: float = 1.0
    zero_out: bool = True

    def validate(self) -> None:
        if self.dim < 1 or self.hidden < 2 or self.num_blocks < 1:
            raise ValueError("dim, hidden and num_blocks must be positive (hidden >= 2)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    def build(self) -> "MLP":
        return MLP(self)


class MLPBlock(nn.Module):
    """LayerNorm with embedding scale-shift -> Linear -> SiLU -> Dropout -> Linear, residual."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.emb = nn.Linear(emb_dim, 2 * hidden)
        self.fc1 = nn.Linear(hidden, 2 * hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(2 * hidden, hidden)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.emb(F.silu(emb)).chunk(2, dim=1)
        h = self.norm(x) * (1 + scale) + shift
        return x + self.fc2(self.dropout(F.silu(self.fc1(h))))


class MLP(nn.Module):
    """Residual MLP: `model(x, t, class_labels=None) -> tensor shaped like x`."""

    def __init__(self, config: MLPConfig | None = None, **kwargs):
        super().__init__()
        cfg = MLPConfig(**kwargs) if config is None else config.replace(**kwargs)
        self.config = cfg
        h = cfg.hidden
        self.time_embed = TimeEmbedding(h if h % 2 == 0 else h + 1, h, cfg.time_embedding, cfg.time_scale)
        self.class_embed = ClassEmbedding(cfg.num_classes, h) if cfg.num_classes > 0 else None
        self.inp = nn.Linear(cfg.dim, h)
        self.blocks = nn.ModuleList(MLPBlock(h, h, cfg.dropout) for _ in range(cfg.num_blocks))
        self.norm_out = nn.LayerNorm(h)
        self.out = nn.Linear(h, cfg.dim)
        if cfg.zero_out:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t, class_labels=None, **extra) -> Tensor:
        B = x.shape[0]
        if x.shape[1:].numel() != self.config.dim:
            raise ValueError(f"expected {self.config.dim} features per sample, got shape {tuple(x.shape)}")
        emb = self.time_embed(batch_time(t, B, x.device))
        if self.class_embed is not None:
            emb = emb + self.class_embed(class_labels, B, x.device).to(emb.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional model (num_classes = 0)")
        h = self.inp(x.reshape(B, -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.norm_out(h))).reshape(x.shape)
