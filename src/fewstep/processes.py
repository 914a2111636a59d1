"""Diffusion processes: how data becomes noise.

Every process is x_t = alpha(t) x0 + sigma(t) eps with eps ~ N(0, I). The solvers work in the
half log-SNR lambda(t) = log(alpha(t) / sigma(t)) (DPM-Solver, Lu et al. 2022, eq. 3.1), so each
process gives alpha, sigma, lambda and the inverse t(lambda), its time domain and the time input
its networks take (`model_time`).

Time domain. Each process is defined on [0, T] with sigma(0) = 0 (clean data). Sampling runs from
`t_max` down to `t_min` (both with finite lambda) and may take a last step to t = 0 ("denoise to
zero"). Processes refuse times outside [0, T].

Processes are small frozen objects; all maths is done in the dtype of the time tensor given (use
float64 for the solver arithmetic, see DESIGN.md "precision policy").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Process",
    "VPDiscrete",
    "VPLinear",
    "VPCosine",
    "EDM",
    "VE",
    "Flow",
    "TrigFlow",
    "convert",
    "get_process",
]


def as_time(t, like: Tensor | None = None) -> Tensor:
    """A time as a float64 tensor (or in the dtype/device of `like` when given)."""
    if isinstance(t, Tensor):
        if not t.is_floating_point():
            t = t.to(torch.float64)
        return t if like is None else t.to(dtype=like.dtype, device=like.device)
    if like is None:
        return torch.tensor(t, dtype=torch.float64)
    return torch.tensor(t, dtype=like.dtype, device=like.device)


class Process:
    """Protocol of a diffusion process x_t = alpha(t) x0 + sigma(t) eps.

    Subclasses give `T`, `t_min`, `t_max`, `log_alpha_sigma(t)`, `t_of_lambda(lam)`,
    `alpha_sigma_dot(t)`, `model_time(t)` and `t_of_model_time(c)`.
    """

    name = "process"
    T: float
    t_min: float
    t_max: float

    # ----- to implement -----
    def log_alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(log alpha(t), log sigma(t)); log sigma(0) = -inf."""
        raise NotImplementedError

    def t_of_lambda(self, lam) -> Tensor:
        """Inverse of lambda(t); lambda = +inf gives t = 0."""
        raise NotImplementedError

    def alpha_sigma_dot(self, t) -> tuple[Tensor, Tensor]:
        """(d alpha / dt, d sigma / dt), used by flow-velocity predictions."""
        raise NotImplementedError

    def model_time(self, t) -> Tensor:
        """The time input the network is given at time t (its c_noise)."""
        return self.check(t)

    def t_of_model_time(self, c) -> Tensor:
        """Inverse of `model_time`."""
        return as_time(c)

    # ----- shared -----
    def check(self, t) -> Tensor:
        """t as a tensor, refusing values outside [0, T]."""
        t = as_time(t)
        tol = 1e-9 * max(1.0, self.T)
        if torch.isnan(t).any() or (t < -tol).any() or (t > self.T + tol).any():
            bad = t[torch.isnan(t) | (t < -tol) | (t > self.T + tol)].flatten()[0].item()
            raise ValueError(f"{self.name}: time t={bad:.6g} is outside its domain [0, {self.T:.6g}]")
        return t.clamp(0.0, self.T)

    def alpha(self, t) -> Tensor:
        return self.log_alpha_sigma(self.check(t))[0].exp()

    def sigma(self, t) -> Tensor:
        return self.log_alpha_sigma(self.check(t))[1].exp()

    def alpha_sigma(self, t) -> tuple[Tensor, Tensor]:
        la, ls = self.log_alpha_sigma(self.check(t))
        return la.exp(), ls.exp()

    def lambda_(self, t) -> Tensor:
        """Half log-SNR lambda(t) = log(alpha(t) / sigma(t))."""
        la, ls = self.log_alpha_sigma(self.check(t))
        return la - ls

    def snr_sigma(self, t) -> Tensor:
        """Noise-to-signal ratio sigma/alpha (EDM's sigma of the equivalent VE process)."""
        return torch.exp(-self.lambda_(t))

    def prior_std(self, t=None) -> float:
        """Std of x_t for unit-variance data, sqrt(alpha^2 + sigma^2) at t (default t_max): the scale
        of the N(0, I) noise samplers start from (1 for VP, about sigma_max for EDM)."""
        a, s = self.alpha_sigma(self.t_max if t is None else t)
        return float(torch.sqrt(a**2 + s**2))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items() if k != 'kind')})"

    def config(self) -> dict:
        """A JSON-able description; `get_process(config)` rebuilds the process."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Variance preserving: alpha^2 + sigma^2 = 1
# --------------------------------------------------------------------------------------------


class _VP(Process):
    """Variance-preserving processes: sigma = sqrt(1 - alpha^2); subclasses give log alpha."""

    def log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_of_log_alpha(self, log_alpha: Tensor) -> Tensor:
        raise NotImplementedError

    def d_log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def log_alpha_sigma(self, t):
        la = self.log_alpha(t).clamp(max=0.0)  # rounding at t = 0 must not give sigma = nan
        return la, 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_of_lambda(self, lam):
        lam = as_time(lam)
        # alpha^2 = 1 / (1 + exp(-2 lambda))  =>  log alpha = -0.5 log(1 + exp(-2 lambda))
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        return self.t_of_log_alpha(log_alpha)

    def alpha_sigma_dot(self, t):
        t = self.check(t)
        alpha, sigma = self.alpha_sigma(t)
        d_alpha = alpha * self.d_log_alpha(t)
        return d_alpha, -alpha * d_alpha / sigma


class VPDiscrete(_VP):
    """Discrete-time VP (DDPM) from betas or alphas_cumprod, seen in continuous time.

    As the official DPM-Solver's NoiseScheduleVP('discrete'): discrete step n = 0..N-1 sits at
    t_n = (n + 1) / N, and log alpha(t) = 0.5 log(alphas_cumprod) is interpolated linearly in t
    between those points; we add the point (t = 0, log alpha = 0) so that t = 0 is clean data.
    The network is given the (fractional) discrete index n = t N - 1.
    """

    name = "vp-discrete"

    def __init__(self, betas=None, alphas_cumprod=None):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("VPDiscrete: give exactly one of betas or alphas_cumprod")
        if betas is not None:
            b = torch.as_tensor(betas, dtype=torch.float64).flatten()
            if b.numel() < 2 or not torch.all((b > 0) & (b < 1)):
                raise ValueError("VPDiscrete: betas must be a sequence of at least 2 values in (0, 1)")
            if not torch.all(b[1:] >= b[:-1]):
                i = int(torch.nonzero(b[1:] < b[:-1])[0]) + 1
                raise ValueError(f"VPDiscrete: betas must be non-decreasing (beta[{i}] < beta[{i - 1}])")
            ac = torch.cumprod(1.0 - b, 0)
        else:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
            if ac.numel() < 2 or not torch.all((ac > 0) & (ac < 1)):
                raise ValueError("VPDiscrete: alphas_cumprod must hold at least 2 values in (0, 1) "
                                 "(zero terminal SNR has lambda = -inf and is not supported)")
            if not torch.all(ac[1:] < ac[:-1]):
                raise ValueError("VPDiscrete: alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = ac
        n = ac.numel()
        self._t = torch.arange(n + 1, dtype=torch.float64) / n
        self._la = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * ac.log()])

    # named schedules ---------------------------------------------------------------------
    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """DDPM's linear betas (Ho et al. 2020)."""
        return cls(betas=torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012):
        """Stable Diffusion's scaled_linear betas: linear in sqrt(beta)."""
        b = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
        return cls(betas=b)

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999):
        """iDDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas clipped at max_beta."""
        f = lambda u: math.cos((u / num_steps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        b = [min(1 - f(i + 1) / f(i), max_beta) for i in range(num_steps)]
        return cls(betas=b)

    # protocol ----------------------------------------------------------------------------
    @property
    def N(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def T(self) -> float:
        return 1.0

    @property
    def t_min(self) -> float:
        return 1.0 / self.N

    @property
    def t_max(self) -> float:
        return 1.0

    def _segment(self, t):
        grid = self._t.to(t.device, t.dtype)
        i = torch.clamp(torch.searchsorted(grid, t.contiguous(), right=True) - 1, 0, self.N - 1)
        return grid, i

    def log_alpha(self, t):
        grid, i = self._segment(t)
        la = self._la.to(t.device, t.dtype)
        w = (t - grid[i]) * self.N
        return la[i] + w * (la[i + 1] - la[i])

    def d_log_alpha(self, t):
        grid, i = self._segment(t)
        la = self._la.to(t.device, t.dtype)
        return (la[i + 1] - la[i]) * self.N

    def t_of_log_alpha(self, log_alpha):
        la = (-self._la).to(log_alpha.device, log_alpha.dtype)  # increasing
        x = -log_alpha
        i = torch.clamp(torch.searchsorted(la, x.contiguous(), right=True) - 1, 0, self.N - 1)
        w = (x - la[i]) / (la[i + 1] - la[i])
        t = (i.to(x.dtype) + w) / self.N
        return t.clamp(0.0, 1.0)

    def model_time(self, t):
        return self.check(t) * self.N - 1.0

    def t_of_model_time(self, c):
        return (as_time(c) + 1.0) / self.N

    def timestep_to_t(self, n) -> Tensor:
        """Integer DDPM timestep n (0..N-1, as diffusers numbers them) to continuous time."""
        return (as_time(n) + 1.0) / self.N

    def config(self):
        return {"kind": "vp-discrete", "alphas_cumprod": self.alphas_cumprod.tolist()}

    def __repr__(self):
        return f"VPDiscrete(N={self.N})"


@dataclass(frozen=True, repr=False)
class VPLinear(_VP):
    """Continuous VP with linear beta(t) = beta_0 + t (beta_1 - beta_0) (Song et al. 2021).

    log alpha(t) = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2. The network is given t * time_scale.
    """

    beta_0: float = 0.1
    beta_1: float = 20.0
    t_min: float = 1e-3
    time_scale: float = 1000.0
    name = "vp-linear"

    def __post_init__(self):
        if not (0 < self.beta_0 < self.beta_1):
            raise ValueError(f"VPLinear: need 0 < beta_0 < beta_1, got {self.beta_0}, {self.beta_1}")
        if not (0 < self.t_min < 1):
            raise ValueError(f"VPLinear: t_min must lie in (0, 1), got {self.t_min}")

    T = 1.0
    t_max = 1.0

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def d_log_alpha(self, t):
        return -0.5 * t * (self.beta_1 - self.beta_0) - 0.5 * self.beta_0

    def t_of_log_alpha(self, log_alpha):
        # solve (b1 - b0)/4 t^2 + b0/2 t + log_alpha = 0 for t >= 0 (stable form of the root)
        db = self.beta_1 - self.beta_0
        c = -4.0 * log_alpha  # = db t^2 + 2 b0 t
        return c / (torch.sqrt(self.beta_0**2 + db * c) + self.beta_0)

    def model_time(self, t):
        return self.check(t) * self.time_scale

    def t_of_model_time(self, c):
        return as_time(c) / self.time_scale

    def config(self):
        return {"kind": "vp-linear", "beta_0": self.beta_0, "beta_1": self.beta_1,
                "t_min": self.t_min, "time_scale": self.time_scale}


@dataclass(frozen=True, repr=False)
class VPCosine(_VP):
    """Continuous cosine VP (Nichol & Dhariwal 2021), as the official DPM-Solver defines it.

    log alpha(t) = log cos((t + s)/(1 + s) pi/2) - log cos(s/(1 + s) pi/2), on [0, T] with
    T = 0.9946 so that beta stays bounded (official cosine_t_max with cosine_beta_max = 999).
    """

    s: float = 0.008
    t_min: float = 1e-3
    time_scale: float = 1000.0
    name = "vp-cosine"

    def __post_init__(self):
        if not (0 <= self.s < 1):
            raise ValueError(f"VPCosine: s must lie in [0, 1), got {self.s}")

    @property
    def T(self) -> float:
        return math.atan(999.0 * (1.0 + self.s) / math.pi) * 2.0 * (1.0 + self.s) / math.pi - self.s

    @property
    def t_max(self) -> float:
        return self.T

    def _log_alpha_0(self):
        return math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))

    def log_alpha(self, t):
        return torch.log(torch.cos((t + self.s) / (1.0 + self.s) * math.pi / 2.0)) - self._log_alpha_0()

    def d_log_alpha(self, t):
        k = math.pi / (2.0 * (1.0 + self.s))
        return -k * torch.tan((t + self.s) * k)

    def t_of_log_alpha(self, log_alpha):
        u = torch.exp(log_alpha + self._log_alpha_0()).clamp(max=1.0)
        return (torch.arccos(u) * 2.0 * (1.0 + self.s) / math.pi - self.s).clamp(min=0.0)

    def model_time(self, t):
        return self.check(t) * self.time_scale

    def t_of_model_time(self, c):
        return as_time(c) / self.time_scale

    def config(self):
        return {"kind": "vp-cosine", "s": self.s, "t_min": self.t_min, "time_scale": self.time_scale}


# --------------------------------------------------------------------------------------------
# Variance exploding / EDM: alpha = 1, sigma = t
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class EDM(Process):
    """EDM / VE (Karras et al. 2022): alpha = 1, sigma(t) = t; the network is given sigma.

    sigma_data is the data standard deviation used by EDM preconditioning and TrigFlow conversion.
    """

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    name = "edm"

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(f"{self.name}: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not self.sigma_data > 0:
            raise ValueError(f"{self.name}: sigma_data must be positive, got {self.sigma_data}")

    @property
    def T(self) -> float:
        return self.sigma_max

    @property
    def t_min(self) -> float:
        return self.sigma_min

    @property
    def t_max(self) -> float:
        return self.sigma_max

    def log_alpha_sigma(self, t):
        return torch.zeros_like(t), torch.log(t)

    def t_of_lambda(self, lam):
        return torch.exp(-as_time(lam))

    def alpha_sigma_dot(self, t):
        t = self.check(t)
        return torch.zeros_like(t), torch.ones_like(t)

    def config(self):
        return {"kind": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data}


@dataclass(frozen=True, repr=False)
class VE(EDM):
    """Variance exploding SDE (Song et al. 2021, NCSN++ defaults sigma in [0.01, 50])."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    name = "ve"


# --------------------------------------------------------------------------------------------
# Rectified flow and TrigFlow
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Flow(Process):
    """Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022): alpha = 1 - t, sigma = t.

    At t = 1 the state is pure noise (lambda = -inf). Sampling starts at t_max where
    sigma/alpha = 80, the EDM sigma_max (t_max = 80/81), so that every solver, noise-form ones
    included, has a finite log-SNR; pass t_max closer to 1 to start nearer pure noise.
    The network is given t * time_scale.
    """

    t_min: float = 1e-3
    t_max: float = 80.0 / 81.0
    time_scale: float = 1.0
    name = "flow"
    T = 1.0

    def __post_init__(self):
        if not (0 < self.t_min < self.t_max < 1):
            raise ValueError(f"Flow: need 0 < t_min < t_max < 1, got {self.t_min}, {self.t_max}")

    def log_alpha_sigma(self, t):
        return torch.log1p(-t), torch.log(t)

    def t_of_lambda(self, lam):
        return torch.sigmoid(-as_time(lam))

    def alpha_sigma_dot(self, t):
        t = self.check(t)
        return -torch.ones_like(t), torch.ones_like(t)

    def model_time(self, t):
        return self.check(t) * self.time_scale

    def t_of_model_time(self, c):
        return as_time(c) / self.time_scale

    def config(self):
        return {"kind": "flow", "t_min": self.t_min, "t_max": self.t_max, "time_scale": self.time_scale}


@dataclass(frozen=True, repr=False)
class TrigFlow(Process):
    """TrigFlow (Lu & Song 2024, sCM): x_t = cos(t) x0 + sin(t) z, z ~ N(0, sigma_data^2 I).

    In eps form alpha = cos t, sigma = sigma_data sin t, t in [0, pi/2]. Sampling starts at
    t_max = arctan(80 / sigma_data) (1.56454 for sigma_data = 0.5) and the default t_min is
    arctan(0.002 / sigma_data), the EDM range. The network is given t (c_noise(t) = t).
    """

    sigma_data: float = 0.5
    t_min: float = None
    t_max: float = None
    name = "trigflow"
    T = math.pi / 2

    def __post_init__(self):
        if not self.sigma_data > 0:
            raise ValueError(f"TrigFlow: sigma_data must be positive, got {self.sigma_data}")
        if self.t_min is None:
            object.__setattr__(self, "t_min", math.atan(0.002 / self.sigma_data))
        if self.t_max is None:
            object.__setattr__(self, "t_max", math.atan(80.0 / self.sigma_data))
        if not (0 < self.t_min < self.t_max < math.pi / 2):
            raise ValueError(f"TrigFlow: need 0 < t_min < t_max < pi/2, got {self.t_min}, {self.t_max}")

    def log_alpha_sigma(self, t):
        return torch.log(torch.cos(t)), torch.log(torch.sin(t)) + math.log(self.sigma_data)

    def t_of_lambda(self, lam):
        return torch.atan(torch.exp(-as_time(lam)) / self.sigma_data)

    def alpha_sigma_dot(self, t):
        t = self.check(t)
        return -torch.sin(t), self.sigma_data * torch.cos(t)

    def config(self):
        return {"kind": "trigflow", "sigma_data": self.sigma_data, "t_min": self.t_min, "t_max": self.t_max}


# --------------------------------------------------------------------------------------------


def convert(x: Tensor, t, src: Process, dst: Process) -> tuple[Tensor, Tensor]:
    """Carry a state x at time t of `src` to the state of `dst` at equal SNR.

    Both hold the same (x0, eps): x' = (sigma_dst(t') / sigma_src(t)) x with t' = t_dst(lambda_src(t))
    (ratio of alphas where sigma = 0). t may be a scalar or one time per sample ([B]).
    Returns (x', t').
    """
    t = src.check(t)
    t_dst = dst.check(dst.t_of_lambda(src.lambda_(t)))
    a_s, s_s = src.alpha_sigma(t)
    a_d, s_d = dst.alpha_sigma(t_dst)
    k = torch.where(s_s > 0, s_d / torch.where(s_s > 0, s_s, 1.0), a_d / a_s)
    return x * _bcast(k, x), t_dst


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """Broadcast a scalar or per-sample [B] coefficient against a batch x of shape [B, ...]."""
    v = v.to(device=x.device, dtype=x.dtype)
    if v.ndim == 0:
        return v
    return v.reshape(v.shape[0], *([1] * (x.ndim - 1)))


_KINDS = {"vp-linear": VPLinear, "vp-cosine": VPCosine, "edm": EDM, "ve": VE, "flow": Flow, "trigflow": TrigFlow}


def get_process(spec) -> Process:
    """A process from a name ("vp", "vp-linear", "ddpm", "sd", "cosine", "edm", "ve", "flow",
    "trigflow"), a config dict (`Process.config()`), or a Process (returned as is)."""
    if isinstance(spec, Process):
        return spec
    if isinstance(spec, dict):
        cfg = dict(spec)
        kind = cfg.pop("kind", None)
        if kind == "vp-discrete":
            return VPDiscrete(alphas_cumprod=cfg["alphas_cumprod"])
        if kind not in _KINDS:
            raise ValueError(f"unknown process kind {kind!r}; known: vp-discrete, {', '.join(_KINDS)}")
        return _KINDS[kind](**cfg)
    named = {
        "vp": VPDiscrete.linear, "ddpm": VPDiscrete.linear, "vp-discrete": VPDiscrete.linear,
        "sd": VPDiscrete.scaled_linear, "scaled-linear": VPDiscrete.scaled_linear,
        "cosine": VPDiscrete.cosine, "vp-linear": VPLinear, "vp-cosine": VPCosine,
        "edm": EDM, "ve": VE, "flow": Flow, "trigflow": TrigFlow,
    }
    if spec not in named:
        raise ValueError(f"unknown process {spec!r}; known: {', '.join(named)}")
    return named[spec]()
