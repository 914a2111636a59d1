"""Samplers of training times t: small swappable callables.

Every sampler is bound to a process and returns *process times* t in [t_min, t_max] (float64):

    sampler = make_sampler("speed", process)          # SpeeD, k = 5, tau = 700 of 1000
    t = sampler(256, generator=g)                     # [256] times
    t, w = sampler.sample(256, generator=g)           # times and unbiasing weights (IDDPM; else 1)
    sampler.update(t, per_sample_losses)              # only the loss-aware sampler uses it

Discrete and continuous time. A `TimeGrid` of N points discretises [t_min, t_max]. For VPDiscrete
(discrete by default) the points are its own steps t_n = (n + 1) / N, n = 0..N-1
(`process.timestep_to_t`), so a sampled index n is exactly DDPM's timestep n. For continuous
processes (continuous by default) the grid is N = 1000 equal cells of [t_min, t_max]: grid-based
samplers (uniform, SpeeD, IDDPM) draw a cell and then a uniform point inside it, so their density
is piecewise constant in t and "uniform" is exactly U[t_min, t_max]. Density samplers
(logit-normal, log-normal) draw t directly; in discrete mode they are snapped onto the grid.

Samplers (`SAMPLERS`):

* "uniform": uniform over the grid (discrete) or over [t_min, t_max] (continuous).
* "speed": SpeeD asymmetric sampling (Wang et al. 2024, arXiv 2405.17403, Sec. 3.2):
  p(n) = k / (N + tau (k - 1)) for n < tau, 1 / (N + tau (k - 1)) for n >= tau, on the grid index
  n (tau = 700 of N = 1000, k = 5 as the official configs). For continuous processes tau is in
  units of the 1000-cell grid of t, i.e. the boundary is t_tau = t_min + tau / N (t_max - t_min).
  `dual=True` adds the official code's mirrored ("dual") sampling, which the paper does not
  describe: half of the batch (n // 2 + 1) is drawn from p, the rest is its mirror image around
  ms = argmax(gradient(sqrt(1 - abar)) < 1e-4) + 1 (n -> ms - n below ms, n - ms above; the
  threshold is 0.1 / N so that it is the official 1e-4 at N = 1000). Off by default.
* "logit-normal": t = t_min + sigmoid(m + s z) (t_max - t_min), z ~ N(0, 1) (Esser et al. 2024,
  SD3, Sec. 3.1; on Flow this is SD3's sampler up to Flow's [t_min, t_max] = [1e-3, 80/81]).
* "lognormal": EDM (Karras et al. 2022, Sec. 5): ln s ~ N(P_mean, P_std^2) for the equivalent VE
  noise level s = sigma/alpha, truncated to the process's [s(t_min), s(t_max)] (drawn by inverse
  CDF, so nothing is clipped onto the ends), then t = t(lambda = -ln s).
* "iddpm": loss-second-moment importance sampling (Nichol & Dhariwal 2021, Sec. 3.3): p_n is
  proportional to sqrt(E[L_n^2]) over the last `history` losses of grid cell n, mixed with
  `uniform_prob` of the uniform law; uniform until every cell has `history` losses. The returned
  weights 1 / (N p_n) make the weighted loss an unbiased estimate of the uniform-time loss.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..processes import Process, VPDiscrete

__all__ = ["TimeGrid", "TimestepSampler", "Uniform", "SpeeD", "LogitNormal", "LogNormal", "LossSecondMoment",
           "SAMPLERS", "make_sampler", "noise_fraction"]


def noise_fraction(process: Process, t) -> Tensor:
    """1 - abar(t) of the equivalent VP process: sigma^2 / (alpha^2 + sigma^2) = sigmoid(-2 lambda).

    Equals 1 - alpha(t)^2 = 1 - alphas_cumprod for VP processes and is defined for every process
    (EDM, Flow, TrigFlow), which is how SpeeD's increments are defined on non-VP processes.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.sigmoid(-2.0 * process.lambda_(t))


def _rand(n: int, generator: torch.Generator | None, device=None) -> Tensor:
    device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64)


def _randn(n: int, generator: torch.Generator | None, device=None) -> Tensor:
    device = generator.device if generator is not None else device
    return torch.randn(n, generator=generator, device=device, dtype=torch.float64)


def _check_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"number of times to sample must be a positive integer, got {n!r}")
    return int(n)


class TimeGrid:
    """N points (discrete) or N equal cells (continuous) covering a process's [t_min, t_max].

    num_steps defaults to process.N for VPDiscrete and 1000 otherwise; discrete defaults to
    isinstance(process, VPDiscrete). `points` are the grid times (discrete: the points themselves;
    continuous: the cell centres), `index(t)` the grid index of times t, `draw(index)` times for
    indices (continuous: uniform inside the cell).
    """

    def __init__(self, process: Process, num_steps: int | None = None, discrete: bool | None = None):
        is_vpd = isinstance(process, VPDiscrete)
        if num_steps is None:
            num_steps = process.N if is_vpd else 1000
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 2:
            raise ValueError(f"num_steps must be an integer >= 2, got {num_steps!r}")
        self.process = process
        self.N = int(num_steps)
        self.discrete = is_vpd if discrete is None else bool(discrete)
        self.t_min, self.t_max = float(process.t_min), float(process.t_max)
        if self.discrete:
            if is_vpd and self.N == process.N:
                points = process.timestep_to_t(torch.arange(self.N, dtype=torch.float64)).numpy()
            else:
                points = np.linspace(self.t_min, self.t_max, self.N)
        else:
            points = self.t_min + (np.arange(self.N) + 0.5) * self.h
        self.points = np.asarray(points, dtype=np.float64)
        self._points_t = torch.from_numpy(self.points)

    @property
    def h(self) -> float:
        """Cell width (continuous grid)."""
        return (self.t_max - self.t_min) / self.N

    def index(self, t) -> Tensor:
        """Grid index of each time: nearest point (discrete) or containing cell (continuous)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.discrete:
            i = torch.round((t - self.t_min) / (self.t_max - self.t_min) * (self.N - 1))
        else:
            i = torch.floor((t - self.t_min) / self.h)
        return i.clamp(0, self.N - 1).long()

    def draw(self, index: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Times for grid indices: the points (discrete) or uniform inside the cells (continuous)."""
        if self.discrete:
            return self._points_t.to(index.device)[index]
        u = _rand(index.numel(), generator, index.device).reshape(index.shape)
        return (self.t_min + (index.to(torch.float64) + u) * self.h).clamp(self.t_min, self.t_max)

    def noise_fraction(self) -> np.ndarray:
        """1 - abar at the grid points (see `noise_fraction`)."""
        return noise_fraction(self.process, self._points_t).numpy()

    def cell_edges(self) -> np.ndarray:
        """N + 1 edges of the continuous cells."""
        return np.linspace(self.t_min, self.t_max, self.N + 1)


class TimestepSampler:
    """Base class: `sampler(n, generator=None, device=None) -> t` ([n] float64 process times).

    `sample()` also returns per-sample unbiasing weights (ones except for importance sampling);
    `update(t, losses)` feeds back per-sample losses (no-op except for "iddpm"); `state_dict()` /
    `load_state_dict()` carry any state across checkpoints. When `generator` is given, all draws
    use it (and its device), which makes a run reproducible and shardable.
    """

    name = "base"
    needs_losses = False

    def __init__(self, process: Process, num_steps: int | None = None, discrete: bool | None = None):
        if not isinstance(process, Process):
            raise ValueError(f"{type(self).__name__}: process must be a fewstep Process, got {type(process).__name__}")
        self.process = process
        self.grid = TimeGrid(process, num_steps, discrete)

    @property
    def discrete(self) -> bool:
        return self.grid.discrete

    def sample(self, n: int, generator: torch.Generator | None = None, device=None) -> tuple[Tensor, Tensor]:
        t = self._draw(_check_count(n), generator, device)
        return t, torch.ones_like(t)

    def __call__(self, n: int, generator: torch.Generator | None = None, device=None) -> Tensor:
        return self.sample(n, generator, device)[0]

    def _draw(self, n: int, generator, device) -> Tensor:
        raise NotImplementedError

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Feed back per-sample losses at times t (used by loss-aware samplers only)."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"{self.name} sampler has no state, got keys {sorted(state)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.process!r}, N={self.grid.N}, discrete={self.discrete})"


class _GridSampler(TimestepSampler):
    """A sampler given by a probability vector over grid indices (or cells)."""

    def probs(self) -> np.ndarray:
        """Probability of each grid index / cell (sums to 1)."""
        raise NotImplementedError

    def _draw_index(self, n: int, generator, device) -> Tensor:
        cdf = torch.from_numpy(np.cumsum(self.probs()))
        u = _rand(n, generator, device)
        cdf = cdf.to(u.device)
        return torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(0, self.grid.N - 1)

    def _draw(self, n, generator, device):
        return self.grid.draw(self._draw_index(n, generator, device), generator)

    def pmf(self) -> np.ndarray:
        """Probability of each grid point (discrete) or cell (continuous)."""
        return self.probs()

    def cdf(self, t) -> np.ndarray:
        """CDF of the continuous sampler at times t (piecewise linear across cells)."""
        t = np.asarray(t, dtype=np.float64)
        p = self.probs()
        c = np.concatenate([[0.0], np.cumsum(p)])
        x = np.clip((t - self.grid.t_min) / self.grid.h, 0.0, self.grid.N)
        i = np.minimum(np.floor(x).astype(int), self.grid.N - 1)
        return c[i] + p[i] * (x - i)


class Uniform(_GridSampler):
    """Uniform times: DDPM's uniform timestep (discrete) or U[t_min, t_max] (continuous)."""

    name = "uniform"

    def probs(self):
        return np.full(self.grid.N, 1.0 / self.grid.N)


def _speed_tau(tau, N: int) -> int:
    if tau is None:
        return int(round(0.7 * N))
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.integer, np.floating)) or tau != int(tau):
        raise ValueError(f"SpeeD tau must be an integer grid index (e.g. 700 of 1000), got {tau!r}")
    if not 0 < int(tau) < N:
        raise ValueError(f"SpeeD tau must lie in 1..{N - 1} (a grid index of N={N}), got {tau}")
    return int(tau)


class SpeeD(_GridSampler):
    """SpeeD asymmetric timestep sampling (Wang et al. 2024, arXiv 2405.17403, Sec. 3.2).

    p(n) = k / (N + tau (k - 1)) for n < tau and 1 / (N + tau (k - 1)) for n >= tau, where n is
    the grid index (DDPM timestep for VPDiscrete; one of 1000 cells of [t_min, t_max] for
    continuous processes, so tau = 700 puts the boundary at 70% of the time range). Defaults are
    the official configs: k = 5, tau = 0.7 N (700 of 1000).

    dual: the official code's mirrored sampling (not in the paper; see the module docstring).
    """

    name = "speed"

    def __init__(self, process: Process, k: float = 5.0, tau: int | None = None, dual: bool = False,
                 num_steps: int | None = None, discrete: bool | None = None):
        super().__init__(process, num_steps, discrete)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k >= 1.0 or math.isinf(k):
            raise ValueError(f"SpeeD k must be a finite number >= 1, got {k!r}")
        self.k = float(k)
        self.tau = _speed_tau(tau, self.grid.N)
        self.dual = bool(dual)
        # mirror boundary of the official code: first index where d sqrt(1 - abar) < 1e-4 (N = 1000)
        slope = np.gradient(np.sqrt(self.grid.noise_fraction()))
        below = slope < 0.1 / self.grid.N
        self.mirror = int(min(np.argmax(below) + 1, self.grid.N - 1)) if below.any() else self.grid.N - 1

    def probs(self):
        N, k, tau = self.grid.N, self.k, self.tau
        p = np.full(N, 1.0 / (N + tau * (k - 1.0)))
        p[:tau] *= k
        return p

    def _mirror(self, t: Tensor) -> Tensor:
        g, ms = self.grid, self.mirror
        if g.discrete:
            i = g.index(t)
            return g.draw(torch.where(i < ms, ms - i, i - ms))
        v = (t - g.t_min) / g.h
        v = torch.where(v < ms, ms - v, v - ms)
        return (g.t_min + v * g.h).clamp(g.t_min, g.t_max)

    def _draw(self, n, generator, device):
        if not self.dual:
            return super()._draw(n, generator, device)
        t = super()._draw(n // 2 + 1, generator, device)
        return torch.cat([t, self._mirror(t)])[:n]

    def __repr__(self):
        return f"SpeeD(k={self.k}, tau={self.tau}, N={self.grid.N}, dual={self.dual}, discrete={self.discrete})"


class LogitNormal(TimestepSampler):
    """Logit-normal times (SD3, Esser et al. 2024): u = sigmoid(m + s z), t = t_min + u (t_max - t_min).

    In discrete mode u picks grid point floor(u N) (as diffusers' SD3 scripts do with indices).
    """

    name = "logit-normal"

    def __init__(self, process: Process, m: float = 0.0, s: float = 1.0, num_steps: int | None = None,
                 discrete: bool | None = None):
        super().__init__(process, num_steps, discrete)
        if not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
            raise ValueError(f"logit-normal s must be a positive number, got {s!r}")
        if not (isinstance(m, (int, float)) and math.isfinite(m)):
            raise ValueError(f"logit-normal m must be a finite number, got {m!r}")
        self.m, self.s = float(m), float(s)

    def _draw(self, n, generator, device):
        u = torch.sigmoid(self.m + self.s * _randn(n, generator, device))
        g = self.grid
        if g.discrete:
            return g.draw(torch.floor(u * g.N).clamp(0, g.N - 1).long())
        return (g.t_min + u * (g.t_max - g.t_min)).clamp(g.t_min, g.t_max)

    def _cdf_u(self, u):
        from scipy.special import logit, ndtr

        u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
        with np.errstate(divide="ignore"):
            return ndtr((logit(u) - self.m) / self.s)

    def cdf(self, t) -> np.ndarray:
        """CDF at times t (continuous mode)."""
        g = self.grid
        return self._cdf_u((np.asarray(t, dtype=np.float64) - g.t_min) / (g.t_max - g.t_min))

    def pmf(self) -> np.ndarray:
        """Probability of each grid point (discrete mode)."""
        return np.diff(self._cdf_u(np.arange(self.grid.N + 1) / self.grid.N))


class LogNormal(TimestepSampler):
    """EDM's log-normal noise levels (Karras et al. 2022, Sec. 5 "loss weighting and sampling").

    ln s ~ N(P_mean, P_std^2) with s = sigma(t)/alpha(t) the equivalent VE noise level, truncated
    to [s(t_min), s(t_max)] by inverse-CDF sampling, then t = t_of_lambda(-ln s). In discrete mode
    t is snapped to the nearest grid point.
    """

    name = "lognormal"

    def __init__(self, process: Process, P_mean: float = -1.2, P_std: float = 1.2, num_steps: int | None = None,
                 discrete: bool | None = None):
        super().__init__(process, num_steps, discrete)
        if not (isinstance(P_std, (int, float)) and P_std > 0 and math.isfinite(P_std)):
            raise ValueError(f"lognormal P_std must be a positive number, got {P_std!r}")
        if not (isinstance(P_mean, (int, float)) and math.isfinite(P_mean)):
            raise ValueError(f"lognormal P_mean must be a finite number, got {P_mean!r}")
        self.P_mean, self.P_std = float(P_mean), float(P_std)
        lam = process.lambda_(torch.tensor([self.grid.t_min, self.grid.t_max], dtype=torch.float64))
        self.log_s_range = (-float(lam[0]), -float(lam[1]))  # ln s is increasing in t
        z = (torch.tensor(self.log_s_range, dtype=torch.float64) - self.P_mean) / self.P_std
        self._u_range = (float(torch.special.ndtr(z[0])), float(torch.special.ndtr(z[1])))

    def _draw(self, n, generator, device):
        lo, hi = self._u_range
        u = lo + (hi - lo) * _rand(n, generator, device)
        log_s = self.P_mean + self.P_std * torch.special.ndtri(u)
        log_s = log_s.clamp(*self.log_s_range)
        t = self.process.t_of_lambda(-log_s).clamp(self.grid.t_min, self.grid.t_max)
        if self.grid.discrete:
            t = self.grid.draw(self.grid.index(t))
        return t

    def cdf_log_s(self, log_s) -> np.ndarray:
        """CDF of ln s (continuous mode) for the truncated normal."""
        from scipy.special import ndtr

        lo, hi = self._u_range
        x = np.clip(np.asarray(log_s, dtype=np.float64), *self.log_s_range)
        return (ndtr((x - self.P_mean) / self.P_std) - lo) / (hi - lo)

    def cdf(self, t) -> np.ndarray:
        lam = self.process.lambda_(torch.as_tensor(np.asarray(t, dtype=np.float64)))
        return self.cdf_log_s(-lam.numpy())


class LossSecondMoment(_GridSampler):
    """IDDPM importance sampling (Nichol & Dhariwal 2021, "Improved DDPM", Sec. 3.3, eq. 18).

    p_n proportional to sqrt(E[L_n^2]) over the last `history` losses seen in grid cell n, mixed
    as (1 - uniform_prob) p + uniform_prob / N; uniform until every cell holds `history` losses.
    `sample` returns weights 1 / (N p_n), so mean(w L) estimates the uniform-time loss unbiasedly.
    The loss history is state (checkpointed); call `update(t, losses)` after every batch with the
    *global* batch (all ranks) so that every rank keeps the same distribution.
    """

    name = "iddpm"
    needs_losses = True

    def __init__(self, process: Process, history: int = 10, uniform_prob: float = 1e-3,
                 num_steps: int | None = None, discrete: bool | None = None):
        super().__init__(process, num_steps, discrete)
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ValueError(f"iddpm history must be a positive integer, got {history!r}")
        if not (isinstance(uniform_prob, (int, float)) and 0.0 <= uniform_prob <= 1.0):
            raise ValueError(f"iddpm uniform_prob must lie in [0, 1], got {uniform_prob!r}")
        self.history, self.uniform_prob = history, float(uniform_prob)
        self._losses = torch.zeros(self.grid.N, history, dtype=torch.float64)
        self._counts = torch.zeros(self.grid.N, dtype=torch.int64)

    @property
    def warm(self) -> bool:
        return bool((self._counts >= self.history).all())

    def probs(self):
        N = self.grid.N
        if not self.warm:
            return np.full(N, 1.0 / N)
        w = torch.sqrt((self._losses**2).mean(dim=1)).numpy()
        if not np.isfinite(w).all() or w.sum() <= 0:
            return np.full(N, 1.0 / N)
        p = w / w.sum()
        return p * (1.0 - self.uniform_prob) + self.uniform_prob / N

    def sample(self, n, generator=None, device=None):
        n = _check_count(n)
        p = torch.from_numpy(self.probs())
        index = self._draw_index(n, generator, device)
        t = self.grid.draw(index, generator)
        return t, 1.0 / (self.grid.N * p.to(index.device)[index])

    def update(self, t, losses):
        index = self.grid.index(torch.as_tensor(t).detach().cpu()).tolist()
        values = torch.as_tensor(losses).detach().to("cpu", torch.float64).flatten().tolist()
        if len(index) != len(values):
            raise ValueError(f"iddpm update: {len(index)} times but {len(values)} losses")
        H = self.history
        for i, value in zip(index, values):
            if not math.isfinite(value):
                continue
            c = int(self._counts[i])
            if c < H:
                self._losses[i, c] = value
                self._counts[i] = c + 1
            else:
                self._losses[i, :-1] = self._losses[i, 1:].clone()
                self._losses[i, -1] = value

    def state_dict(self):
        return {"losses": self._losses.clone(), "counts": self._counts.clone()}

    def load_state_dict(self, state):
        if set(state) != {"losses", "counts"} or tuple(state["losses"].shape) != tuple(self._losses.shape):
            raise ValueError(f"iddpm sampler state does not match (N={self.grid.N}, history={self.history})")
        self._losses = state["losses"].to(torch.float64).clone()
        self._counts = state["counts"].to(torch.int64).clone()


SAMPLERS = {
    "uniform": Uniform,
    "speed": SpeeD,
    "logit-normal": LogitNormal,
    "lognormal": LogNormal,
    "iddpm": LossSecondMoment,
}
_SAMPLER_ALIASES = {"logitnormal": "logit-normal", "logit_normal": "logit-normal", "edm": "lognormal",
                    "log-normal": "lognormal", "loss-second-moment": "iddpm", "importance": "iddpm"}


def sampler_class(name: str) -> type[TimestepSampler]:
    key = _SAMPLER_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in SAMPLERS:
        raise ValueError(f"unknown timestep sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return SAMPLERS[key]


def make_sampler(name: str, process: Process, **kwargs) -> TimestepSampler:
    """A sampler by name (see `SAMPLERS`) with its keyword options, e.g. make_sampler("speed", p, k=2)."""
    from ._util import check_kwargs

    cls = sampler_class(name)
    check_kwargs(cls, kwargs, f"timestep sampler {cls.name!r}", skip=("process",))
    return cls(process, **kwargs)
