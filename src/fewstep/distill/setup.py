"""sCT / sCD inside fewstep's trainer: the student, teacher and objective a `TrainConfig` describes.

`fewstep distill --teacher digits-teacher --method scd` (and `fewstep train ... method=scd`) run the
ordinary `training.Trainer`, so checkpoints, exact resume, progress, metrics.csv, EMA, gradient
accumulation and torchrun DDP all apply. With method "sct" / "scd" the trainer asks this module for

- the process TrigFlow(sigma_data) (TrainConfig itself sets process / prediction to "trigflow" for
  these methods, so a checkpoint loads as a TrigFlow denoiser);
- the student: with student_init="teacher" (the default when a teacher is given) a copy of the
  teacher's network, reparameterised exactly as F when the teacher is not a TrigFlow model
  (reparam.py), so f = the teacher's denoiser at step 0; with student_init = a checkpoint, run
  directory or shipped name, the same copy of that model instead (e.g. an earlier student, to
  distil further from a new teacher); model_args may change a copy's dropout and, for a UNet, widen
  its levels (channel_mult, function-preserving: models/widen.py); with "scratch" the model preset with
  time_scale = DEFAULT_TIME_SCALE unless model_args say otherwise (trigflow.build_student);
- the objective `SCMLoss(SCMConfig(mode=method, sigma_data, **scm_args), TeacherVelocity(teacher))`.
"""

from __future__ import annotations

import warnings

from ..processes import TrigFlow
from .reparam import build_student_from_spec, student_from_teacher
from .scm import SCMConfig, SCMLoss
from .teacher import TeacherVelocity
from .trigflow import build_student

__all__ = ["build_consistency"]


def build_consistency(cfg, num_classes: int, device, generator, rank: int = 0, world_size: int = 1,
                      student_spec: dict | None = None):
    """(student, process, loss_fn, teacher denoiser or None) for a method "sct" / "scd" config.

    student_spec: a checkpoint's "student" entry; the student is then built from it (weights to be
    loaded from that checkpoint) instead of from student_init, which a resumed run need not still have.
    """
    from ..pretrained import load_denoiser

    sd = cfg.sigma_data
    scm = SCMConfig(mode=cfg.method, sigma_data=sd, **cfg.scm_args)
    guided = scm.guidance_range is not None
    teacher = None
    if cfg.method == "scd":
        teacher = load_denoiser(cfg.teacher, device=device)
        _check_classes(teacher, num_classes, cfg.dataset, "the teacher")
    if student_spec is not None:  # a resumed run: its checkpoint's student, whatever student_init names now
        student = build_student_from_spec(student_spec)
    else:
        student = _student_from_init(cfg, teacher, guided, num_classes, device)
    velocity = (TeacherVelocity(teacher, sd, guidance_scale=scm.guidance, guidance_interval=scm.guidance_interval)
                if teacher is not None else None)
    p_uncond = cfg.p_uncond if (cfg.method == "sct" and num_classes) else 0.0
    loss = SCMLoss(scm.replace(p_uncond=p_uncond), velocity, num_classes=num_classes, generator=generator,
                   rank=rank, world_size=world_size)
    return student.to(device), TrigFlow(sigma_data=sd), loss.to(device), teacher


def _student_from_init(cfg, teacher, guided: bool, num_classes: int, device):
    """A new student as cfg.student_init says: a copy of the teacher or of another model, or from scratch."""
    from ..pretrained import load_denoiser

    sd = cfg.sigma_data
    source = teacher if cfg.student_init == "teacher" else None
    if cfg.student_init not in ("teacher", "scratch"):
        source = load_denoiser(cfg.student_init, device=device)
        _check_classes(source, num_classes, cfg.dataset, f"the student_init model {cfg.student_init!r}")
    if source is None:
        return build_student(cfg.model, sd, guidance=guided, num_classes=num_classes, **cfg.model_args)
    ignored = sorted(set(cfg.model_args) - {"dropout", "channel_mult"})
    if ignored:
        warnings.warn(f"student_init={cfg.student_init}: the student copies that network; model_args "
                      f"{ignored} are ignored (only dropout and a wider UNet channel_mult apply to a copy)")
    return student_from_teacher(source, sd, guidance=guided, dropout=cfg.model_args.get("dropout"),
                                channel_mult=cfg.model_args.get("channel_mult"))


def _check_classes(model, num_classes: int, dataset: str, what: str) -> None:
    m_classes = int(model.num_classes or 0)
    if m_classes and num_classes and m_classes != num_classes:
        raise ValueError(f"{what} has {m_classes} classes but the dataset {dataset!r} has {num_classes}")
    if m_classes and not num_classes:
        raise ValueError(f"{what} is class-conditional: use conditional=true on a labelled dataset")
    if num_classes and not m_classes:
        raise ValueError(f"{what} is unconditional: set conditional=false")
