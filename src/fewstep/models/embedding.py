"""Time and class embeddings shared by the UNet, DiT and MLP.

* `PositionalEmbedding`: the sinusoidal embedding of Transformers / DDPM (Ho et al. 2020) as used by
  DDPM++ and EDM (Karras et al. 2022). Frequencies run from `scale` down to `scale / max_positions`.
  sCM (Lu & Song 2025, Sec. 4.1) recommends it (with c_noise(t) = t) over large-scale Fourier features
  for continuous-time consistency training, because d(embedding)/dt grows with the frequency.
* `FourierEmbedding`: random fixed frequencies ~ N(0, scale^2) (Tancik et al. 2020; NCSN++ of
  Song et al. 2021 uses scale 16).
* `ClassEmbedding`: a learned table with one extra row, the *null* class (index = num_classes),
  used for classifier-free guidance (Ho & Salimans 2022); `drop_labels` does the label dropout.

The network's time input (c_noise) may be a discrete index 0..999, a sigma-like value or a TrigFlow
angle in [0, pi/2]. Choose `scale` so that scale * c_noise spans a few hundred to a few thousand
radians at the highest frequency where fine time resolution is wanted: 1 for indices 0..999,
~1000 for times in [0, 1]; sCM's stability advice argues for the smallest scale that trains well.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "PositionalEmbedding",
    "FourierEmbedding",
    "TimeEmbedding",
    "ClassEmbedding",
    "drop_labels",
    "batch_time",
]


def batch_time(t, batch_size: int, device=None) -> Tensor:
    """t as a floating tensor of shape [batch_size] (a scalar or [1] is broadcast; ints become float)."""
    t = torch.as_tensor(t, device=device)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    if t.ndim == 0 or (t.ndim == 1 and t.shape[0] == 1 and batch_size != 1):
        return t.reshape(()).expand(batch_size)
    if t.ndim != 1 or t.shape[0] != batch_size:
        raise ValueError(f"t must be a scalar or have shape [{batch_size}], got {tuple(t.shape)}")
    return t


def _compute_dtype(t: Tensor) -> torch.dtype:
    # Embeddings are computed in at least float32, even for a bfloat16 / float16 network.
    return torch.promote_types(t.dtype, torch.float32)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding [cos(w_k s t), sin(w_k s t)], w_k = (1 / max_positions)^(k / half).

    `endpoint=True` makes the lowest frequency exactly 1 / max_positions (EDM's convention).
    """

    def __init__(self, dim: int, max_positions: int = 10000, scale: float = 1.0, endpoint: bool = False):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be even and >= 2, got {dim}")
        self.dim, self.max_positions, self.scale, self.endpoint = dim, max_positions, float(scale), endpoint

    def forward(self, t: Tensor) -> Tensor:
        dtype = _compute_dtype(t)
        half = self.dim // 2
        k = torch.arange(half, device=t.device, dtype=dtype) / (half - (1 if self.endpoint and half > 1 else 0))
        freqs = (1.0 / self.max_positions) ** k
        arg = (t.to(dtype) * self.scale)[:, None] * freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_positions={self.max_positions}, scale={self.scale}"


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi f t), sin(2 pi f t)], f ~ N(0, scale^2), fixed (a buffer)."""

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be even and >= 2, got {dim}")
        self.dim, self.scale = dim, float(scale)
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        dtype = _compute_dtype(t)
        arg = (2 * math.pi) * t.to(dtype)[:, None] * self.freqs.to(dtype)[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


class TimeEmbedding(nn.Module):
    """c_noise -> sinusoidal or Fourier features -> Linear -> SiLU -> Linear (the ADM / DDPM++ MLP).

    kind: "positional" or "fourier"; `scale` is passed to the feature map; output width `out_dim`.
    """

    KINDS = ("positional", "fourier")

    def __init__(self, feature_dim: int, out_dim: int, kind: str = "positional", scale: float = 1.0):
        super().__init__()
        if kind == "positional":
            self.features = PositionalEmbedding(feature_dim, scale=scale)
        elif kind == "fourier":
            self.features = FourierEmbedding(feature_dim, scale=scale)
        else:
            raise ValueError(f"unknown time embedding {kind!r}; valid: {', '.join(self.KINDS)}")
        self.mlp = nn.Sequential(nn.Linear(feature_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        w = self.mlp[0].weight
        return self.mlp(self.features(t).to(w.dtype))


class ClassEmbedding(nn.Module):
    """Learned class embedding with a null class at index `num_classes` (classifier-free guidance).

    `forward(class_labels, batch_size, device)` accepts
      * None -> every sample gets the null class;
      * an int or a 0-d tensor -> broadcast to the batch;
      * an integer tensor [B] of indices in 0..num_classes (num_classes = null; negative = null too);
      * a float tensor [B, num_classes] or [B, num_classes + 1] of (soft / one-hot) class weights.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"ClassEmbedding needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.randn(num_classes + 1, dim))

    @property
    def null_index(self) -> int:
        return self.num_classes

    def forward(self, class_labels, batch_size: int, device=None) -> Tensor:
        if class_labels is None:
            return self.weight[self.null_index].expand(batch_size, -1)
        labels = torch.as_tensor(class_labels, device=device if device is not None else self.weight.device)
        if labels.is_floating_point():
            if labels.ndim != 2 or labels.shape[0] != batch_size or labels.shape[1] not in (
                    self.num_classes, self.num_classes + 1):
                raise ValueError(f"float class_labels must have shape [{batch_size}, {self.num_classes}] or "
                                 f"[{batch_size}, {self.num_classes + 1}], got {tuple(labels.shape)}")
            return labels.to(self.weight.dtype) @ self.weight[: labels.shape[1]]
        labels = labels.long()
        if labels.ndim == 0:
            labels = labels.expand(batch_size)
        if labels.shape != (batch_size,):
            raise ValueError(f"class_labels must have shape [{batch_size}], got {tuple(labels.shape)}")
        labels = torch.where(labels < 0, torch.full_like(labels, self.null_index), labels)
        return self.weight[labels]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes} (+1 null), dim={self.weight.shape[1]}"


def drop_labels(class_labels: Tensor, p: float, num_classes: int, generator: torch.Generator | None = None) -> Tensor:
    """Replace each label by the null class (index num_classes) with probability p (CFG training)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label drop probability must be in [0, 1], got {p}")
    if p == 0.0:
        return class_labels
    drop = torch.rand(class_labels.shape, generator=generator, device=class_labels.device) < p
    return torch.where(drop, torch.full_like(class_labels, num_classes), class_labels)
