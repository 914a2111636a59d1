"""sCT / sCD: the continuous-time consistency objective of sCM (Lu & Song 2025, Algorithm 1).

One step, for a TrigFlow student F_theta (trigflow.py) and data x0 (sCM Alg. 1):

    tau ~ N(P_mean, P_std^2),  t = arctan(e^tau / sd)                 (log-normal proposal, eq. 11)
    z ~ N(0, sd^2 I),          x_t = cos(t) x0 + sin(t) z
    dx_t/dt = cos(t) z - sin(t) x0                         (sCT: the data pair's velocity)
            = sd F_teacher(x_t / sd, t)                     (sCD: teacher.py, with CFG)
    r = min(1, step / H)                                    (tangent warm-up)
    g = -cos^2(t)(sd F^- - dx_t/dt) - r cos(t) sin(t)(x_t + sd dF^-/dt)   (tangent.py, one JVP)
    g <- g / (||g|| + c)                                    (tangent normalisation, c = 0.1)
    L = e^{w(t)} / D ||F_theta(x_t/sd, t) - F^-(x_t/sd, t) - g||^2 - w(t)  (adaptive_weight.py)

Choices where public implementations differ (REFERENCE sec. 3), all options here:
- tangent norm: per-sample L2 over all D dimensions (default, as Alg. 1) or "rms" (L2 / sqrt D);
- no extra 1/(sd tan t) loss weight by default (`tan_weight=True` adds it);
- the target F^- is the stop-gradient *current* model (the JVP's primal output, same dropout mask
  as the gradient pass), never the EMA; the EMA is for sampling only (loop.py).

At F = F^- the loss gradient is -2 e^{w}/D g . dF/dtheta: a step moves F along g = cos(t) df/dt,
the discrete consistency-model update in the limit dt -> 0 (sCM eq. 8).

`SCMLoss` has the call signature of `training.DiffusionLoss`: loss_fn(model, x0, labels, step)
-> (loss, per-sample stats), so a trainer can use either.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from ..guidance import check_interval
from ..processes import _bcast
from .adaptive_weight import AdaptiveWeight
from .tangent import NORMS, TANGENT_METHODS, normalize_tangent, scm_tangent

__all__ = ["SCMConfig", "SCMLoss", "sample_t", "tangent_warmup"]

MODES = ("sct", "scd")


@dataclasses.dataclass(frozen=True)
class SCMConfig:
    """Settings of sCT / sCD (defaults: sCM's CIFAR-10 / ImageNet-64 choices).

    mode: "sct" (consistency training from data) or "scd" (distillation from a teacher);
    sigma_data: TrigFlow sd; P_mean, P_std: the log-normal proposal of t; tangent_warmup: H in
    iterations (0 = no warm-up); tangent_c: c of the tangent normalisation; tangent_norm: "l2" |
    "rms"; tangent: "jvp" (forward-mode AD) or "fd" (central finite difference, step fd_step);
    adaptive_weight: learn w(t) (else w = 0); tan_weight: the extra 1/(sd tan t) loss weight;
    guidance: the teacher's CFG scale for students without a guidance input; guidance_range: (lo, hi)
    from which guidance-conditioned students draw w per sample (the teacher uses the same w);
    guidance_interval: (lo, hi) of the teacher's sigma / alpha where its guidance applies (None: all);
    p_uncond: label dropout to the null class for class-conditional sCT.
    """

    mode: str = "sct"
    sigma_data: float = 0.5
    P_mean: float = -1.0
    P_std: float = 1.4
    tangent_warmup: int = 10000
    tangent_c: float = 0.1
    tangent_norm: str = "l2"
    tangent: str = "jvp"
    fd_step: float = 1e-3
    adaptive_weight: bool = True
    tan_weight: bool = False
    guidance: float = 1.0
    guidance_range: tuple | None = None
    guidance_interval: tuple | None = None
    p_uncond: float = 0.0

    def __post_init__(self):
        if isinstance(self.guidance_range, list):
            object.__setattr__(self, "guidance_range", tuple(self.guidance_range))
        object.__setattr__(self, "guidance_interval", check_interval(self.guidance_interval))
        if self.mode not in MODES:
            raise ValueError(f"unknown sCM mode {self.mode!r}; valid: {', '.join(MODES)}")
        if not self.sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {self.sigma_data}")
        if not self.P_std > 0:
            raise ValueError(f"P_std (std of the log-normal time proposal) must be positive, got {self.P_std}")
        if not math.isfinite(self.P_mean):
            raise ValueError(f"P_mean must be finite, got {self.P_mean}")
        if not self.tangent_warmup >= 0:
            raise ValueError(f"tangent_warmup H must be >= 0 iterations (0 = none), got {self.tangent_warmup}")
        if not self.tangent_c > 0:
            raise ValueError(f"tangent normalisation constant c must be positive, got {self.tangent_c}")
        if self.tangent_norm not in NORMS:
            raise ValueError(f"unknown tangent_norm {self.tangent_norm!r}; valid: {', '.join(NORMS)}")
        if self.tangent not in TANGENT_METHODS:
            raise ValueError(f"unknown tangent method {self.tangent!r}; valid: {', '.join(TANGENT_METHODS)}")
        if not self.fd_step > 0:
            raise ValueError(f"fd_step must be positive, got {self.fd_step}")
        if self.guidance_range is not None:
            lo, hi = self.guidance_range
            if not 0 <= lo <= hi:
                raise ValueError(f"guidance_range must be (lo, hi) with 0 <= lo <= hi, got {self.guidance_range}")
        if self.guidance_interval is not None and (self.mode != "scd" or (self.guidance == 1.0
                                                                         and self.guidance_range is None)):
            raise ValueError("guidance_interval limits a guided teacher: it needs mode scd with guidance != 1 "
                             "or a guidance_range")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {self.p_uncond}")

    def replace(self, **changes) -> "SCMConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["guidance_range"] = list(self.guidance_range) if self.guidance_range is not None else None
        d["guidance_interval"] = list(self.guidance_interval) if self.guidance_interval is not None else None
        return d


def sample_t(n: int, P_mean: float, P_std: float, sigma_data: float, generator: torch.Generator | None = None,
             device=None, dtype=torch.float32) -> Tensor:
    """n TrigFlow times from sCM's proposal: tau ~ N(P_mean, P_std^2), t = arctan(e^tau / sd)."""
    gdev = generator.device if generator is not None else "cpu"  # draw where the generator lives
    tau = torch.randn(n, generator=generator, dtype=torch.float64, device=gdev) * P_std + P_mean
    return torch.atan(torch.exp(tau) / sigma_data).to(device=device, dtype=dtype)


def tangent_warmup(step: int, H: int) -> float:
    """r = min(1, step / H) (r = 1 when H = 0)."""
    return 1.0 if H == 0 else min(1.0, max(0, step) / H)


class SCMLoss(nn.Module):
    """callable(model, x0, labels=None, step=0) -> (loss scalar, per-sample stats dict).

    config: SCMConfig; teacher: a `TeacherVelocity` (sCD) or None (sCT); num_classes: for label
    dropout (sCT, p_uncond > 0); generator: torch.Generator for every draw (t, noise, guidance,
    label drops), else the global RNG. The learned weight w(t) is a submodule: optimise
    `loss.parameters()` together with the model's.

    model: the TrigFlow student F(x_t / sd, t, class_labels=..., guidance=...) (a DDP wrapper is
    fine: the JVP runs on its `.module`). stats: detached [B] tensors t, mse, w, g_norm, loss.
    """

    def __init__(self, config: SCMConfig | None = None, teacher=None, *, num_classes: int = 0,
                 generator: torch.Generator | None = None, rank: int = 0, world_size: int = 1, **overrides):
        super().__init__()
        config = (config or SCMConfig()).replace(**overrides) if overrides else (config or SCMConfig())
        if config.mode == "scd" and teacher is None:
            raise ValueError("sCD (mode='scd') needs a teacher (a TeacherVelocity)")
        if config.mode == "sct" and teacher is not None:
            raise ValueError("sCT (mode='sct') takes no teacher; use mode='scd' to distil")
        if teacher is not None and not math.isclose(getattr(teacher, "sigma_data", config.sigma_data),
                                                    config.sigma_data):
            raise ValueError(f"teacher sigma_data {teacher.sigma_data} != config sigma_data {config.sigma_data}")
        if config.p_uncond > 0 and num_classes < 1:
            raise ValueError("p_uncond > 0 needs num_classes (the null class index) >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.config, self.teacher, self.num_classes, self.generator = config, teacher, int(num_classes), generator
        self.rank, self.world_size = rank, world_size
        self.weight = AdaptiveWeight() if config.adaptive_weight else None

    # Every draw covers the GLOBAL batch (all ranks / accumulation shards) and keeps this rank's
    # slice, so N processes see the numbers of the one-process run (as training.DiffusionLoss).
    def _slice(self, v: Tensor, device, dtype) -> Tensor:
        n = v.shape[0] // self.world_size
        return v[self.rank * n:(self.rank + 1) * n].to(device=device, dtype=dtype)

    def _randn(self, shape, device, dtype) -> Tensor:
        shape = (shape[0] * self.world_size, *shape[1:])
        return self._slice(torch.randn(shape, generator=self.generator, dtype=torch.float64, device=self._gdev),
                           device, dtype)

    def _rand(self, n, device, dtype) -> Tensor:
        return self._slice(torch.rand(n * self.world_size, generator=self.generator, dtype=torch.float64,
                                      device=self._gdev), device, dtype)

    @property
    def _gdev(self):
        return self.generator.device if self.generator is not None else "cpu"

    def forward(self, model, x0: Tensor, labels: Tensor | None = None, step: int = 0):
        cfg, sd = self.config, self.config.sigma_data
        inner = getattr(model, "module", model)  # DDP: the JVP must not run through the wrapper's hooks
        B, dev = x0.shape[0], x0.device
        dtype = torch.promote_types(x0.dtype, torch.float32)
        x0 = x0.to(dtype)

        t = self._slice(sample_t(B * self.world_size, cfg.P_mean, cfg.P_std, sd, self.generator, dtype=torch.float64),
                        dev, dtype)
        z = self._randn(x0.shape, dev, dtype) * sd
        cos, sin = _bcast(torch.cos(t), x0), _bcast(torch.sin(t), x0)
        x_t = cos * x0 + sin * z

        label_cond = {}
        if labels is not None:
            if cfg.p_uncond > 0:
                drop = self._rand(B, dev, torch.float64) < cfg.p_uncond
                labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
            label_cond["class_labels"] = labels
        cond = dict(label_cond)
        w_teacher = cfg.guidance
        if getattr(inner, "guided", False):
            if cfg.guidance_range is None:
                raise ValueError("a guidance-conditioned student needs guidance_range=(lo, hi) in the SCMConfig")
            lo, hi = cfg.guidance_range
            w_teacher = lo + (hi - lo) * self._rand(B, dev, dtype)
            cond["guidance"] = w_teacher

        if cfg.mode == "sct":
            v = cos * z - sin * x0
        else:
            v = self.teacher(x_t, t, guidance=w_teacher, **label_cond).to(dtype)

        r = tangent_warmup(step, cfg.tangent_warmup)
        F_minus, g = scm_tangent(lambda xi, ti: inner(xi, ti, **cond), x_t, t, v, sd, r, cfg.tangent, cfg.fd_step)
        g_norm = g.flatten(1).norm(dim=1)
        g = normalize_tangent(g, cfg.tangent_c, cfg.tangent_norm)

        F = model(x_t / sd, t, **cond)  # same RNG state as the tangent pass: same dropout masks
        diff = F.to(F_minus.dtype) - F_minus - g  # F^- and g carry no gradient (stop-grad target)
        mse = diff.square().flatten(1).mean(1)  # ||.||^2 / D
        if cfg.tan_weight:
            mse = mse / (sd * torch.tan(t))
        w = self.weight(t).to(mse.dtype) if self.weight is not None else torch.zeros_like(mse)
        per_sample = torch.exp(w) * mse - w
        stats = {"t": t.detach(), "mse": mse.detach(), "w": w.detach(), "g_norm": g_norm.detach(),
                 "loss": per_sample.detach()}
        return per_sample.mean(), stats
