"""Exact oracle: a Gaussian mixture whose denoiser and probability-flow ODE are known exactly.

Data x0 ~ sum_k w_k N(mu_k, diag(v_k)) in d dimensions (isotropic: v_k = std_k^2 1). Under any
process x_t = a x0 + s eps, component k gives x_t ~ N(a mu_k, a^2 v_k + s^2), so with the
posterior responsibilities r_k(x_t) (optionally restricted to the components of one class):

    E[x0 | x_t]  = sum_k r_k (mu_k + a v_k (x_t - a mu_k) / (a^2 v_k + s^2))
    E[eps | x_t] = sum_k r_k s (x_t - a mu_k) / (a^2 v_k + s^2)

(both written without cancellation, so they stay exact at s -> 0 and at a -> 0).

The exact PF-ODE solution (`ode`) is integrated in float64 with an adaptive Dormand-Prince 5(4)
scheme in the angle phi = arctan(sigma / alpha) = arctan(exp(-lambda)), a smooth
reparametrisation of lambda that reaches lambda = +-inf, on the variance-normalised state
x / sqrt(alpha^2 + sigma^2), where dx/dphi = -sin(phi) x0 + cos(phi) eps. It is process
independent: any process is mapped in and out at equal SNR, so the end point sigma = 0 and a
start from pure noise (alpha = 0) are both exact.

Samples may have any shape [B, *shape] with prod(shape) = d; they are flattened internally.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..predictions import PREDICTIONS, Denoiser, from_x0
from ..processes import EDM, Process, TrigFlow, _bcast

__all__ = ["GaussianMixture"]


class GaussianMixture:
    """Gaussian mixture with exact x0 / eps / score / v / flow / TrigFlow F at any (x, t, process).

    means: [K, d]; stds: [K] (isotropic) or [K, d] (diagonal); weights: [K] (normalised here);
    labels: optional [K] class label of each component (for class-conditional oracles);
    shape: the per-sample shape (default (d,)).
    """

    def __init__(self, means, stds, weights=None, labels=None, shape=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must be [K, d], got shape {tuple(self.means.shape)}")
        K, d = self.means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 1:
            stds = stds[:, None].expand(K, d)
        if stds.shape != (K, d) or not torch.all(stds > 0):
            raise ValueError(f"stds must be positive, shaped [K] or [K, d] = [{K}, {d}]")
        self.var = stds.clone() ** 2
        w = torch.ones(K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (K,) or not torch.all(w > 0):
            raise ValueError(f"weights must be {K} positive numbers")
        self.weights = w / w.sum()
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.labels is not None and self.labels.shape != (K,):
            raise ValueError(f"labels must give one class per component ({K})")
        self.shape = tuple(shape) if shape is not None else (d,)
        if math.prod(self.shape) != d:
            raise ValueError(f"shape {self.shape} does not hold d = {d} values")

    @classmethod
    def random(cls, d: int = 16, K: int = 8, std_range=(0.2, 0.5), spread: float = 1.0, seed: int = 0,
               num_classes: int | None = None, diagonal: bool = False, shape=None):
        """A random mixture: means ~ N(0, spread^2 / d I) per coordinate scaled so |mu| ~ spread,
        component stds uniform in std_range, random weights; labels k mod num_classes if given."""
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(K, d, generator=g, dtype=torch.float64) * spread
        lo, hi = std_range
        sshape = (K, d) if diagonal else (K,)
        stds = lo + (hi - lo) * torch.rand(sshape, generator=g, dtype=torch.float64)
        weights = 0.5 + torch.rand(K, generator=g, dtype=torch.float64)
        labels = None if num_classes is None else torch.arange(K) % num_classes
        return cls(means, stds, weights, labels, shape)

    # ---------------------------------------------------------------- data
    @property
    def d(self) -> int:
        return self.means.shape[1]

    @property
    def K(self) -> int:
        return self.means.shape[0]

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else int(self.labels.max()) + 1

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def cov(self) -> Tensor:
        mu = self.mean()
        c = torch.diag_embed(self.var)  # [K, d, d]
        dm = self.means - mu
        return torch.einsum("k,kij->ij", self.weights, c + dm[:, :, None] * dm[:, None, :])

    def sample(self, n: int, generator: torch.Generator | None = None, y=None) -> Tensor:
        """n exact samples of x0 (float64, shaped [n, *shape]); y restricts to a class."""
        logw = self._log_weights(self._labels_tensor(y, n))
        k = torch.multinomial(logw.exp() if logw.ndim == 2 else logw.exp().expand(n, -1), 1,
                              generator=generator).squeeze(1)
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return (self.means[k] + self.var[k].sqrt() * z).reshape(n, *self.shape)

    def sample_xt(self, n: int, t, process: Process, generator: torch.Generator | None = None, y=None):
        """Exact samples of the marginal at time t: returns (x_t, x0, eps)."""
        x0 = self.sample(n, generator, y)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        a, s = process.alpha_sigma(process.check(t))
        return _bcast(a, x0) * x0 + _bcast(s, x0) * eps, x0, eps

    # ---------------------------------------------------------------- posterior
    def _labels_tensor(self, y, n):
        if y is None:
            return None
        if self.labels is None:
            raise ValueError("this mixture has no class labels")
        y = torch.as_tensor(y, dtype=torch.long)
        return y.expand(n) if y.ndim == 0 else y

    def _log_weights(self, y: Tensor | None) -> Tensor:
        logw = self.weights.log()
        if y is None:
            return logw
        mask = self.labels[None, :] == y[:, None]  # [B, K]
        if not torch.all(mask.any(1)):
            raise ValueError(f"class labels must be in 0..{self.num_classes - 1}")
        logw = torch.where(mask, logw[None, :], torch.full_like(mask, -math.inf, dtype=torch.float64))
        return logw - torch.logsumexp(logw, 1, keepdim=True)

    def _components(self, x: Tensor, a: Tensor, s: Tensor, y=None):
        """Per-component (log r_k unnormalised, residual x - a mu_k, total variance) at coefficients a, s."""
        B = x.shape[0]
        if math.prod(x.shape[1:]) != self.d:
            raise ValueError(f"samples of shape {tuple(x.shape[1:])} do not match the mixture's shape {self.shape}")
        xf = x.reshape(B, -1).to(torch.float64)
        a = a.reshape(-1, 1, 1).to(torch.float64)
        s = s.reshape(-1, 1, 1).to(torch.float64)
        var = a**2 * self.var[None] + s**2  # [B or 1, K, d]
        res = xf[:, None, :] - a * self.means[None]  # [B, K, d]
        logn = -0.5 * ((res**2 / var) + var.log() + math.log(2 * math.pi)).sum(-1)  # [B, K]
        logr = logn + self._log_weights(self._labels_tensor(y, B))
        return logr, res, var, a, s

    def _x0_eps(self, x: Tensor, a: Tensor, s: Tensor, y=None):
        logr, res, var, a, s = self._components(x, a, s, y)
        r = torch.softmax(logr, dim=1)[:, :, None]
        x0 = (r * (self.means[None] + a * self.var[None] * res / var)).sum(1)
        eps = (r * (s * res / var)).sum(1)
        return x0.reshape(x.shape), eps.reshape(x.shape)

    def _coefs(self, x: Tensor, t, process: Process):
        t = process.check(t)
        a, s = process.alpha_sigma(t)
        B = x.shape[0]
        return a.to(torch.float64).expand(B) if a.ndim == 0 else a, s.expand(B) if s.ndim == 0 else s

    def x0(self, x: Tensor, t, process: Process, y=None) -> Tensor:
        """Exact E[x0 | x_t = x] (float64)."""
        return self._x0_eps(x, *self._coefs(x, t, process), y)[0]

    def eps(self, x: Tensor, t, process: Process, y=None) -> Tensor:
        """Exact E[eps | x_t = x] (float64)."""
        return self._x0_eps(x, *self._coefs(x, t, process), y)[1]

    def score(self, x: Tensor, t, process: Process, y=None) -> Tensor:
        """Exact grad_x log p_t(x) = -E[eps | x] / sigma."""
        a, s = self._coefs(x, t, process)
        return -self._x0_eps(x, a, s, y)[1] / _bcast(s, x)

    def predict(self, x: Tensor, t, process: Process, kind: str, y=None, sigma_data: float = 0.5) -> Tensor:
        """The exact prediction of type `kind` (see predictions.PREDICTIONS)."""
        x = x.to(torch.float64)
        return from_x0(self.x0(x, t, process, y), kind, x, t, process, sigma_data)

    def log_prob(self, x: Tensor, t, process: Process, y=None) -> Tensor:
        """log p_t(x) (or log p_t(x | y)), [B]."""
        return torch.logsumexp(self._components(x, *self._coefs(x, t, process), y)[0], 1)

    def log_prob_class(self, x: Tensor, t, process: Process, y) -> Tensor:
        """log p(y | x_t = x): the exact noisy classifier, differentiable in x (classifier guidance)."""
        return self.log_prob(x, t, process, y) - self.log_prob(x, t, process) + self._log_prior_class(y, x.shape[0])

    def _log_prior_class(self, y, B):
        y = self._labels_tensor(y, B)
        p = torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.labels, self.weights)
        return p.log()[y]

    # ---------------------------------------------------------------- as a network / denoiser
    def as_model(self, process: Process, kind: str = "eps", sigma_data: float = 0.5):
        """A "network" predicting `kind` exactly, with the inputs `predictions.wrap` gives it.

        `model(x_in, t_in, class_labels=None)`; class_labels equal to num_classes (the null class)
        or None mean unconditional. Wrapping it with `wrap(model, process, kind)` must give back
        the exact denoiser: this tests every conversion end to end.
        """
        if kind not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {kind!r}")

        def model(x_in: Tensor, t_in: Tensor, class_labels=None):
            x_in = x_in.to(torch.float64)
            t_in = t_in.to(torch.float64)
            y, uncond = class_labels, None
            if y is not None:
                uncond = y == self.num_classes
                y = torch.where(uncond, torch.zeros_like(y), y)
            if kind == "trigflow":
                proc, x, t = TrigFlow(sigma_data=sigma_data), x_in * sigma_data, t_in
            elif kind == "edm":
                proc, t = EDM(sigma_min=1e-300, sigma_max=1e300, sigma_data=sigma_data), torch.exp(4.0 * t_in)
                x = x_in * _bcast(torch.sqrt(t**2 + sigma_data**2), x_in)
            else:
                proc, x, t = process, x_in, process.t_of_model_time(t_in)
            x0 = self.x0(x, t, proc)
            if y is not None:
                x0c = self.x0(x, t, proc, y)
                x0 = torch.where(uncond.reshape(-1, *([1] * (x0.ndim - 1))), x0, x0c)
            return from_x0(x0, kind, x, t, proc, sigma_data)

        return model

    def denoiser(self, process: Process, kind: str = "x0", sigma_data: float = 0.5) -> Denoiser:
        """The exact denoiser on `process` (through a network of type `kind`)."""
        return Denoiser(self.as_model(process, kind, sigma_data), process, kind, sigma_data=sigma_data)

    # ---------------------------------------------------------------- exact PF-ODE
    def ode(self, x: Tensor, t_start, t_end, process: Process, y=None, rtol: float = 1e-11,
            atol: float = 1e-11, max_steps: int = 100_000) -> Tensor:
        """The exact probability-flow ODE solution from (x, t_start) to t_end (sigma = 0 allowed).

        t_start may be a time where alpha = 0 (pure noise, e.g. Flow t = 1, TrigFlow pi/2).
        Returns float64 of x's shape.
        """
        x = x.to(torch.float64)
        phi0, r0 = self._angle(t_start, process)
        phi1, r1 = self._angle(t_end, process)
        state = x / r0
        state = _dopri5(lambda phi, z: self._velocity(z, phi, y), state, phi0, phi1, rtol, atol, max_steps)
        return state * r1

    @staticmethod
    def _angle(t, process: Process):
        a, s = process.alpha_sigma(process.check(t))
        a, s = float(a), float(s)
        return math.atan2(s, a), math.hypot(a, s)

    def _velocity(self, z: Tensor, phi: float, y=None) -> Tensor:
        a = torch.tensor(math.cos(phi), dtype=torch.float64).expand(z.shape[0])
        s = torch.tensor(math.sin(phi), dtype=torch.float64).expand(z.shape[0])
        x0, eps = self._x0_eps(z, a, s, y)
        return -math.sin(phi) * x0 + math.cos(phi) * eps


# Dormand-Prince 5(4) tableau (Dormand & Prince 1980).
_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_A = [
    [],
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
_B5 = _A[6] + [0.0]
_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]
_E = [b5 - b4 for b5, b4 in zip(_B5, _B4)]


def _dopri5(f, y: Tensor, t0: float, t1: float, rtol: float, atol: float, max_steps: int) -> Tensor:
    """Adaptive Dormand-Prince 5(4) with one step size for the whole batch (max error norm)."""
    if t0 == t1:
        return y
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    h = min(1e-3, span) * direction
    t, k1 = t0, f(t0, y)
    for _ in range(max_steps):
        if abs(t1 - t) <= 1e-15 * max(1.0, abs(t1)):
            return y
        if abs(h) > abs(t1 - t):
            h = t1 - t
        ks = [k1]
        for i in range(1, 7):
            yi = y + h * sum(a * k for a, k in zip(_A[i], ks) if a != 0.0)
            ks.append(f(t + _C[i] * h, yi))
        y_new = yi  # the 7th stage is the 5th-order solution (FSAL)
        err = h * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        err_norm = (err / scale).pow(2).flatten(1).mean(1).sqrt().max().item()
        if err_norm <= 1.0:
            t, y, k1 = t + h, y_new, ks[6]
        factor = 0.9 * (err_norm + 1e-16) ** -0.2
        h *= min(5.0, max(0.2, factor))
    raise RuntimeError(f"exact ODE did not reach t = {t1} in {max_steps} steps")
