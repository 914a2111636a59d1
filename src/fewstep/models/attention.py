"""Self-attention that survives forward-mode autodiff, and a JVP-safe GroupNorm.

Continuous-time consistency training (sCM, Lu & Song 2025, Alg. 1) needs dF/dt by a forward-mode
JVP through the whole network. PyTorch's fused SDPA kernels (flash / memory-efficient, and the CPU
flash kernel) have no forward-mode derivative, so `dot_product_attention()` switches to an explicit
softmax(q k^T / sqrt(d)) v when a forward-mode derivative may be taken:

* inside any functorch transform (`torch.func.jvp`, `vmap`, `grad`, ...): q, k or v is a functorch
  wrapped tensor (`torch._C._functorch.is_functorch_wrapped_tensor`);
* with `torch.autograd.forward_ad` dual tensors: a dual level is open and q, k or v carries a tangent;
* when forced: `with attention_backend("math"):` or `dot_product_attention(..., backend="math")`.

Otherwise it calls `torch.nn.functional.scaled_dot_product_attention`. Both paths compute the same
function (tested to float32 round-off).

`GroupNorm` makes its input contiguous first: forward-mode AD through group_norm on CPU has failed on
non-contiguous inputs in some PyTorch versions.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "dot_product_attention",
    "attention_backend",
    "needs_math_attention",
    "GroupNorm",
    "SelfAttention2d",
    "MultiHeadSelfAttention",
    "group_count",
]

BACKENDS = ("auto", "math", "sdpa")
_backend = "auto"

_is_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


@contextlib.contextmanager
def attention_backend(backend: str):
    """Context manager selecting the attention backend: "auto" (default), "math" or "sdpa"."""
    global _backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}")
    previous, _backend = _backend, backend
    try:
        yield
    finally:
        _backend = previous


def _has_forward_tangent(t: Tensor) -> bool:
    if getattr(fwAD, "_current_level", 0) < 0:  # no dual level open: no forward-mode tangents can exist
        return False
    return fwAD.unpack_dual(t).tangent is not None


def needs_math_attention(*tensors: Tensor) -> bool:
    """True when a forward-mode derivative may flow through these tensors (see the module docstring)."""
    for t in tensors:
        if _is_wrapped is not None and _is_wrapped(t):
            return True
        if _has_forward_tangent(t):
            return True
    return False


def _math_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    low = q.dtype in (torch.float16, torch.bfloat16)
    weights = scores.softmax(dim=-1, dtype=torch.float32 if low else None).to(v.dtype)
    return weights @ v


def dot_product_attention(q: Tensor, k: Tensor, v: Tensor, backend: str | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v for q, k, v of shape [B, heads, N, d] (no mask, no dropout).

    backend: None uses the module-wide setting (see `attention_backend`); "auto" picks the math path
    when `needs_math_attention(q, k, v)` and SDPA otherwise.
    """
    backend = _backend if backend is None else backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "math" or (backend == "auto" and needs_math_attention(q, k, v)):
        return _math_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def group_count(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """The largest number of groups <= max_groups that divides `channels` with >= min_per_group each."""
    for g in range(min(max_groups, max(1, channels // min_per_group)), 0, -1):
        if channels % g == 0:
            return g
    return 1


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm on a contiguous input (forward-mode AD through group_norm on CPU needs it)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.contiguous())


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention over tokens [B, N, C] (the DiT / ViT block's attention)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, N, d]
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class SelfAttention2d(nn.Module):
    """Residual self-attention over the H*W positions of a feature map (DDPM / ADM attention block).

    x + proj(attention(norm(x))); `proj` is zero-initialised when zero_init (block starts as identity).
    """

    def __init__(self, channels: int, num_heads: int = 1, zero_init: bool = True, skip_scale: float = 1.0):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} is not divisible by num_heads {num_heads}")
        self.num_heads, self.skip_scale = num_heads, skip_scale
        self.norm = GroupNorm(group_count(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        heads = self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(B, 3, heads, C // heads, H * W)
        q, k, v = (qkv[:, i].transpose(-2, -1) for i in range(3))  # [B, heads, HW, d]
        out = dot_product_attention(q, k, v).transpose(-2, -1).reshape(B, C, H, W)
        return (x + self.proj(out)) * self.skip_scale
