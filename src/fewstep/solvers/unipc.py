"""UniPC (Zhao et al. 2023): unified predictor (UniP) and corrector (UniC), any order, bh1 / bh2.

Multistep in lambda like DPM-Solver++ (form="data", the default) or DPM-Solver (form="noise").
At each step the model output at the new point corrects that point (UniC) before the next
prediction, so the corrector costs no extra model call; the last point is not corrected (that
would need one more call). With h = lambda_t - lambda_s, hh = -h (data) / h (noise), and
r_k = (lambda_{s_k} - lambda_s) / h for the previous points, the coefficients rho solve
R rho = b with R_ij = r_j^(i-1), b_i = phi_{i+1}(hh) i! / B(h), B(h) = hh (bh1) or e^hh - 1 (bh2)
(UniPC Algorithm 2 / eq. 8).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Grid, Model, final_order, record_nfe, steps_iter

__all__ = ["unipc"]


def _system(rks: list[float], hh: float, variant: str):
    """(R, b, B_h, phi_1) for the given r's (last one 1.0)."""
    k = len(rks)
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    B_h = hh if variant == "bh1" else math.expm1(hh)
    R, b, fact = [], [], 1
    for i in range(1, k + 1):
        R.append([r ** (i - 1) for r in rks])
        b.append(h_phi_k * fact / B_h)
        fact *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    return torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), B_h, h_phi_1


def _update(x_s: Tensor, hist, g: Grid, i: int, k: int, form: str, variant: str, m_t: Tensor | None):
    """UniP (m_t None) or UniC (m_t = model output at the predicted point) from grid i to i + 1."""
    lam_s, m0 = hist[-1]
    h = g.lam[i + 1] - lam_s
    hh = -h if form == "data" else h
    A_s = g.sigma[i] if form == "data" else g.alpha[i]
    A_t, B_t = (g.sigma[i + 1], g.alpha[i + 1]) if form == "data" else (g.alpha[i + 1], g.sigma[i + 1])
    rks, d1s = [], []
    for j in range(1, k):
        lam_j, m_j = hist[-(j + 1)]
        rk = (lam_j - lam_s) / h
        rks.append(rk)
        d1s.append((m_j - m0) / rk)
    R, b, B_h, h_phi_1 = _system(rks + [1.0], hh, variant)
    x_t = (A_t / A_s) * x_s - (B_t * h_phi_1) * m0
    if m_t is None:  # predictor: uses the k - 1 previous points
        if k == 1:
            return x_t
        rhos = [0.5] if k == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        res = sum(r * d for r, d in zip(rhos, d1s))
        return x_t - (B_t * B_h) * res
    rhos = [0.5] if k == 1 else torch.linalg.solve(R, b).tolist()
    res = sum((r * d for r, d in zip(rhos[:-1], d1s)), torch.zeros_like(x_s)) + rhos[-1] * (m_t - m0)
    return x_t - (B_t * B_h) * res


def unipc(denoiser, x: Tensor, ts, *, order: int = 2, variant: str = "bh2", form: str = "data",
          lower_order_final=True, corrector: bool = True, disable_corrector=(), cond: dict | None = None,
          callback=None, progress: bool = False, afs: bool = False) -> Tensor:
    """UniPC-p with UniC correction (UniPC-`order`), one model call per step."""
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC here has orders 1, 2, 3; got {order}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    if form not in ("data", "noise"):
        raise ValueError(f"form must be 'data' or 'noise', got {form!r}")
    process = denoiser.process
    g = Grid.of(process, ts)
    model = Model(denoiser, process, cond, afs)
    n = len(g) - 1
    hist: list = []
    x_prev = None
    k_prev = 1
    for i in steps_iter(n, progress, f"UniPC-{order} {variant}"):
        x0 = model.x0(x, g.ts[i])
        m = x0 if form == "data" else (x - g.alpha[i] * x0) / g.sigma[i]
        if corrector and x_prev is not None and (i - 1) not in disable_corrector:
            x = _update(x_prev, hist, g, i - 1, k_prev, form, variant, m)
        hist = (hist + [(g.lam[i], m)])[-order:]
        if callback is not None:
            callback(i, g.ts[i], x, x0)
        if g.sigma[i + 1] == 0.0:
            x = g.alpha[i + 1] * x0
            continue
        k = min(final_order(order, i, n, lower_order_final), len(hist))
        x_prev, k_prev = x, k
        x = _update(x, hist, g, i, k, form, variant, None)
    record_nfe(denoiser, model)
    return x
