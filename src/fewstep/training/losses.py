"""The denoising training objective on any process and for any prediction type.

    loss_fn = DiffusionLoss(process, "v", sampler=make_sampler("speed", process),
                            weighting=make_weighting("speed", process), num_classes=10)
    loss, stats = loss_fn(model, x0, labels, step)

One step (Ho et al. 2020, Alg. 1, generalised as in Karras et al. 2022): t ~ sampler,
eps ~ N(0, I), x_t = alpha(t) x0 + sigma(t) eps; the target is the prediction of the requested
type that corresponds to x0 (`predictions.from_x0`, so every process / prediction pair works: eps,
x0, v, score, flow velocity, TrigFlow F, EDM's F); the network sees `predictions.network_input`;
the per-sample loss is w(t) * mean((pred - target)^2) times the sampler's unbiasing weight.

Classifier-free guidance training (Ho & Salimans 2022): each label is replaced by the null class
(index num_classes) with probability p_uncond (default 0.1 when conditional).

Precision: x_t and the target are formed in float64 (the process arithmetic), the network runs
in the dtype of x0 (or under autocast), and the MSE is taken in float32.

Sharding: for data-parallel training every rank passes its local batch and the loss draws the
randomness (t, noise, label drops) of the whole *global* batch from `generator`, keeping the
rank's slice. Every rank and a one-process run with the same global batch see the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..predictions import _check_kind, from_x0, network_input
from ..processes import Process, _bcast
from .timesteps import TimestepSampler, Uniform
from .weighting import LearnedWeighting, NoWeighting, Weighting

__all__ = ["DiffusionLoss"]


class DiffusionLoss(nn.Module):
    """callable(model, x0, labels=None, step=0) -> (loss scalar, per-sample stats dict).

    Parameters: `process`; `prediction` (one of predictions.PREDICTIONS); `sampler` of t
    (default uniform); `weighting` (default none; a `LearnedWeighting` is a submodule whose
    parameters must be optimised with the model); `num_classes` (0 = unconditional: labels are
    ignored); `p_uncond` (label dropout, default 0.1 if num_classes > 0 else 0); `sigma_data`
    (TrigFlow / EDM predictions); `generator` (a torch.Generator for all draws, else the global
    RNG); `rank`, `world_size` (see the module docstring).

    stats holds detached per-sample tensors of the local batch: t, mse, weight, loss.
    """

    def __init__(self, process: Process, prediction: str = "eps", sampler: TimestepSampler | None = None,
                 weighting: Weighting | LearnedWeighting | None = None, *, num_classes: int = 0,
                 p_uncond: float | None = None, sigma_data: float = 0.5, generator: torch.Generator | None = None,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        _check_kind(prediction)
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if p_uncond is None:
            p_uncond = 0.1 if num_classes > 0 else 0.0
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.process, self.prediction, self.sigma_data = process, prediction, float(sigma_data)
        self.sampler = sampler if sampler is not None else Uniform(process)
        self.weighting = weighting if weighting is not None else NoWeighting()
        self.num_classes, self.p_uncond = int(num_classes), float(p_uncond)
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def _draws(self, n_local: int, shape, device):
        """t, unbiasing weights, noise and label-drop mask for this rank's slice of the global batch."""
        n = n_local * self.world_size
        lo, hi = self.rank * n_local, (self.rank + 1) * n_local
        g = self.generator
        dev = g.device if g is not None else device
        t, iw = self.sampler.sample(n, generator=g, device=dev)
        eps = torch.randn((n, *shape), generator=g, device=dev, dtype=torch.float64)
        drop = None
        if self.num_classes > 0 and self.p_uncond > 0:
            drop = torch.rand(n, generator=g, device=dev, dtype=torch.float64)[lo:hi] < self.p_uncond
            drop = drop.to(device)
        return t[lo:hi].to(device), iw[lo:hi].to(device), eps[lo:hi].to(device), drop

    def forward(self, model, x0: Tensor, labels: Tensor | None = None, step: int = 0):
        n = x0.shape[0]
        t, iw, eps, drop = self._draws(n, tuple(x0.shape[1:]), x0.device)
        if self.num_classes > 0 and labels is not None:
            labels = labels.to(x0.device)
            if drop is not None:
                labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        elif self.num_classes == 0:
            labels = None

        x0_64 = x0.detach().to(torch.float64)
        alpha, sigma = self.process.alpha_sigma(t)
        x_t = _bcast(alpha, x0_64) * x0_64 + _bcast(sigma, x0_64) * eps
        target = from_x0(x0_64, self.prediction, x_t, t, self.process, self.sigma_data)
        x_in, t_in = network_input(x_t, t, self.process, self.prediction, self.sigma_data)
        if t_in.ndim == 0:
            t_in = t_in.expand(n)
        kwargs = {} if labels is None else {"class_labels": labels}
        pred = model(x_in.to(x0.dtype), t_in.to(x0.dtype), **kwargs)
        if pred.shape != x0.shape:
            raise ValueError(f"the model returned shape {tuple(pred.shape)} for an input of shape {tuple(x0.shape)}")
        mse = (pred.float() - target.float()).square().flatten(1).mean(dim=1)
        per_sample = self.weighting.weighted(mse, t) * iw.to(mse.dtype)
        loss = per_sample.mean()
        with torch.no_grad():
            weight = self.weighting.base(t) if isinstance(self.weighting, LearnedWeighting) else self.weighting(t)
            stats = {"t": t.detach(), "mse": mse.detach(), "weight": weight.detach().float() * iw.float(),
                     "loss": per_sample.detach()}
        return loss, stats

    def extra_repr(self) -> str:
        return (f"process={self.process!r}, prediction={self.prediction!r}, sampler={self.sampler!r}, "
                f"p_uncond={self.p_uncond}, num_classes={self.num_classes}")
