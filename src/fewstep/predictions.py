"""What a network predicts, and the one wrapper that turns any network into a denoiser.

With x_t = alpha x0 + sigma eps (see processes.py), a network may predict

- "eps":      the noise eps (DDPM);
- "x0":       the clean data x0;
- "v":        v = (alpha eps - sigma x0) / sqrt(alpha^2 + sigma^2) (Salimans & Ho 2022; for VP this is
              the usual alpha eps - sigma x0);
- "score":    grad log p_t(x) = -eps / sigma;
- "flow":     the velocity u = dx_t/dt = alpha'(t) x0 + sigma'(t) eps (rectified flow: eps - x0);
- "trigflow": TrigFlow's F (sCM, Lu & Song 2024): the state is carried to TrigFlow at equal SNR,
              (x', t'), the network sees (x' / sigma_d, t') and x0 = cos(t') x' - sin(t') sigma_d F;
- "edm":      EDM's preconditioned F (Karras et al. 2022, Table 1) in the equivalent VE coordinates
              x~ = x / alpha, s = sigma / alpha: the network sees (c_in x~, log(s) / 4) and
              x0 = c_skip x~ + c_out F.

`to_x0` / `from_x0` convert between x0 and each of these; `wrap` builds a `Denoiser` D(x, t) -> x0.
Solvers, trainers and metrics only use denoisers and never branch on the prediction type.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .processes import Process, TrigFlow, _bcast, convert

__all__ = ["PREDICTIONS", "to_x0", "from_x0", "x0_to_eps", "eps_to_x0", "Denoiser", "wrap", "network_input"]

PREDICTIONS = ("eps", "x0", "v", "score", "flow", "trigflow", "edm")


def _check_kind(kind: str) -> None:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {kind!r}; known: {', '.join(PREDICTIONS)}")


def _coefs(process: Process, t, x: Tensor):
    t = process.check(t)
    alpha, sigma = process.alpha_sigma(t)
    return _bcast(alpha, x), _bcast(sigma, x)


def x0_to_eps(x0: Tensor, x: Tensor, t, process: Process) -> Tensor:
    """eps = (x - alpha x0) / sigma."""
    alpha, sigma = _coefs(process, t, x)
    return (x - alpha * x0) / sigma


def eps_to_x0(eps: Tensor, x: Tensor, t, process: Process) -> Tensor:
    """x0 = (x - sigma eps) / alpha."""
    alpha, sigma = _coefs(process, t, x)
    return (x - sigma * eps) / alpha


def _trigflow_state(x: Tensor, t, process: Process, sigma_data: float):
    trig = TrigFlow(sigma_data=sigma_data)
    x_trig, t_trig = convert(x, t, process, trig)
    return x_trig, t_trig


def _edm_coefs(process: Process, t, x: Tensor, sigma_data: float):
    """EDM preconditioning (Karras et al. 2022, Table 1) at s = sigma/alpha, and 1/alpha."""
    alpha, sigma = _coefs(process, t, x)
    s = sigma / alpha
    sd2 = sigma_data**2
    c_skip = sd2 / (s**2 + sd2)
    c_out = s * sigma_data / torch.sqrt(s**2 + sd2)
    c_in = 1.0 / torch.sqrt(s**2 + sd2)
    return c_skip, c_out, c_in, 1.0 / alpha, s


def to_x0(pred: Tensor, kind: str, x: Tensor, t, process: Process, sigma_data: float = 0.5) -> Tensor:
    """The x0 estimate implied by a prediction `pred` of type `kind` at state x, time t."""
    _check_kind(kind)
    if kind == "x0":
        return pred
    if kind == "trigflow":
        x_trig, t_trig = _trigflow_state(x, t, process, sigma_data)
        return _bcast(torch.cos(t_trig), x) * x_trig - _bcast(torch.sin(t_trig), x) * sigma_data * pred
    if kind == "edm":
        c_skip, c_out, _, inv_alpha, _ = _edm_coefs(process, t, x, sigma_data)
        return c_skip * x * inv_alpha + c_out * pred
    alpha, sigma = _coefs(process, t, x)
    if kind == "eps":
        return (x - sigma * pred) / alpha
    if kind == "score":
        return (x + sigma**2 * pred) / alpha
    if kind == "v":
        r2 = alpha**2 + sigma**2
        return (alpha * x - sigma * torch.sqrt(r2) * pred) / r2
    # flow: x = a x0 + s eps, u = a' x0 + s' eps  =>  x0 = (s' x - s u) / (s' a - s a')
    da, ds = process.alpha_sigma_dot(t)
    da, ds = _bcast(da, x), _bcast(ds, x)
    return (ds * x - sigma * pred) / (ds * alpha - sigma * da)


def from_x0(x0: Tensor, kind: str, x: Tensor, t, process: Process, sigma_data: float = 0.5) -> Tensor:
    """The prediction of type `kind` that corresponds to x0 at state x, time t (training targets)."""
    _check_kind(kind)
    if kind == "x0":
        return x0
    if kind == "trigflow":
        x_trig, t_trig = _trigflow_state(x, t, process, sigma_data)
        return (_bcast(torch.cos(t_trig), x) * x_trig - x0) / (_bcast(torch.sin(t_trig), x) * sigma_data)
    if kind == "edm":
        c_skip, c_out, _, inv_alpha, _ = _edm_coefs(process, t, x, sigma_data)
        return (x0 - c_skip * x * inv_alpha) / c_out
    alpha, sigma = _coefs(process, t, x)
    eps = (x - alpha * x0) / sigma
    if kind == "eps":
        return eps
    if kind == "score":
        return -eps / sigma
    if kind == "v":
        return (alpha * eps - sigma * x0) / torch.sqrt(alpha**2 + sigma**2)
    da, ds = process.alpha_sigma_dot(t)
    return _bcast(da, x) * x0 + _bcast(ds, x) * eps


def network_input(x: Tensor, t, process: Process, kind: str, sigma_data: float = 0.5):
    """(network's x input, network's time input) for a prediction type at state x, time t.

    TrigFlow networks see (x' / sigma_d, t') in TrigFlow coordinates; EDM-preconditioned networks
    see (c_in x / alpha, log(sigma/alpha) / 4); all others see (x, process.model_time(t)).
    """
    if kind == "trigflow":
        x_trig, t_trig = _trigflow_state(x, t, process, sigma_data)
        return x_trig / sigma_data, t_trig
    if kind == "edm":
        _, _, c_in, inv_alpha, s = _edm_coefs(process, t, x, sigma_data)
        t_in = torch.log(process.snr_sigma(process.check(t))) / 4.0
        return c_in * x * inv_alpha, t_in
    return x, process.model_time(t)


class Denoiser:
    """D(x, t, **cond) -> x0 estimate for a network of any prediction type on any process.

    Parameters: `model(x_in, t_in, **cond)` the network; `process`; `prediction` one of PREDICTIONS;
    `sigma_data` for "trigflow" / "edm"; `model_dtype` casts the network's inputs (e.g. bfloat16)
    while the returned x0 stays in the dtype of x (the solver's precision).
    Call counts are kept in `.calls` (one per network forward; a batched CFG call counts once).
    """

    def __init__(self, model: Callable, process: Process, prediction: str = "eps", sigma_data: float = 0.5,
                 model_dtype: torch.dtype | None = None, model_kwargs: dict | None = None):
        _check_kind(prediction)
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.model = model
        self.process = process
        self.prediction = prediction
        self.sigma_data = sigma_data
        self.model_dtype = model_dtype
        self.model_kwargs = dict(model_kwargs or {})
        self.calls = 0

    def raw(self, x: Tensor, t, **cond) -> Tensor:
        """The network's own prediction (of type `self.prediction`) at (x, t)."""
        t = self.process.check(t).to(x.device)
        x_in, t_in = network_input(x, t, self.process, self.prediction, self.sigma_data)
        if t_in.ndim == 0:
            t_in = t_in.expand(x.shape[0])
        dtype = self.model_dtype or x.dtype
        kwargs = {**self.model_kwargs, **cond}
        self.calls += 1
        # the time input stays at least float32: bf16 would round timestep 999 to 1000
        t_dtype = torch.promote_types(dtype, torch.float32)
        out = self.model(x_in.to(dtype), t_in.to(t_dtype), **kwargs)
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}")
        return out.to(x.dtype)

    def __call__(self, x: Tensor, t, **cond) -> Tensor:
        t = self.process.check(t).to(x.device)
        return to_x0(self.raw(x, t, **cond), self.prediction, x, t, self.process, self.sigma_data)

    def eps(self, x: Tensor, t, **cond) -> Tensor:
        """The noise estimate eps = (x - alpha D(x, t)) / sigma."""
        return x0_to_eps(self(x, t, **cond), x, t, self.process)

    def __repr__(self):
        return f"Denoiser({self.prediction} on {self.process!r})"


def wrap(model: Callable, process: Process, prediction: str = "eps", **kwargs) -> Denoiser:
    """Turn a network into a denoiser returning x0; see `Denoiser` for the options."""
    return Denoiser(model, process, prediction, **kwargs)

