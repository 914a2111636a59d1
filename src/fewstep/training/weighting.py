"""Loss weightings w(t): small callables multiplying the per-sample MSE of the network's prediction.

    w = make_weighting("min-snr", process, prediction="eps", gamma=5)
    loss = w(t) * ((pred - target) ** 2).mean(dims)

A weighting defined for one parametrisation carries over to every prediction type through the
x0-space loss: with x0_hat = a + c(t) pred (every prediction in predictions.py is affine in the
network output), ||x0_hat - x0||^2 = c(t)^2 ||pred - target||^2. So a weighting given on the
x0 loss, w_x0(t), becomes w_x0(t) c(t)^2 on the loss of prediction type P (`x0_gain`). For eps,
c^2 = 1/SNR; for v, c^2 = 1/(SNR + 1); for x0, c^2 = 1 (SNR = alpha^2 / sigma^2 = exp(2 lambda)).

Weightings (`WEIGHTINGS`):

* "none": w = 1 on the prediction's own MSE.
* "speed": SpeeD change-aware weighting (Wang et al. 2024, arXiv 2405.17403, Sec. 3.3), on the
  prediction's own MSE (the paper's eps loss): g(t) = d(1 - abar)/dt on the grid (np.gradient),
  w = (1 - lam) + (2 lam - 1) (g - min g) / (max g - min g) for grid index n < tau (min / max over
  n < tau), w = 1 for n >= tau; lam in [0.5, 1] (official 0.6). On continuous processes g is
  taken on the sampler's grid of 1000 cells of [t_min, t_max] with 1 - abar = sigma^2 /
  (alpha^2 + sigma^2) (= 1 - alpha^2 for VP), so "speed" is defined on every process.
* "min-snr": Min-SNR-gamma (Hang et al. 2023): w_x0 = min(SNR, gamma); i.e. min(SNR, g)/SNR for
  eps, min(SNR, g) for x0, min(SNR, g)/(SNR + 1) for v.
* "p2": perception-prioritised weighting (Choi et al. 2022): w_eps = 1 / (k + SNR)^gamma on the eps
  loss, i.e. w_x0 = SNR / (k + SNR)^gamma.
* "edm": EDM's lambda(s) = (s^2 + sd^2) / (s sd)^2 on the x0 loss (Karras et al. 2022, Table 1),
  s = sigma/alpha; on the "edm" (preconditioned F) prediction this is exactly 1.

`LearnedWeighting` is EDM2's learned uncertainty (Karras et al. 2024, Sec. 5 / eq. 22):
L = w(t) MSE / exp(u(t)) + u(t) with u a small network of the noise level; it is an `nn.Module`
whose parameters are trained along with the model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from ..predictions import _check_kind, to_x0
from ..processes import Process
from .timesteps import TimeGrid, _speed_tau

__all__ = ["Weighting", "NoWeighting", "SpeeDWeighting", "MinSNR", "P2", "EDMWeighting", "LearnedWeighting",
           "WEIGHTINGS", "make_weighting", "x0_gain", "snr"]


def _time(t) -> Tensor:
    t = torch.as_tensor(t)
    return t if t.dtype == torch.float64 else t.to(torch.float64)


def snr(process: Process, t) -> Tensor:
    """SNR(t) = alpha^2 / sigma^2 = exp(2 lambda(t))."""
    return torch.exp(2.0 * process.lambda_(_time(t)))


def x0_gain(process: Process, prediction: str, t, sigma_data: float = 0.5) -> Tensor:
    """c(t)^2 with c = d x0_hat / d pred for the prediction type: the x0-space MSE equals
    c^2 times the prediction's MSE (found from `to_x0`, which is affine in pred)."""
    _check_kind(prediction)
    t = _time(t).reshape(-1)
    x = torch.zeros(t.shape[0], 1, dtype=torch.float64, device=t.device)
    c = to_x0(torch.ones_like(x), prediction, x, t, process, sigma_data) - to_x0(x, prediction, x, t, process,
                                                                                 sigma_data)
    return (c**2).reshape(-1)


class Weighting:
    """Base class: `w(t) -> [B] float64` weights on the per-sample MSE of the prediction.

    `weighted(mse, t)` returns the weighted per-sample loss (learned weightings change its form).
    """

    name = "base"

    def __call__(self, t) -> Tensor:
        raise NotImplementedError

    def weighted(self, mse: Tensor, t) -> Tensor:
        """The weighted per-sample loss w(t) * mse."""
        return self(t).to(device=mse.device, dtype=mse.dtype) * mse

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NoWeighting(Weighting):
    """w = 1 (the "simple" loss of DDPM for eps-prediction)."""

    name = "none"

    def __init__(self, process: Process | None = None, prediction: str = "eps", sigma_data: float = 0.5):
        pass

    def __call__(self, t):
        return torch.ones_like(_time(t))


class _X0Weighting(Weighting):
    """A weighting defined on the x0-space loss, carried to the prediction type by `x0_gain`."""

    def __init__(self, process: Process, prediction: str = "eps", sigma_data: float = 0.5):
        _check_kind(prediction)
        self.process, self.prediction, self.sigma_data = process, prediction, float(sigma_data)

    def x0_weight(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, t):
        t = _time(t)
        return self.x0_weight(t) * x0_gain(self.process, self.prediction, t, self.sigma_data).reshape(t.shape)


def _positive(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{what} must be a positive number, got {value!r}")
    return float(value)


class MinSNR(_X0Weighting):
    """Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
    Strategy", eq. 8): w_x0 = min(SNR, gamma); eps: min(SNR, g)/SNR; v: min(SNR, g)/(SNR + 1)."""

    name = "min-snr"

    def __init__(self, process: Process, prediction: str = "eps", gamma: float = 5.0, sigma_data: float = 0.5):
        super().__init__(process, prediction, sigma_data)
        self.gamma = _positive(gamma, "min-snr gamma")

    def x0_weight(self, t):
        return snr(self.process, t).clamp(max=self.gamma)

    def __repr__(self):
        return f"MinSNR(gamma={self.gamma}, prediction={self.prediction!r})"


class P2(_X0Weighting):
    """P2 weighting (Choi et al. 2022, "Perception Prioritized Training of Diffusion Models", eq. 8):
    lambda'_t = 1 / (k + SNR)^gamma on the eps loss, i.e. w_x0 = SNR / (k + SNR)^gamma."""

    name = "p2"

    def __init__(self, process: Process, prediction: str = "eps", k: float = 1.0, gamma: float = 1.0,
                 sigma_data: float = 0.5):
        super().__init__(process, prediction, sigma_data)
        self.k = _positive(k, "p2 k")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0 or not math.isfinite(gamma):
            raise ValueError(f"p2 gamma must be a number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def x0_weight(self, t):
        s = snr(self.process, t)
        return s / (self.k + s) ** self.gamma

    def __call__(self, t):
        t = _time(t)
        if self.prediction == "eps":  # exact form, no SNR * (1/SNR) round trip
            return 1.0 / (self.k + snr(self.process, t)) ** self.gamma
        return super().__call__(t)

    def __repr__(self):
        return f"P2(k={self.k}, gamma={self.gamma}, prediction={self.prediction!r})"


class EDMWeighting(_X0Weighting):
    """EDM (Karras et al. 2022, Table 1): lambda(s) = (s^2 + sd^2) / (s sd)^2 on the x0 loss,
    with s = sigma/alpha the equivalent VE noise level and sd = sigma_data."""

    name = "edm"

    def __init__(self, process: Process, prediction: str = "eps", sigma_data: float = 0.5):
        super().__init__(process, prediction, _positive(sigma_data, "sigma_data"))

    def x0_weight(self, t):
        s2 = torch.exp(-2.0 * self.process.lambda_(t))
        sd2 = self.sigma_data**2
        return (s2 + sd2) / (s2 * sd2)

    def __repr__(self):
        return f"EDMWeighting(sigma_data={self.sigma_data}, prediction={self.prediction!r})"


class SpeeDWeighting(Weighting):
    """SpeeD change-aware weighting (Wang et al. 2024, arXiv 2405.17403, Sec. 3.3).

    On the grid of the SpeeD sampler (see timesteps.TimeGrid): g_n = np.gradient(1 - abar)_n,
    w_n = (1 - lam) + (2 lam - 1) (g_n - min g) / (max g - min g) for n < tau (extrema over n < tau)
    and w_n = 1 for n >= tau; w(t) = w at the grid index of t. lam must lie in [0.5, 1] (0.5: flat
    0.5 below tau; 1: the normalised increment itself); the official value is 0.6 (never the
    code's class default 5, which gives negative weights). For continuous processes 1 - abar is
    sigma^2 / (alpha^2 + sigma^2) on 1000 cells of [t_min, t_max]; tau is a grid index (700).
    """

    name = "speed"

    def __init__(self, process: Process, prediction: str = "eps", lam: float = 0.6, tau: int | None = None,
                 num_steps: int | None = None, discrete: bool | None = None, sigma_data: float = 0.5):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.5 <= lam <= 1.0:
            raise ValueError(f"SpeeD lam must lie in [0.5, 1] (official 0.6), got {lam!r}")
        self.process, self.lam = process, float(lam)
        self.grid = TimeGrid(process, num_steps, discrete)
        self.tau = _speed_tau(tau, self.grid.N)
        g = np.gradient(self.grid.noise_fraction())
        head = g[: self.tau]
        span = head.max() - head.min()
        norm = (head - head.min()) / span if span > 0 else np.zeros_like(head)
        w = np.ones(self.grid.N)
        w[: self.tau] = (1.0 - self.lam) + (2.0 * self.lam - 1.0) * norm
        self.increment = g
        self.table = torch.from_numpy(w)

    def __call__(self, t):
        t = _time(t)
        return self.table.to(t.device)[self.grid.index(t).to(t.device)]

    def __repr__(self):
        return f"SpeeDWeighting(lam={self.lam}, tau={self.tau}, N={self.grid.N})"


class LearnedWeighting(nn.Module):
    """EDM2's learned uncertainty weighting (Karras et al. 2024, "Analyzing and Improving the
    Training Dynamics of Diffusion Models", Sec. 5 and App. B.2): u(t) is a small network of the
    noise level and the per-sample loss becomes  base_w(t) MSE / exp(u(t)) + u(t).

    u's input is c = ln(s) / 4 with s = sigma/alpha = exp(-lambda) (EDM2's c_noise), expanded into
    fixed sinusoidal features (a deterministic log-spaced frequency ladder, so the module has no
    random buffers) followed by Linear -> SiLU -> Linear; the last layer starts at zero (u = 0).
    """

    name = "learned"

    def __init__(self, process: Process, base: Weighting | None = None, features: int = 16, hidden: int = 32):
        super().__init__()
        if features < 2 or features % 2 or hidden < 1:
            raise ValueError(f"learned weighting needs an even features >= 2 and hidden >= 1, got {features}, {hidden}")
        self.process = process
        self.base = base if base is not None else NoWeighting()
        self.register_buffer("freqs", torch.logspace(-1, 1.5, features // 2), persistent=False)
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def u(self, t) -> Tensor:
        """The learned log-variance u(t), [B]."""
        t = _time(t)
        c = (-self.process.lambda_(t) / 4.0).to(self.freqs.device, torch.float32)
        arg = c[:, None] * self.freqs[None, :]
        dtype = self.net[0].weight.dtype
        return self.net(torch.cat([arg.cos(), arg.sin()], dim=1).to(dtype)).reshape(-1).float()

    def forward(self, mse: Tensor, t) -> Tensor:
        """Per-sample loss base_w MSE / exp(u) + u."""
        u = self.u(t).to(mse.device)
        return self.base.weighted(mse, t) / torch.exp(u) + u

    def weighted(self, mse: Tensor, t) -> Tensor:
        return self(mse, t)

    def extra_repr(self) -> str:
        return f"base={self.base!r}"


WEIGHTINGS = {
    "none": NoWeighting,
    "speed": SpeeDWeighting,
    "min-snr": MinSNR,
    "p2": P2,
    "edm": EDMWeighting,
}
_ALIASES = {"min_snr": "min-snr", "minsnr": "min-snr", "uniform": "none", "simple": "none"}


def weighting_class(name: str):
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; known: {', '.join(WEIGHTINGS)} "
                         "(plus learned=true for EDM2's learned uncertainty on top)")
    return WEIGHTINGS[key]


def make_weighting(name: str, process: Process, prediction: str = "eps", sigma_data: float = 0.5,
                   **kwargs) -> Weighting:
    """A weighting by name (see `WEIGHTINGS`), e.g. make_weighting("p2", process, "eps", gamma=0.5)."""
    from ._util import check_kwargs

    cls = weighting_class(name)
    check_kwargs(cls, kwargs, f"weighting {cls.name!r}", skip=("process", "prediction", "sigma_data"))
    return cls(process, prediction=prediction, sigma_data=sigma_data, **kwargs)
