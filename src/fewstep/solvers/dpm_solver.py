"""DPM-Solver (noise form, Lu et al. 2022) and DPM-Solver++ (data form, Lu et al. 2022b).

Both integrate the probability-flow ODE exactly in its linear part, in lambda = log(alpha/sigma),
and Taylor-expand the model output m (eps in the noise form, x0 in the data form). With
h = lambda_t - lambda_s, hh = h (noise) or -h (data), A = alpha (noise) or sigma (data) and
B = sigma (noise) or alpha (data), every update here is

    x_t = (A_t / A_s) x_s - B_t [phi_1(hh) m_s + c_2 D_1 + phi_3(hh) D_2]

(DPM-Solver eqs. 3.7-3.9, Algorithms 1-3; DPM-Solver++ Algorithms 1-2 and the 3M update of its
official code), with divided differences D_1, D_2 of m over previous (multistep) or intermediate
(singlestep) points. All coefficients are computed in float64 Python floats.

A step that ends at sigma = 0 is the exact first-order step x_0 = alpha_0 D(x_s, s) in either form.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import Grid, Model, final_order, phis, record_nfe, steps_iter

__all__ = ["dpm_multistep", "dpm_singlestep", "dpm_adaptive", "sde_dpmpp_2m", "fast_orders"]


def _form_coefs(g: Grid, i: int, form: str):
    """(A_s, B_s) at grid index i for the given form."""
    return (g.sigma[i], g.alpha[i]) if form == "data" else (g.alpha[i], g.sigma[i])


def _check_form(form: str, solver_type: str):
    if form not in ("data", "noise"):
        raise ValueError(f"form must be 'data' (DPM-Solver++) or 'noise' (DPM-Solver), got {form!r}")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")


def dpm_multistep(denoiser, x: Tensor, ts, *, order: int = 2, form: str = "data", solver_type: str = "midpoint",
                  lower_order_final=True, diffusers_3m: bool = False, cond: dict | None = None, callback=None,
                  progress: bool = False, afs: bool = False) -> Tensor:
    """Multistep DPM-Solver (form="noise") / DPM-Solver++ 2M, 3M (form="data"), orders 1-3.

    One model call per step; the first steps warm up with lower orders. `ts` is the decreasing
    time grid (see spacing.make_grid). `solver_type` picks the second-order variant ("midpoint" as
    in the papers, "heun" the alternative of the official code). `callback(i, t, x, x0)` sees each
    evaluated state.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"multistep DPM-Solver has orders 1, 2, 3; got {order}")
    _check_form(form, solver_type)
    process = denoiser.process
    g = Grid.of(process, ts)
    model = Model(denoiser, process, cond, afs)
    n = len(g) - 1
    hist: list[tuple[float, Tensor]] = []
    for i in steps_iter(n, progress, f"DPM-Solver{'++' if form == 'data' else ''} {order}M"):
        A_s, _ = _form_coefs(g, i, form)
        A_t, B_t = _form_coefs(g, i + 1, form)
        x0 = model.x0(x, g.ts[i])
        m = x0 if form == "data" else (x - g.alpha[i] * x0) / g.sigma[i]
        hist = (hist + [(g.lam[i], m)])[-order:]
        if callback is not None:
            callback(i, g.ts[i], x, x0)
        if g.sigma[i + 1] == 0.0:
            x = g.alpha[i + 1] * x0
            continue
        k = min(final_order(order, i, n, lower_order_final), len(hist))
        h = g.lam[i + 1] - g.lam[i]
        hh = -h if form == "data" else h
        p1, p2, p3 = phis(hh)
        m0 = hist[-1][1]
        out = (A_t / A_s) * x - (B_t * p1) * m0
        if k >= 2:
            lam1, m1 = hist[-2]
            r0 = (g.lam[i] - lam1) / h
            d1_0 = (m0 - m1) / r0
            if k == 2:
                out = out - (B_t * (0.5 * p1 if solver_type == "midpoint" else p2)) * d1_0
            else:
                lam2, m2 = hist[-3]
                r1 = (lam1 - lam2) / h
                d1_1 = (m1 - m2) / r1
                d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 m'' / 2
                # the h^2 m''/2 term of the exact integral has weight -2 phi_3; the official code and
                # diffusers weight D2 by -phi_3, which leaves the method second order
                # (`diffusers_3m=True` reproduces them)
                w2 = p3 if diffusers_3m else 2.0 * p3
                out = out - (B_t * p2) * d1 - (B_t * w2) * d2
        x = out
    record_nfe(denoiser, model)
    return x


def fast_orders(steps: int, order: int) -> list[int]:
    """The official DPM-Solver "fast" order pattern spending exactly `steps` model calls."""
    if order not in (1, 2, 3):
        raise ValueError(f"singlestep DPM-Solver has orders 1, 2, 3; got {order}")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if order == 1:
        return [1] * steps
    if order == 2:
        return [2] * (steps // 2) + [1] * (steps % 2)
    k = steps // 3
    if steps % 3 == 0:
        return [3] * (k - 1) + [2, 1] if k >= 1 else []
    return [3] * k + ([1] if steps % 3 == 1 else [2])


def _single_update(model: Model, process, x: Tensor, s: float, t: float, m_s: Tensor, k: int, form: str,
                   solver_type: str, mids: tuple = ()):
    """One singlestep update of order k from time s to t, given m_s = m(x, s).

    Intermediate times: `mids` (times inside (t, s)) or, when empty, the lambda points at
    r1 = 1/2 (order 2) or r1 = 1/3, r2 = 2/3 (order 3). Returns (x_t, intermediate m's); for order 3
    the list ends with the second-order solution that shares the call at r1 (DPM-Solver-23).
    """
    ts = torch.tensor([s, t], dtype=torch.float64)
    lam_s, lam_t = (float(v) for v in process.lambda_(ts))
    h = lam_t - lam_s
    sign = -1.0 if form == "data" else 1.0

    def coefs(u):
        a, sg = (float(v) for v in process.alpha_sigma(torch.tensor(u, dtype=torch.float64)))
        return (sg, a, a, sg) if form == "data" else (a, sg, a, sg)  # A, B, alpha, sigma

    A_s = coefs(s)[0]
    A_t, B_t, _, sg_t = coefs(t)
    p1, p2, _ = phis(sign * h)
    if sg_t == 0.0:  # exact last step to sigma = 0
        _, _, a_s, s_s = coefs(s)
        x0 = m_s if form == "data" else (x - s_s * m_s) / a_s
        return coefs(t)[2] * x0, []
    if k == 1:
        return (A_t / A_s) * x - (B_t * p1) * m_s, []
    if mids:
        r = [(float(process.lambda_(torch.tensor(u, dtype=torch.float64))) - lam_s) / h for u in mids]
        t_mid = list(mids)
    else:
        r = [0.5] if k == 2 else [1.0 / 3.0, 2.0 / 3.0]
        t_mid = [float(process.t_of_lambda(torch.tensor(lam_s + ri * h, dtype=torch.float64))) for ri in r]
    A1, B1, a1, s1 = coefs(t_mid[0])
    u1 = (A1 / A_s) * x - (B1 * phis(sign * r[0] * h)[0]) * m_s
    m1 = model.data(u1, t_mid[0], a1, s1, form)
    if k == 2:
        d = m1 - m_s
        if solver_type == "midpoint":
            return (A_t / A_s) * x - (B_t * p1) * m_s - (B_t * p1 * 0.5 / r[0]) * d, [m1]
        return (A_t / A_s) * x - (B_t * p1) * m_s - (B_t * p2 / r[0]) * d, [m1]
    # third order (DPM-Solver-3, Algorithm 2 of the paper, "dpmsolver" variant)
    A2, B2, a2, s2 = coefs(t_mid[1])
    q1, q2, _ = phis(sign * r[1] * h)
    u2 = (A2 / A_s) * x - (B2 * q1) * m_s - (B2 * q2 * r[1] / r[0]) * (m1 - m_s)
    m2 = model.data(u2, t_mid[1], a2, s2, form)
    x_t = (A_t / A_s) * x - (B_t * p1) * m_s - (B_t * p2 / r[1]) * (m2 - m_s)
    # the second-order (midpoint) solution from the same call at r1, the adaptive solver's lower order
    x_low = (A_t / A_s) * x - (B_t * p1) * m_s - (B_t * p1 * 0.5 / r[0]) * (m1 - m_s)
    return x_t, [m1, m2, x_low]


def dpm_singlestep(denoiser, x: Tensor, ts, *, orders=None, order: int = 3, form: str = "noise",
                   solver_type: str = "midpoint", cond: dict | None = None, callback=None,
                   progress: bool = False, afs: bool = False) -> Tensor:
    """Singlestep DPM-Solver (form="noise") / DPM-Solver++ 2S, 3S (form="data").

    `ts` is the grid of all model-call times (len = sum(orders) + 1): a step of order k goes from
    ts[p] to ts[p + k], taking its intermediate points at ts[p + 1 .. p + k - 1] (diffusers'
    DPMSolverSinglestepScheduler convention; on a logSNR-uniform grid these are the paper's
    r1 = 1/2 and r1, r2 = 1/3, 2/3). `orders` defaults to `fast_orders(len(ts) - 1, order)`, so the
    solve costs exactly len(ts) - 1 model calls.
    """
    _check_form(form, solver_type)
    process = denoiser.process
    g = Grid.of(process, ts)
    n = len(g) - 1
    orders = list(orders) if orders is not None else fast_orders(n, order)
    if g.sigma[-1] == 0.0 and orders and orders[-1] > 1:
        # a step to sigma = 0 is first order (diffusers' final_sigmas_type="zero" does the same)
        orders = orders[:-1] + [orders[-1] - 1, 1]
    if sum(orders) != n or any(o not in (1, 2, 3) for o in orders):
        raise ValueError(f"orders {orders} must be in 1..3 and sum to the {n} steps of the grid")
    model = Model(denoiser, process, cond, afs)
    p = 0
    for j in steps_iter(len(orders), progress, f"DPM-Solver{'++' if form == 'data' else ''} singlestep"):
        k = orders[j]
        s, t = float(g.ts[p]), float(g.ts[p + k])
        x0 = model.x0(x, g.ts[p])
        if callback is not None:
            callback(j, g.ts[p], x, x0)
        m_s = x0 if form == "data" else (x - g.alpha[p] * x0) / g.sigma[p]
        mids = tuple(float(v) for v in g.ts[p + 1:p + k])
        x, _ = _single_update(model, process, x, s, t, m_s, k, form, solver_type, mids)
        p += k
    record_nfe(denoiser, model)
    return x


def dpm_adaptive(denoiser, x: Tensor, t_start: float, t_end: float, *, order: int = 3, form: str = "noise",
                 atol: float = 0.0078, rtol: float = 0.05, h_init: float = 0.05, theta: float = 0.9,
                 t_err: float = 1e-5, max_nfe: int = 10_000, cond: dict | None = None, callback=None) -> Tensor:
    """Adaptive step size DPM-Solver-12 / -23 (DPM-Solver Algorithm 4), order 2 or 3.

    Each trial step from s (lambda_s) to lambda_s + h runs the lower-order solver and the
    higher-order one sharing their model calls, accepts when the scaled RMS difference
    E = ||x_high - x_low|| / max(atol, rtol max(|x_low|, |x_prev|)) <= 1, and sets
    h <- theta h E^(-1/order). Defaults are the official ones (atol = 0.0078 for data in [-1, 1]).
    The model calls used are returned in `denoiser.last_nfe` (and count rejected trials).
    """
    if order not in (2, 3):
        raise ValueError(f"adaptive DPM-Solver has orders 2 and 3; got {order}")
    _check_form(form, "midpoint")
    process = denoiser.process
    model = Model(denoiser, process, cond)
    s = float(t_start)
    lam_s = float(process.lambda_(s))
    lam_0 = float(process.lambda_(t_end))
    h = h_init
    x_prev = x
    while abs(s - t_end) > t_err:
        if model.nfe >= max_nfe:
            raise RuntimeError(f"adaptive DPM-Solver used {model.nfe} model calls without reaching t_end")
        t = float(process.t_of_lambda(torch.tensor(lam_s + h, dtype=torch.float64)))
        a_s, s_s = (float(v) for v in process.alpha_sigma(torch.tensor(s, dtype=torch.float64)))
        x0 = model.x0(x, s)
        m_s = x0 if form == "data" else (x - a_s * x0) / s_s
        if order == 2:
            x_low, _ = _single_update(model, process, x, s, t, m_s, 1, form, "midpoint")
            x_high, _ = _single_update(model, process, x, s, t, m_s, 2, form, "midpoint")
        else:
            x_high, extra = _single_update(model, process, x, s, t, m_s, 3, form, "midpoint")
            x_low = extra[-1]
        delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        err = ((x_high - x_low) / delta).pow(2).flatten(1).mean(1).sqrt().max().item()
        if err <= 1.0:
            if callback is not None:
                callback(model.nfe, s, x, x0)
            x, x_prev, s, lam_s = x_high, x_low, t, float(process.lambda_(t))
        h = min(theta * h * max(err, 1e-12) ** (-1.0 / order), lam_0 - lam_s)
    record_nfe(denoiser, model)
    return x


def sde_dpmpp_2m(denoiser, x: Tensor, ts, *, generator: torch.Generator | None = None, solver_type: str = "midpoint",
                 lower_order_final=True, cond: dict | None = None, callback=None, progress: bool = False,
                 afs: bool = False) -> Tensor:
    """SDE-DPM-Solver++(2M) (DPM-Solver++ section 5, diffusers' sde-dpmsolver++):

        x_t = (sigma_t/sigma_s) e^-h x_s + alpha_t (1 - e^-2h) D_s [+ second-order term]
              + sigma_t sqrt(1 - e^-2h) z,   z ~ N(0, I) from `generator`.
    """
    _check_form("data", solver_type)
    process = denoiser.process
    g = Grid.of(process, ts)
    model = Model(denoiser, process, cond, afs)
    n = len(g) - 1
    prev = None
    for i in steps_iter(n, progress, "SDE-DPM-Solver++ 2M"):
        x0 = model.x0(x, g.ts[i])
        if callback is not None:
            callback(i, g.ts[i], x, x0)
        if g.sigma[i + 1] == 0.0:
            x = g.alpha[i + 1] * x0
            continue
        h = g.lam[i + 1] - g.lam[i]
        em = -math.expm1(-2.0 * h)  # 1 - e^-2h
        out = (g.sigma[i + 1] / g.sigma[i] * math.exp(-h)) * x + (g.alpha[i + 1] * em) * x0
        k = min(final_order(2, i, n, lower_order_final), 1 if prev is None else 2)
        if k == 2:
            r0 = (g.lam[i] - prev[0]) / h
            d1 = (x0 - prev[1]) / r0
            coef = 0.5 * em if solver_type == "midpoint" else 1.0 - em / (2.0 * h)
            out = out + (g.alpha[i + 1] * coef) * d1
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        x = out + (g.sigma[i + 1] * math.sqrt(em)) * z
        prev = (g.lam[i], x0)
    record_nfe(denoiser, model)
    return x
