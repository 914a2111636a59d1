"""Helpers the commands share: run directories, labels for conditional models, generation."""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from ..sample import sample

__all__ = ["run_dir", "write_json", "generate", "guidance_conditioned", "add_sampling_arguments", "sampling_options",
           "pyplot"]


def run_dir(out, kind: str) -> Path:
    """OUT or runs/<kind>-<timestamp>, created."""
    path = Path(out) if out else Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path, obj) -> Path:
    from ..atomic import atomic_write_text

    return atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or None when matplotlib is not installed
    (plots are an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def add_sampling_arguments(p) -> None:
    p.add_argument("--solver", default=None, help="solver name (`fewstep solvers` lists them; default: the "
                                                  "benchmark's best per process); 'consistency' for students; or a "
                                                  "fitted solver's .json (`fewstep fit-solver`)")
    p.add_argument("--steps", type=int, default=None, help="model calls (NFE) per sample (default 10, or the "
                                                           "fitted solver's)")
    p.add_argument("--order", type=int, default=None, help="solver order (default: the solver's)")
    p.add_argument("--spacing", default=None, help="step spacing: vp-power (default), logsnr, time, quadratic, karras, linspace, leading, trailing")
    p.add_argument("--guidance", type=guidance_arg, default=None,
                   help="classifier-free guidance scale for class-conditional models (1 = conditional); for a "
                        "guidance-conditioned consistency student its input, or one per step: W1,W2,...")
    p.add_argument("--guidance-interval", default=None, metavar="LO,HI",
                   help="apply --guidance only where the noise level sigma / alpha is in (LO, HI] (Kynkaanniemi "
                        "et al. 2024), the conditional model elsewhere; e.g. 0.28,5.42")
    p.add_argument("--class", dest="label", type=int, default=None,
                   help="class label to sample (conditional models; default: labels spread over all classes)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and labels")
    p.add_argument("--batch-size", type=int, default=256, help="samples per solver call")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while sampling (logs, scripts)")


def guidance_arg(text: str):
    """--guidance: a scale W, or W1,W2,... (one per step, for guidance-conditioned students)."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or numbers separated by commas, got {text!r}")
    return vals[0] if len(vals) == 1 else vals


def sampling_options(args) -> dict:
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"steps must be a positive integer (model calls), got {args.steps}")
    solver = args.solver
    if solver is not None and solver.endswith(".json"):
        from ..solvers.fitted import FittedSolver

        solver = FittedSolver.load(solver)
    opts = {"solver": solver, "steps": args.steps, "order": args.order,
            "progress": not args.no_progress}
    if args.spacing:
        opts["spacing"] = args.spacing
    interval = getattr(args, "guidance_interval", None)
    if interval is not None:
        try:
            opts["guidance_interval"] = tuple(float(v) for v in interval.split(","))
        except ValueError:
            raise ValueError(f"--guidance-interval must be LO,HI (two numbers), got {interval!r}")
        if args.guidance is None:
            raise ValueError("--guidance-interval needs --guidance")
    return opts


def guidance_conditioned(D) -> bool:
    """Whether a loaded model is a consistency student that takes the CFG scale as an input
    (distilled with scm_args.guidance_range)."""
    return bool(getattr(getattr(D, "model", None), "guided", False))


def _student_guidance(D, guidance):
    """The guidance input of a guidance-conditioned consistency model (None for any other model, whose
    guidance is CFG): a scale, or a tuple of one scale per step; required, and warned about outside
    the scm_args.guidance_range it was trained on."""
    per_step = isinstance(guidance, (tuple, list))
    if not guidance_conditioned(D):
        if per_step:
            raise ValueError("one guidance scale per step (W1,W2,...) is for guidance-conditioned consistency "
                             "students; classifier-free guidance takes one scale")
        return None
    if guidance is None:
        raise ValueError("this consistency model is guidance-conditioned: give the CFG scale it should "
                         "imitate (--guidance / guidance=)")
    lo_hi = ((getattr(D, "config", None) or {}).get("scm_args") or {}).get("guidance_range")
    for w in (guidance if per_step else [guidance]):
        if lo_hi and not (lo_hi[0] <= w <= lo_hi[1]):
            warnings.warn(f"guidance {w:g} lies outside the range this student was distilled on "
                          f"[{lo_hi[0]:g}, {lo_hi[1]:g}]", stacklevel=3)
    return tuple(float(w) for w in guidance) if per_step else float(guidance)


def generate(D, n: int, *, seed: int = 0, label=None, guidance=None, batch_size: int = 256, device="cpu",
             progress: bool = True, **opts):
    """n samples from a loaded model (conditional models get labels spread over the classes, or
    `label`; guidance > 1 uses CFG with the null class, or is the input of a guidance-conditioned
    consistency model, which needs it). Returns (samples, labels, nfe, seconds)."""
    from ..progress import progress as bar

    student_w = _student_guidance(D, guidance)
    interval = opts.pop("guidance_interval", None)
    if interval is not None and student_w is not None:
        raise ValueError("--guidance-interval applies to classifier-free guidance, not to a guidance-conditioned "
                         "student (its --guidance is an input)")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, *D.sample_shape, generator=g)
    labels = None
    if D.num_classes:
        labels = (torch.full((n,), label) if label is not None else torch.arange(n) % D.num_classes).long()
        if label is not None and not (0 <= label < D.num_classes):
            raise ValueError(f"--class must be in 0..{D.num_classes - 1}")
    elif label is not None or guidance is not None:
        raise ValueError("this model is unconditional: --class / --guidance do not apply")
    outs, nfe = [], 0
    # stochastic samplers (consistency re-noising, SDE / DDIM eta > 0) draw from their own seeded stream
    opts.setdefault("generator", torch.Generator().manual_seed(seed + 1))
    t0 = time.perf_counter()
    for i in bar(range(0, n, batch_size), total=(n + batch_size - 1) // batch_size, desc="sampling",
                 enabled=progress):
        z = noise[i:i + batch_size].to(device)
        kw = dict(opts)
        if isinstance(student_w, tuple):  # one scale per step
            kw["step_cond"] = {**kw.get("step_cond", {}), "guidance": list(student_w)}
        elif student_w is not None:
            kw["cond"] = {**kw.get("cond", {}), "guidance": student_w}
        if labels is not None:
            y = labels[i:i + batch_size].to(device)
            kw["class_labels"] = y
            if student_w is None and guidance is not None and guidance != 1.0:
                kw["uncond"] = {"class_labels": torch.full_like(y, D.num_classes)}
                kw["guidance_scale"] = guidance
                if interval is not None:
                    kw["guidance_interval"] = interval
        with torch.no_grad():
            x, nfe = sample(D, z, return_nfe=True, **kw)
        outs.append(x.float().cpu())
    seconds = time.perf_counter() - t0
    return torch.cat(outs), labels, nfe, seconds
