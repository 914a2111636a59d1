"""The sCM tangent g (sCM Alg. 1 / eq. 8-10): the direction in which consistency training moves F.

With the consistency function f(x_t, t) = cos(t) x_t - sin(t) sd F(x_t/sd, t) and the PF-ODE
velocity v = dx_t/dt, its total derivative along the trajectory is (sCM eq. 8)

    df/dt = -cos(t) (sd F - v) - sin(t) (x_t + sd dF/dt),   dF/dt = d_x F . v / sd + d_t F.

Algorithm 1 uses g = cos(t) df/dt with the tangent warm-up factor r on the second term:

    g = -cos^2(t) (sd F^- - v) - r cos(t) sin(t) (x_t + sd dF^-/dt)

where cos(t) sin(t) dF^-/dt is ONE forward-mode JVP of F at the primal (x_t/sd, t) with tangents
(cos(t) sin(t) v / sd, cos(t) sin(t)); its primal output is F^- (stop-gradient: the current model,
not the EMA). Then g <- g / (||g|| + c) (tangent normalisation, sCM Sec. 4.2).

Precision and randomness: the JVP runs in float32 (float64 for a double model) with autocast off,
whatever the training autocast; dropout masks are shared with the gradient forward pass by running
the JVP (or the finite-difference evaluations) inside `torch.random.fork_rng`, so each network
evaluation starts from the same RNG state as the training forward that follows.

Fallback for networks without forward-mode AD: a central finite difference along the same tangent,
(F(p + h u) - F(p - h u)) / (2 h), p = (x_t/sd, t), u = the tangents above (3 evaluations).
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import Tensor

from ..processes import _bcast

__all__ = ["TANGENT_METHODS", "NORMS", "model_tangent", "scm_tangent", "normalize_tangent", "same_rng"]

TANGENT_METHODS = ("jvp", "fd")
NORMS = ("l2", "rms")


@contextlib.contextmanager
def same_rng(device: torch.device | None = None):
    """Run the block from the current RNG state and restore it on exit (CPU and, for a CUDA tensor's
    device, that GPU), so the next network call draws the same dropout masks."""
    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=True):
        yield


def _tangent_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def model_tangent(fn: Callable[[Tensor, Tensor], Tensor], x_in: Tensor, t: Tensor, u_x: Tensor, u_t: Tensor,
                  method: str = "jvp", fd_step: float = 1e-3) -> tuple[Tensor, Tensor]:
    """(F(p), dF(p)[u]) for F = fn(x_in, t) at p = (x_in, t) along u = (u_x, u_t), without gradients.

    method "jvp": one torch.func.jvp (primal reused as F); "fd": central difference with step fd_step.
    Runs in float32 or higher with autocast disabled; RNG restored between evaluations and at exit.
    """
    if method not in TANGENT_METHODS:
        raise ValueError(f"unknown tangent method {method!r}; valid: {', '.join(TANGENT_METHODS)}")
    dtype = _tangent_dtype(x_in)
    x_in, t, u_x, u_t = (v.to(dtype) for v in (x_in, t, u_x, u_t))
    autocast_off = torch.autocast(device_type=x_in.device.type, enabled=False)
    with torch.no_grad(), autocast_off:
        if method == "jvp":
            with same_rng(x_in.device):
                F, dF = torch.func.jvp(fn, (x_in, t), (u_x, u_t))
            return F, dF
        if not fd_step > 0:
            raise ValueError(f"fd_step must be positive, got {fd_step}")
        outs = []
        for s in (0.0, fd_step, -fd_step):
            with same_rng(x_in.device):
                outs.append(fn(x_in + s * u_x, t + s * u_t))
        F, Fp, Fm = outs
        return F, (Fp - Fm) / (2.0 * fd_step)


def scm_tangent(fn: Callable[[Tensor, Tensor], Tensor], x_t: Tensor, t: Tensor, v: Tensor, sigma_data: float,
                r: float = 1.0, method: str = "jvp", fd_step: float = 1e-3) -> tuple[Tensor, Tensor]:
    """(F^-, g) of sCM Algorithm 1 before normalisation (g = cos(t) df/dt at r = 1).

    fn(x_in, t) -> F is the network with its conditioning bound; x_t the TrigFlow state, t [B] times,
    v = dx_t/dt (data pair or teacher), r the tangent warm-up factor in [0, 1].
    """
    sd = float(sigma_data)
    cs = torch.cos(t) * torch.sin(t)
    u_x = _bcast(cs, v) * v / sd
    F, cs_dFdt = model_tangent(fn, x_t / sd, t, u_x, cs, method, fd_step)
    dtype = F.dtype
    x_t, v, t = x_t.to(dtype), v.to(dtype), t.to(dtype)
    cos, sin = _bcast(torch.cos(t), x_t), _bcast(torch.sin(t), x_t)
    g = -cos**2 * (sd * F - v) - r * (cos * sin * x_t + sd * cs_dFdt)
    return F, g


def normalize_tangent(g: Tensor, c: float = 0.1, norm: str = "l2") -> Tensor:
    """g / (||g|| + c) per sample (sCM Sec. 4.2): norm "l2" (the per-sample Euclidean norm, sCM) or
    "rms" (||g|| / sqrt(D), a dimension-free variant some implementations use)."""
    if norm not in NORMS:
        raise ValueError(f"unknown tangent norm {norm!r}; valid: {', '.join(NORMS)}")
    if not c > 0:
        raise ValueError(f"tangent normalisation constant c must be positive, got {c}")
    n = g.flatten(1).norm(dim=1)
    if norm == "rms":
        n = n / g[0].numel() ** 0.5
    return g / _bcast(n + c, g)
