"""Few-step generators by continuous-time consistency models: sCT and sCD on TrigFlow
(sCM, Lu & Song 2025, arXiv 2410.11081).

    from fewstep.distill import (SCMConfig, SCMLoss, TeacherVelocity, build_student, consistency_sample,
                                 distill, init_from_teacher)
    teacher = wrap(net, VPDiscrete.linear(), "eps")                  # any fewstep denoiser
    student = build_student("unet-digits", sigma_data=0.5, adaptive_double_norm=True)
    loss = SCMLoss(SCMConfig(mode="scd", tangent_warmup=1000), TeacherVelocity(teacher, 0.5))
    result = distill(student, loss, dataset, steps=5000, batch_size=128, lr=1e-4)
    x0 = consistency_sample(result.ema, torch.randn(16, 1, 8, 8), steps=2)   # t_mid = 1.1

Modules: trigflow.py (the student F), reparam.py (a student that starts as a teacher of any
process / prediction type), setup.py (sCT / sCD inside training.Trainer: `fewstep distill`),
teacher.py (any denoiser -> TrigFlow velocity, CFG),
tangent.py (g by one JVP or a finite difference), adaptive_weight.py (w(t)), scm.py (Algorithm 1),
sampling.py (1-step / 2-step / multistep sampling, the `consistency` solver), loop.py (training).
"""

from .adaptive_weight import AdaptiveWeight
from .loop import DistillResult, batch_source, copy_student, distill
from .reparam import TeacherParameterised, build_student_from_spec, student_from_teacher, student_spec
from .sampling import DEFAULT_T_MID, consistency, consistency_sample, consistency_times
from .scm import SCMConfig, SCMLoss, sample_t, tangent_warmup
from .tangent import model_tangent, normalize_tangent, same_rng, scm_tangent
from .teacher import TeacherVelocity, trigflow_to_process
from .trigflow import DEFAULT_TIME_SCALE, GuidanceEmbedding, TrigFlowModel, build_student, init_from_teacher

__all__ = [
    "TrigFlowModel", "GuidanceEmbedding", "build_student", "init_from_teacher", "DEFAULT_TIME_SCALE",
    "TeacherVelocity", "trigflow_to_process",
    "model_tangent", "scm_tangent", "normalize_tangent", "same_rng",
    "AdaptiveWeight",
    "SCMConfig", "SCMLoss", "sample_t", "tangent_warmup",
    "consistency", "consistency_sample", "consistency_times", "DEFAULT_T_MID",
    "distill", "DistillResult", "batch_source", "copy_student",
    "TeacherParameterised", "student_from_teacher", "student_spec", "build_student_from_spec",
]
