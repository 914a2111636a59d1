"""Students initialised from a teacher of ANY process and prediction type (sCM: "the student starts
from the teacher").

A TrigFlow-F teacher of the student's architecture is simply copied (`trigflow.init_from_teacher`).
Any other teacher (VP eps / v / x0, EDM, flow, ...) predicts a quantity that relates to F by maps
that depend on t and on the process, which a copied network cannot absorb. `TeacherParameterised`
instead keeps a copy of the teacher's network *inside* an exact reparameterisation:

    (x', t') = the TrigFlow state (x_t, t) on the teacher's process at equal SNR   (teacher.py)
    x0       = D_theta(x', t')       the copied network read through its own prediction type
    F        = (cos(t) x_t - x0) / (sd sin t)       so that f = cos(t) x_t - sin(t) sd F = x0

so at initialisation the student's consistency function f(x_t, t) IS the teacher's denoiser, and
sCD/sCT train the copied weights. Every step is a differentiable torch op (the discrete-VP time map
is piecewise linear), so the forward-mode JVP of the tangent runs through it.

`student_spec` / `build_student_from_spec` describe a student as JSON so that checkpoints and shipped
models can be rebuilt (pretrained.py).

Measured caveat (BENCHMARKS.md, section 2): the reparameterisation keeps the teacher network's own
time input. For an eps network on discrete VP that is the DDPM index 0..999 through a positional
embedding, so dF/dt is large, and sCD from such a student improves during the tangent warm-up and
then degrades (digits: 2-step FD 1.65 at 200 iterations, 2.27 at 400, collapse with the adaptive
weight); dF/d(eps) also grows as 1/cos(t) near t_max. A TrigFlow-F teacher with c_noise(t) = t
(preset digits-speed-trigflow) distils stably, as sCM Sec. 4.1 predicts: prefer it, or fine-tune a
TrigFlow copy of an eps teacher first.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import Tensor, nn

from ..models import build_model_from_config
from ..models.unet import UNet
from ..models.widen import widen_unet
from ..predictions import wrap
from ..processes import _bcast, get_process
from .teacher import trigflow_to_process
from .trigflow import TrigFlowModel

__all__ = ["TeacherParameterised", "set_dropout", "student_from_teacher", "student_spec", "build_student_from_spec"]


class TeacherParameterised(nn.Module):
    """F(x_t / sd, t) computed through a network trained for `process` with `prediction` (see the
    module docstring). net: the network (trained in place); sigma_data: the student's TrigFlow sd;
    teacher_sigma_data: the sd the network's own prediction type uses (EDM / TrigFlow teachers)."""

    def __init__(self, net: nn.Module, process, prediction: str, sigma_data: float = 0.5,
                 teacher_sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.process, self.prediction = get_process(process), prediction
        self.sigma_data, self.teacher_sigma_data = float(sigma_data), float(teacher_sigma_data)
        self._denoiser = wrap(net, self.process, prediction, sigma_data=self.teacher_sigma_data)

    @property
    def time_embed(self):  # guidance-conditioned students add their embedding here
        return self.net.time_embed

    @property
    def config(self):
        return getattr(self.net, "config", None)

    def forward(self, x_in: Tensor, t: Tensor, class_labels=None, **extra) -> Tensor:
        sd = self.sigma_data
        x_t = x_in * sd
        x_p, t_p = trigflow_to_process(x_t, t, self.process, sd)
        x_p, t_p = x_p.to(x_t.dtype), t_p.to(torch.promote_types(t.dtype, torch.float32))
        cond = dict(extra)
        if class_labels is not None:
            cond["class_labels"] = class_labels
        x0 = self._denoiser(x_p, t_p, **cond).to(x_t.dtype)
        t = t.to(x_t.dtype)
        return (_bcast(torch.cos(t), x_t) * x_t - x0) / (sd * _bcast(torch.sin(t), x_t))


def _network_of(teacher) -> nn.Module:
    inner = getattr(teacher, "inner", teacher)
    net = getattr(inner, "model", None)
    if isinstance(net, TrigFlowModel):
        if net.guided:  # its guidance embedding hooks the network it wraps and would not come along
            raise ValueError("student_from_teacher: a guidance-conditioned consistency model can only be copied "
                             "into a guidance-conditioned student (scm_args.guidance_range), with its layout")
        net = net.net
    if not isinstance(net, nn.Module):
        raise ValueError("student_from_teacher: the teacher must be a fewstep Denoiser around an nn.Module "
                         "(e.g. from fewstep.pretrained.load_denoiser or predictions.wrap)")
    return net


def set_dropout(net: nn.Module, p: float) -> nn.Module:
    """Give a fewstep network (a `fewstep.models` UNet, DiT or MLP) dropout rate p in every dropout
    layer and in its config, so that its checkpoints record the rate it trains with. Dropout is a
    training setting, not part of the weights: a copied student may use another rate than its
    teacher (consistency models are sensitive to it; BENCHMARKS.md section 2 measures 0 against 0.1)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")
    holder = net.net if isinstance(net, TeacherParameterised) else net  # the copy inside the reparameterisation
    config = getattr(holder, "config", None)
    if config is None or not hasattr(config, "dropout"):
        raise ValueError(f"cannot set the dropout of a {type(holder).__name__}: not a fewstep.models network")
    layers = [m for m in holder.modules() if isinstance(m, nn.Dropout)]
    if not layers:
        raise ValueError(f"{type(holder).__name__} has no dropout layers to set")
    for m in layers:
        m.p = p
    holder.config = dataclasses.replace(config, dropout=p)
    return net


def student_from_teacher(teacher, sigma_data: float = 0.5, guidance: bool = False,
                         dropout: float | None = None, channel_mult=None) -> TrigFlowModel:
    """A TrigFlow student whose f equals the teacher's denoiser at initialisation, for any teacher.

    A "trigflow" teacher with the same sd gives a plain copy of its network (F is F); any other
    teacher gives a `TeacherParameterised` copy. The copy is trainable (requires_grad on); dropout:
    the copy's dropout rate (None: the teacher's; f at initialisation is the teacher's either way,
    as dropout is off in evaluation); channel_mult: a wider layout for a UNet copy, grown from the
    teacher's by `fewstep.models.widen.widen_unet` (f at initialisation is still the teacher's)."""
    inner = getattr(teacher, "inner", teacher)
    if not hasattr(inner, "process") or not hasattr(inner, "prediction"):
        raise ValueError("student_from_teacher: the teacher must be a fewstep Denoiser (with .process, .prediction)")
    source = getattr(inner, "model", None)
    if isinstance(source, TrigFlowModel) and source.guided and guidance:
        return _copy_guided(source, sigma_data, dropout, channel_mult)
    net = copy.deepcopy(_network_of(teacher))
    current = getattr(getattr(net, "config", None), "channel_mult", ())
    if channel_mult is not None and tuple(channel_mult) != tuple(current):
        if not isinstance(net, UNet):
            raise ValueError(f"student_from_teacher: channel_mult widens a UNet, not a {type(net).__name__}")
        net = widen_unet(net, channel_mult)
    net = net.train().requires_grad_(True)
    if dropout is not None:
        set_dropout(net, dropout)
    same = inner.prediction == "trigflow" and math.isclose(float(inner.sigma_data), sigma_data) \
        and getattr(inner.process, "name", None) == "trigflow"
    if not same:
        net = TeacherParameterised(net, inner.process, inner.prediction, sigma_data, float(inner.sigma_data))
    return TrigFlowModel(net, sigma_data=sigma_data, guidance=guidance)


def _copy_guided(source: TrigFlowModel, sigma_data: float, dropout, channel_mult) -> TrigFlowModel:
    """A trainable copy of a guidance-conditioned student, guidance embedding included (the whole model is
    copied, so the copy's network hooks the copy's embedding); its layout cannot change."""
    current = tuple(getattr(source.config, "channel_mult", ()) or ())
    if channel_mult is not None and tuple(channel_mult) != current:
        raise ValueError("student_from_teacher: a guidance-conditioned student cannot be widened (copy it as is)")
    if not math.isclose(source.sigma_data, sigma_data):
        raise ValueError(f"student_from_teacher: the guidance-conditioned student has sigma_data "
                         f"{source.sigma_data}, not {sigma_data}")
    student = copy.deepcopy(source).train().requires_grad_(True)
    if dropout is not None:
        set_dropout(student.net, dropout)
    return student


def student_spec(student: TrigFlowModel) -> dict:
    """A JSON description of the student's structure (not its weights)."""
    net = student.net
    spec = {"sigma_data": student.sigma_data, "guidance": student.guided}
    if isinstance(net, TeacherParameterised):
        spec.update(parameterisation="teacher", process=net.process.config(), prediction=net.prediction,
                    teacher_sigma_data=net.teacher_sigma_data, model_config=net.net.config.to_dict())
    else:
        spec.update(parameterisation="trigflow", model_config=net.config.to_dict())
    return spec


def build_student_from_spec(spec: dict) -> TrigFlowModel:
    """The (untrained) student described by `student_spec`; load its state dict afterwards."""
    kind = spec.get("parameterisation")
    if kind not in ("teacher", "trigflow"):
        raise ValueError(f"unknown student parameterisation {kind!r} (expected 'teacher' or 'trigflow')")
    net = build_model_from_config(spec["model_config"])
    if kind == "teacher":
        net = TeacherParameterised(net, get_process(spec["process"]), spec["prediction"], spec["sigma_data"],
                                   spec["teacher_sigma_data"])
    return TrigFlowModel(net, sigma_data=spec["sigma_data"], guidance=bool(spec.get("guidance")))
