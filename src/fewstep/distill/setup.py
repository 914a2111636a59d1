"""sCT / sCD inside fewstep's trainer: the student, teacher and objective a `TrainConfig` describes.

`fewstep distill --teacher digits-teacher --method scd` (and `fewstep train ... method=scd`) run the
ordinary `training.Trainer`, so checkpoints, exact resume, progress, metrics.csv, EMA, gradient
accumulation and torchrun DDP all apply. With method "sct" / "scd" the trainer asks this module for

- the process TrigFlow(sigma_data) (TrainConfig itself sets process / prediction to "trigflow" for
  these methods, so a checkpoint loads as a TrigFlow denoiser);
- the student: with student_init="teacher" (the default when a teacher is given) a copy of the
  teacher's network, reparameterised exactly as F when the teacher is not a TrigFlow model
  (reparam.py), so f = the teacher's denoiser at step 0; otherwise the model preset with
  time_scale = DEFAULT_TIME_SCALE unless model_args say otherwise (trigflow.build_student);
- the objective `SCMLoss(SCMConfig(mode=method, sigma_data, **scm_args), TeacherVelocity(teacher))`.
"""

from __future__ import annotations

import warnings

from ..processes import TrigFlow
from .reparam import student_from_teacher
from .scm import SCMConfig, SCMLoss
from .teacher import TeacherVelocity
from .trigflow import build_student

__all__ = ["build_consistency"]


def build_consistency(cfg, num_classes: int, device, generator, rank: int = 0, world_size: int = 1):
    """(student, process, loss_fn, teacher denoiser or None) for a method "sct" / "scd" config."""
    from ..pretrained import load_denoiser

    sd = cfg.sigma_data
    scm = SCMConfig(mode=cfg.method, sigma_data=sd, **cfg.scm_args)
    guided = scm.guidance_range is not None
    teacher = None
    if cfg.method == "scd":
        teacher = load_denoiser(cfg.teacher, device=device)
        t_classes = int(teacher.num_classes or 0)
        if t_classes and num_classes and t_classes != num_classes:
            raise ValueError(f"the teacher has {t_classes} classes but the dataset {cfg.dataset!r} has {num_classes}")
        if t_classes and not num_classes:
            raise ValueError("the teacher is class-conditional: distil it with conditional=true on a labelled dataset")
        if num_classes and not t_classes:
            raise ValueError("the teacher is unconditional: set conditional=false")
    if teacher is not None and cfg.student_init == "teacher":
        if cfg.model_args:
            warnings.warn("student_init=teacher: the student copies the teacher's network; model_args are ignored")
        student = student_from_teacher(teacher, sd, guidance=guided)
    else:
        student = build_student(cfg.model, sd, guidance=guided, num_classes=num_classes, **cfg.model_args)
    velocity = TeacherVelocity(teacher, sd, guidance_scale=scm.guidance) if teacher is not None else None
    p_uncond = cfg.p_uncond if (cfg.method == "sct" and num_classes) else 0.0
    loss = SCMLoss(scm.replace(p_uncond=p_uncond), velocity, num_classes=num_classes, generator=generator,
                   rank=rank, world_size=world_size)
    return student.to(device), TrigFlow(sigma_data=sd), loss.to(device), teacher
