"""Consistency sampling (sCM Sec. 3 / REFERENCE sec. 3 "Sampling"; Song et al. 2023, Alg. 1).

One step: x0 = f(x_T, t_max) with x_T = sd z (z ~ N(0, I)), t_max = arctan(80 / sd) (1.56454 for
sd = 0.5). Each further step re-noises the estimate to the next time and maps it back:

    x = cos(t_i) x0 + sin(t_i) sd z_i,   x0 = f(x, t_i)          (t_mid = 1.1 for two steps)

`consistency(denoiser, x, ts, ...)` is the solver (the signature of fewstep's other solvers: a
denoiser D(x, t) -> x0 on any process, a state at ts[0], a decreasing time grid). For a TrigFlow
student D = f; on another process the re-noising uses that process's alpha, sigma (the same
operation at equal SNR). `consistency_sample` is the student-facing entry point.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..predictions import Denoiser, wrap
from ..processes import Process, TrigFlow

__all__ = ["consistency", "consistency_sample", "consistency_times", "custom_times", "DEFAULT_T_MID"]

DEFAULT_T_MID = 1.1


def _check_t_mid(t_mid: float) -> None:
    if not (0.0 < t_mid < math.pi / 2):
        raise ValueError(f"t_mid must lie in (0, pi/2) (a TrigFlow time), got {t_mid}")


def consistency_times(steps: int, t_mid: float = DEFAULT_T_MID, t_max: float | None = None,
                      sigma_data: float = 0.5, process: Process | None = None) -> Tensor:
    """The grid [t_max, t_1, ..., t_{steps-1}, 0] (steps + 1 float64 times).

    TrigFlow times: steps = 1 -> [t_max, 0]; 2 -> [t_max, t_mid, 0]; n > 2 -> the intermediate times
    evenly spaced from t_mid towards 0, linspace(t_mid, 0, n)[:-1]. With `process` (not TrigFlow) the
    times are mapped to that process at equal SNR (t_max defaults to the process's own t_max).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    _check_t_mid(t_mid)
    trig = TrigFlow(sigma_data=sigma_data)
    own = process is None or isinstance(process, TrigFlow)
    if t_max is None:
        t_max = trig.t_max if own else float(trig.t_of_lambda(process.lambda_(process.t_max)))
    if not (t_mid < t_max < math.pi / 2) and steps > 1:
        raise ValueError(f"need t_mid < t_max < pi/2, got t_mid={t_mid}, t_max={t_max}")
    mids = torch.linspace(t_mid, 0.0, steps, dtype=torch.float64)[:-1] if steps > 1 else torch.zeros(0)
    ts = torch.cat([torch.tensor([t_max], dtype=torch.float64), mids.to(torch.float64),
                    torch.zeros(1, dtype=torch.float64)])
    if own:
        return ts
    lam = trig.lambda_(ts)
    return torch.cat([process.check(process.t_of_lambda(lam[:-1])), torch.zeros(1, dtype=torch.float64)])


def custom_times(times, process: Process, sigma_data: float = 0.5) -> Tensor:
    """A user's decreasing TrigFlow times [t_max, t_1, ...] as a grid on `process` (equal SNR), with
    the final 0 appended when missing."""
    ts = torch.as_tensor(times, dtype=torch.float64).flatten()
    if ts.numel() < 1:
        raise ValueError("the consistency time list is empty")
    if float(ts[-1]) != 0.0:
        ts = torch.cat([ts, torch.zeros(1, dtype=torch.float64)])
    if not isinstance(process, TrigFlow):
        lam = TrigFlow(sigma_data=sigma_data).lambda_(ts[:-1])
        ts = torch.cat([process.t_of_lambda(lam), torch.zeros(1, dtype=torch.float64)])
    return ts


def consistency(denoiser, x: Tensor, ts, *, generator: torch.Generator | None = None, cond: dict | None = None,
                step_cond: dict | None = None, callback=None, progress: bool = False) -> Tensor:
    """Multistep consistency sampling from x at ts[0] over the decreasing grid ts (one call per step).

    Returns the estimate at ts[-1]: x0 when ts[-1] = 0 (the usual case), else the re-noised state.
    Noise z_i ~ N(0, I) is drawn on the CPU from `generator` (reproducible across devices).
    step_cond: model inputs that change with the step, {key: [value at step 0, step 1, ...]} with one
    value per step, e.g. {"guidance": [1.0, 1.3]}: a guidance-conditioned student without guidance at
    the first step (from pure noise) and with it at the second.
    """
    from ..progress import progress as _progress

    process = denoiser.process
    ts = process.check(torch.as_tensor(ts, dtype=torch.float64).flatten())
    if ts.numel() < 2 or not torch.all(ts[1:] < ts[:-1]):
        raise ValueError("the time grid must hold at least 2 strictly decreasing times")
    cond = dict(cond or {})
    n = ts.numel() - 1
    step_cond = dict(step_cond or {})
    for key, vals in step_cond.items():
        if isinstance(vals, (str, bytes)) or not hasattr(vals, "__len__") or len(vals) != n:
            raise ValueError(f"step_cond[{key!r}] must hold one value per step ({n}), got {vals!r}")
        if key in cond:
            raise ValueError(f"{key!r} is given both in cond and in step_cond")
    for i in _progress(range(n), total=n, desc="consistency", enabled=progress):
        x0 = denoiser(x, ts[i], **cond, **{k: v[i] for k, v in step_cond.items()}).to(x.dtype)
        if callback is not None:
            callback(i, ts[i], x, x0)
        a, s = process.alpha_sigma(ts[i + 1])
        if float(s) == 0.0:
            x = float(a) * x0
            continue
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
        x = float(a) * x0 + float(s) * z
    try:
        denoiser.last_nfe = n
    except AttributeError:
        pass
    return x


def consistency_sample(student, noise: Tensor, sigma_data: float | None = None, *, steps: int = 1,
                       t_mid: float = DEFAULT_T_MID, times=None, t_max: float | None = None,
                       generator: torch.Generator | None = None, cond: dict | None = None, **model_kwargs) -> Tensor:
    """1-step, 2-step or multistep samples of a TrigFlow student from noise ~ N(0, I).

    student: a TrigFlowModel, a raw network predicting TrigFlow F (x_in = x_t / sd, t), or any
    fewstep Denoiser (sampled on its own process); sigma_data: sd (default: the student's, else 0.5);
    steps / t_mid: the default grid (see `consistency_times`); times: a custom decreasing list of
    TrigFlow times [t_max, t_1, ...] (0 is appended when missing; steps and t_mid are then ignored);
    cond / model_kwargs: conditioning such as class_labels= and guidance=.
    The start is x_T = sd * noise at t_max (REFERENCE sec. 3; on another process: noise times its
    prior std at t_max).
    """
    if sigma_data is None:
        sigma_data = getattr(student, "sigma_data", 0.5)
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be positive, got {sigma_data}")
    _check_t_mid(t_mid)
    if isinstance(student, Denoiser) or hasattr(student, "process"):
        D = student
    else:
        D = wrap(student, TrigFlow(sigma_data=sigma_data), "trigflow", sigma_data=sigma_data)
    process = D.process
    if times is not None:
        ts = custom_times(times, process, sigma_data)
    else:
        ts = consistency_times(steps, t_mid, t_max, sigma_data, process)
    t0 = float(ts[0])
    scale = sigma_data if isinstance(process, TrigFlow) else process.prior_std(t0)
    x = noise * scale
    return consistency(D, x, ts, generator=generator, cond={**(cond or {}), **model_kwargs})
