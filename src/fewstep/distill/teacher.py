"""Teacher adapter for sCD: any fewstep denoiser as the TrigFlow PF-ODE velocity.

sCD (sCM Alg. 1) needs dx_t/dt = sd F_teacher(x_t / sd, t) at TrigFlow states. A fewstep teacher is
a `Denoiser` D(x', t') -> x0 on its own process (VP eps / v / x0, EDM, flow, TrigFlow, ...), so:

1. carry the TrigFlow state to the teacher's process at equal SNR (REFERENCE sec. 3, "conversion"):
   lambda = log(cos t / (sd sin t)), t' = t_teacher(lambda), and with (a, s) = (alpha, sigma)(t'),
   x' = x_t sqrt(a^2 sd^2 + s^2) / sd      (the same map as processes.convert);
2. x0 = D(x', t') (with classifier-free guidance: x0 = x0_u + w (x0_c - x0_u), Ho & Salimans 2022,
   one batched call, w a float or one per sample; with a guidance interval (lo, hi], Kynkaanniemi et
   al. 2024, w applies only where the teacher's sigma / alpha lies in it, w = 1 elsewhere; the
   unconditional branch is evaluated only for the samples with w != 1);
3. invert TrigFlow's denoiser x0 = cos(t) x_t - sin(t) sd F (sCM eq. 9):
   F = (cos(t) x_t - x0) / (sd sin t), so dx_t/dt = sd F = (cos(t) x_t - x0) / sin(t).

This is exact for every process and prediction type (tested against the Gaussian-mixture oracle).
Times whose SNR lies below the teacher's lowest (e.g. an EDM teacher with sigma_max = 80 asked at
t > arctan(80 / sd)) are evaluated at the teacher's last time, T, with the state mapped by the same
norm-preserving formula: the teacher never saw noisier inputs, and the velocity there is close to
its pure-noise limit. (sCM's log-normal proposal reaches such t with probability ~1e-4.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..guidance import check_interval, in_interval
from ..processes import Process, _bcast

__all__ = ["TeacherVelocity", "trigflow_to_process"]


def trigflow_to_process(x_t: Tensor, t: Tensor, process: Process, sigma_data: float) -> tuple[Tensor, Tensor]:
    """(x', t'): the TrigFlow state (x_t, t) ([B] times) on `process` at equal SNR (clamped into its
    domain, see the module docstring)."""
    t64 = t.to(torch.float64)
    lam = torch.log(torch.cos(t64)) - torch.log(torch.sin(t64)) - torch.log(torch.tensor(sigma_data, dtype=torch.float64))
    lam_low = float(process.lambda_(torch.tensor(process.T, dtype=torch.float64)))
    lam = lam.clamp(min=lam_low)
    t_p = process.check(process.t_of_lambda(lam).clamp(0.0, process.T))
    a, s = process.alpha_sigma(t_p)
    k = torch.sqrt(a**2 * sigma_data**2 + s**2) / sigma_data
    return x_t * _bcast(k, x_t), t_p


def _per_sample(v, B: int, device) -> Tensor:
    v = torch.as_tensor(v, device=device)
    return v.expand(B, *v.shape) if v.ndim == 0 or v.shape[0] != B else v


class TeacherVelocity:
    """callable(x_t, t, guidance=None, **cond) -> dx_t/dt = sd F_teacher(x_t / sd, t) (no gradients).

    denoiser: any fewstep Denoiser (anything with `.process` and D(x, t, **cond) -> x0);
    sigma_data: the TrigFlow sd of the student; guidance_scale: the default CFG scale w (1 = the
    conditional teacher, no guidance); uncond: model kwargs of the unconditional branch (default:
    class_labels = null_class); null_class: the null label (default: the teacher network's
    num_classes); guidance_interval: (lo, hi) of sigma / alpha outside which the teacher is not guided
    (None: guided everywhere). Per-call `guidance=` (float or [B]) overrides guidance_scale.
    """

    def __init__(self, denoiser, sigma_data: float = 0.5, guidance_scale: float = 1.0, uncond: dict | None = None,
                 null_class: int | None = None, guidance_interval=None):
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        if not hasattr(denoiser, "process"):
            raise ValueError("TeacherVelocity needs a fewstep denoiser (with .process); wrap a network with "
                             "fewstep.predictions.wrap(model, process, prediction)")
        self.denoiser, self.process = denoiser, denoiser.process
        self.sigma_data, self.guidance_scale = float(sigma_data), float(guidance_scale)
        self.uncond = uncond
        self.guidance_interval = check_interval(guidance_interval)
        self.null_class = null_class if null_class is not None else self._infer_null_class(denoiser)

    @staticmethod
    def _infer_null_class(denoiser):
        model = getattr(denoiser, "model", None)
        model = getattr(model, "net", model)  # a TrigFlowModel's network
        cfg = getattr(model, "config", None)
        n = getattr(cfg, "num_classes", None)
        return n if n else None

    def _uncond(self, cond: dict) -> dict:
        if self.uncond is not None:
            return self.uncond
        labels = cond.get("class_labels")
        if labels is None or self.null_class is None:
            raise ValueError("classifier-free guidance needs class_labels= in the conditioning and a null class "
                             "(null_class=) or an explicit uncond= dict")
        return {**cond, "class_labels": torch.full_like(torch.as_tensor(labels), self.null_class)}

    @torch.no_grad()
    def x0(self, x_t: Tensor, t, guidance=None, **cond) -> Tensor:
        """The (guided) teacher's x0 estimate at the TrigFlow state (x_t, t)."""
        B = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float64)
        t = t.expand(B) if t.ndim == 0 else t
        x_p, t_p = trigflow_to_process(x_t, t, self.process, self.sigma_data)
        w = self.guidance_scale if guidance is None else guidance
        w = torch.as_tensor(w, dtype=x_t.dtype, device=x_t.device).expand(B)
        if self.guidance_interval is not None:
            inside = in_interval(self.process, t_p, self.guidance_interval).to(x_t.device)
            w = torch.where(inside, w, torch.ones_like(w))
        guided = w != 1.0
        if not bool(guided.any()):  # the conditional teacher: no guidance, one call
            return self.denoiser(x_p, t_p, **cond).to(x_t.dtype)
        uncond = self._uncond(cond)
        if set(uncond) != set(cond):
            raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
        # one batched call: every sample conditional, the unconditional branch only where guided
        g = guided.nonzero().squeeze(1)
        both = {k: torch.cat([_per_sample(cond[k], B, x_t.device), _per_sample(uncond[k], B, x_t.device)[g]])
                for k in cond}
        x0 = self.denoiser(torch.cat([x_p, x_p[g]]), torch.cat([t_p, t_p[g]]), **both).to(x_t.dtype)
        x0_c, x0_u = x0[:B], x0[B:]
        return x0_c.index_copy(0, g, x0_u + _bcast(w[g], x0_u) * (x0_c[g] - x0_u))

    def __call__(self, x_t: Tensor, t, guidance=None, **cond) -> Tensor:
        """dx_t/dt = (cos(t) x_t - x0) / sin(t)."""
        t = torch.as_tensor(t, device=x_t.device, dtype=x_t.dtype)
        x0 = self.x0(x_t, t, guidance, **cond)
        return (_bcast(torch.cos(t), x_t) * x_t - x0) / _bcast(torch.sin(t), x_t)

    def F(self, x_t: Tensor, t, guidance=None, **cond) -> Tensor:
        """The teacher's TrigFlow F = (dx_t/dt) / sd."""
        return self(x_t, t, guidance, **cond) / self.sigma_data
