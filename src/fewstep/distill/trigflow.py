"""TrigFlow students: a network parameterised as sCM's F (Lu & Song 2025, Sec. 3-4).

TrigFlow (sCM eq. 6-7): x_t = cos(t) x0 + sin(t) z with z ~ N(0, sd^2 I), t in [0, pi/2]; the
network F_theta sees (x_t / sd, c_noise(t)) with c_noise(t) = t (sCM Sec. 4.1: not log(sd tan t)),
and

    denoiser / consistency function  f(x_t, t) = cos(t) x_t - sin(t) sd F(x_t / sd, t)    (eq. 9)
    PF-ODE velocity                  dx_t/dt   = sd F(x_t / sd, t)                           (eq. 7)

`TrigFlowModel` wraps any fewstep network (`model(x, t, class_labels=None, **extra)`) as that F:
its `forward(x_in, t, ...)` is the network call itself (so `predictions.wrap(model, TrigFlow(sd),
"trigflow", sigma_data=sd)` is its denoiser, and it trains / samples like any other network), and
it adds `velocity`, `consistency` and `denoiser`.

Guidance-conditioned students (sCD with a CFG teacher, sCM Sec. 5): with `guidance=True` the model
takes an extra input `guidance` (the teacher's CFG scale w, one per sample), embedded by a small
zero-initialised MLP on a positional embedding of w and *added to the network's time embedding*
(the output of its `time_embed` submodule, which the UNet, DiT and MLP all have), so a student copied
from a teacher computes exactly the teacher at initialisation whatever w.

Stability recipe (sCM Sec. 4.1): positional time embedding (the presets' default), c_noise(t) = t,
a moderate `time_scale` (DEFAULT_TIME_SCALE, since dF/dt grows with the embedding's highest
frequency) and, for the UNet, adaptive double normalisation (`adaptive_double_norm=True`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..models import build_model
from ..models.embedding import PositionalEmbedding, batch_time
from ..predictions import Denoiser, wrap
from ..processes import TrigFlow, _bcast

__all__ = ["TrigFlowModel", "GuidanceEmbedding", "build_student", "init_from_teacher", "DEFAULT_TIME_SCALE"]

# Positional-embedding scale for TrigFlow angles t in [0, pi/2]: the highest frequency is
# DEFAULT_TIME_SCALE rad per unit t (the presets' scale 1 suits indices 0..999, i.e. ~640 rad per
# unit of t). sCM asks for the smallest scale that trains well, since it bounds |dF/dt|; on the 2-D
# mixture of tests/test_distill.py, sCD with scale 10 reaches a 7x lower 1-step error than with 100.
DEFAULT_TIME_SCALE = 10.0


class GuidanceEmbedding(nn.Module):
    """w -> PositionalEmbedding(w) -> Linear -> SiLU -> Linear(zero-init): the CFG-scale input of a
    guidance-conditioned student, added to the network's time embedding."""

    def __init__(self, emb_dim: int, feature_dim: int = 64, scale: float = 10.0):
        super().__init__()
        self.features = PositionalEmbedding(feature_dim, scale=scale, max_positions=1000)
        self.mlp = nn.Sequential(nn.Linear(feature_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, w: Tensor) -> Tensor:
        weight = self.mlp[0].weight
        return self.mlp(self.features(w).to(weight.dtype))


def _embedding_width(net: nn.Module) -> int:
    te = getattr(net, "time_embed", None)
    if te is None or not hasattr(te, "mlp"):
        raise ValueError("a guidance-conditioned student needs a network with a `time_embed` TimeEmbedding "
                         "submodule (fewstep's UNet, DiT and MLP have one)")
    return te.mlp[-1].out_features


class TrigFlowModel(nn.Module):
    """sCM's F_theta(x_t / sd, t) around a fewstep network (see the module docstring).

    net: the network, called as net(x_in, t, class_labels=..., **extra) with c_noise(t) = t;
    sigma_data: sd; guidance: whether the model takes a per-sample CFG scale `guidance=`.
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, guidance: bool = False,
                 guidance_scale_embedding: float = 10.0):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)
        self.guidance_embed = None
        self._guidance = None  # the current call's [B] guidance scales, read by the hook
        if guidance:
            self.guidance_embed = GuidanceEmbedding(_embedding_width(net), scale=guidance_scale_embedding)
            net.time_embed.register_forward_hook(self._add_guidance)

    @property
    def guided(self) -> bool:
        return self.guidance_embed is not None

    @property
    def config(self):
        return getattr(self.net, "config", None)

    def _add_guidance(self, module, inputs, output):
        if self._guidance is None:
            return output
        return output + self.guidance_embed(self._guidance).to(output.dtype)

    def forward(self, x_in: Tensor, t, class_labels=None, guidance=None, **extra) -> Tensor:
        """F(x_in, t) for x_in = x_t / sd (the network-level call; c_noise(t) = t)."""
        if self.guided:
            if guidance is None:
                raise ValueError("this student is guidance-conditioned: pass guidance= (the CFG scale, "
                                 "a float or one per sample)")
            self._guidance = batch_time(guidance, x_in.shape[0], x_in.device)
            try:
                return self.net(x_in, t, class_labels=class_labels, **extra)
            finally:
                self._guidance = None
        if guidance is not None:
            raise ValueError("guidance= given to a student without guidance conditioning (guidance=False)")
        return self.net(x_in, t, class_labels=class_labels, **extra)

    # ----- TrigFlow quantities in data coordinates -----
    def velocity(self, x_t: Tensor, t, **cond) -> Tensor:
        """PF-ODE velocity dx_t/dt = sd F(x_t / sd, t) (sCM eq. 7)."""
        t = batch_time(t, x_t.shape[0], x_t.device).to(x_t.dtype)
        return self.sigma_data * self(x_t / self.sigma_data, t, **cond)

    def consistency(self, x_t: Tensor, t, **cond) -> Tensor:
        """f(x_t, t) = cos(t) x_t - sin(t) sd F(x_t / sd, t) (sCM eq. 9)."""
        t = batch_time(t, x_t.shape[0], x_t.device).to(x_t.dtype)
        F = self(x_t / self.sigma_data, t, **cond)
        return _bcast(torch.cos(t), x_t) * x_t - _bcast(torch.sin(t), x_t) * self.sigma_data * F

    def denoiser(self, **model_kwargs) -> Denoiser:
        """The TrigFlow denoiser D = f (any fewstep solver can sample it; `model_kwargs` are fixed
        conditioning such as guidance=2.0)."""
        return wrap(self, TrigFlow(sigma_data=self.sigma_data), "trigflow", sigma_data=self.sigma_data,
                    model_kwargs=model_kwargs)


def build_student(name: str, sigma_data: float = 0.5, guidance: bool = False, **overrides) -> TrigFlowModel:
    """A TrigFlow student from a model preset: build_model(name, time_scale=DEFAULT_TIME_SCALE,
    **overrides) wrapped as F. For a UNet pass adaptive_double_norm=True for sCM's recipe."""
    overrides.setdefault("time_scale", DEFAULT_TIME_SCALE)
    return TrigFlowModel(build_model(name, **overrides), sigma_data=sigma_data, guidance=guidance)


def _teacher_network(teacher) -> nn.Module | None:
    model = getattr(teacher, "model", teacher)
    if isinstance(model, TrigFlowModel):
        model = model.net
    return model if isinstance(model, nn.Module) else None


def init_from_teacher(student: TrigFlowModel, teacher) -> TrigFlowModel:
    """Copy a TrigFlow-F teacher's weights into the student (sCM: students start from the teacher).

    `teacher` is a Denoiser (or guidance transform of one) with prediction "trigflow" and the same
    sigma_data, whose network has the student network's architecture (same state-dict keys and
    shapes). A guidance-conditioned student keeps its zero-initialised guidance embedding, so it
    starts as the teacher at every w.

    Teachers of other prediction types (eps, v, x0, EDM, flow) are refused: their output relates to
    F by time-dependent affine maps that a copied network cannot absorb. For those, start the student
    from its own initialisation (sCD still converges, more slowly) or first fine-tune a TrigFlow-F
    copy of the teacher with the diffusion loss (`training.DiffusionLoss(TrigFlow(sd), "trigflow")`).
    """
    inner = getattr(teacher, "inner", teacher)  # guidance transforms keep the denoiser as .inner
    prediction = getattr(inner, "prediction", "trigflow" if isinstance(inner, TrigFlowModel) else None)
    if prediction != "trigflow":
        raise ValueError(f"init_from_teacher: the teacher predicts {prediction!r}; only TrigFlow-F teachers "
                         "(prediction 'trigflow') of the student's architecture can be copied (see the docstring)")
    sd = getattr(inner, "sigma_data", None)
    if sd is not None and not math.isclose(float(sd), student.sigma_data):
        raise ValueError(f"init_from_teacher: teacher sigma_data {sd} != student sigma_data {student.sigma_data}")
    net = _teacher_network(inner)
    if net is None:
        raise ValueError("init_from_teacher: the teacher's model is not an nn.Module")
    src, dst = net.state_dict(), student.net.state_dict()
    if set(src) != set(dst) or any(src[k].shape != dst[k].shape for k in src):
        raise ValueError("init_from_teacher: the teacher network's architecture differs from the student's "
                         "(state-dict keys or shapes do not match)")
    cfg_t, cfg_s = getattr(net, "config", None), getattr(student.net, "config", None)
    if hasattr(cfg_t, "to_dict") and hasattr(cfg_s, "to_dict") and cfg_t.to_dict() != cfg_s.to_dict():
        diff = sorted(k for k, v in cfg_t.to_dict().items() if cfg_s.to_dict().get(k) != v)
        raise ValueError(f"init_from_teacher: the teacher's and student's model configs differ in {diff} "
                         "(e.g. time_scale changes the function without changing the weights)")
    student.net.load_state_dict(src)
    return student
