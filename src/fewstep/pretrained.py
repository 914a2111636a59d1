"""Load trained models as denoisers: from a training checkpoint, a run directory, a model file or a shipped name.

    D = load_denoiser("runs/digits-teacher")      # latest checkpoint of a run, EMA weights
    D = load_denoiser("digits-teacher")           # shipped in the package (assets/models/)
    D = load_denoiser("models/teacher.json")      # a model file written by `fewstep export`
    S = load_denoiser("digits-scd")               # a consistency student: sample(S, z, solver="consistency", steps=2)
    x = fewstep.sample(D, torch.randn(16, *D.sample_shape), steps=10)

Shipped models are model files (`fewstep.export`: a training checkpoint reduced to its EMA weights and
its JSON config), written by `scripts/ship_model.py`; `fewstep export` writes one anywhere, and
`load_denoiser("path/name.json")` loads it.

Fitted solvers (`fewstep fit-solver`) travel with a model: those in a shipped model's JSON
("fitted_solvers") and those in a run directory's `solvers/` folder are loaded into
`D.fitted_solvers` ({(model calls, guidance scale or None): FittedSolver}), and `sample()` without
`solver=` uses the one for the number of calls and the guidance scale asked instead of the fixed
default (scripts/ship_solvers.py ships fits with a shipped model).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .predictions import Denoiser, wrap

__all__ = ["load_denoiser", "shipped_models", "SHIPPED_DIR", "LoadedModel"]

SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "models"


def shipped_models() -> list[str]:
    """Names of the models shipped in the package."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json")) if SHIPPED_DIR.is_dir() else []


class LoadedModel(Denoiser):
    """A Denoiser that also knows its training config, sample shape and number of classes."""

    config: dict
    sample_shape: tuple
    num_classes: int | None
    source: str
    method: str
    fitted_solvers: dict


def _read(spec) -> tuple[dict, dict, str]:
    """(meta, weights, source) for a shipped name, a model file (fewstep.export), a checkpoint JSON or a
    run directory (EMA weights where the checkpoint has them)."""
    from .export import is_model_file, load_training_weights, read_model

    if isinstance(spec, str) and spec in shipped_models():
        return (*read_model(SHIPPED_DIR / f"{spec}.json"), f"shipped:{spec}")
    path = Path(spec)
    if not path.exists():
        names = ", ".join(shipped_models()) or "none"
        raise FileNotFoundError(f"{spec!r} is neither a model file, checkpoint or run directory nor a shipped "
                                f"model ({names})")
    if is_model_file(path):
        return (*read_model(path), str(path))
    return (*load_training_weights(path), str(path))


def load_denoiser(spec, device="cpu", model_dtype: torch.dtype | None = None) -> LoadedModel:
    """The trained network at `spec` (EMA weights) wrapped as a denoiser on its process."""
    from .models import build_model_from_config
    from .training.config import TrainConfig, build_process

    meta, weights, source = _read(spec)
    cfg = TrainConfig.from_dict(meta["config"])
    if not meta.get("model_config"):
        raise ValueError(f"{source}: the checkpoint has no model config")
    if meta.get("student"):  # a consistency model (fewstep.distill): a TrigFlow student
        from .distill.reparam import build_student_from_spec

        net = build_student_from_spec(meta["student"])
    else:
        net = build_model_from_config(meta["model_config"])
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{source}: weights do not fit the model config: {str(e).splitlines()[0]}") from None
    net = net.to(device).eval().requires_grad_(False)
    D = wrap(net, build_process(cfg.process, cfg.process_args), cfg.prediction, sigma_data=cfg.sigma_data,
             model_dtype=model_dtype)
    D.__class__ = LoadedModel
    D.config = meta["config"]
    mc = meta["model_config"]
    D.sample_shape = tuple(meta.get("sample_shape") or _shape_of(mc))
    D.num_classes = meta.get("num_classes")
    D.source = source
    D.method = cfg.method  # "diffusion", or "sct" / "scd" for a consistency model (sample it with solver="consistency")
    D.fitted_solvers = _fitted_solvers(meta, spec)
    return D


def _fitted_solvers(meta: dict, spec) -> dict:
    """{(model calls, guidance scale or None): FittedSolver} shipped in the meta or saved in a run directory's
    solvers/ folder (later files replace earlier ones for the same key)."""
    from .solvers.fitted import FittedSolver, guidance_key, load_fitted_solvers

    found = [FittedSolver.from_dict(d) for d in meta.get("fitted_solvers", [])]
    if not (isinstance(spec, str) and spec in shipped_models()):
        found += load_fitted_solvers(Path(spec) / "solvers")
    return {(fs.nfe, guidance_key(fs.meta.get("guidance"))): fs for fs in found}


def _shape_of(model_config: dict) -> tuple:
    if "resolution" in model_config:
        return (model_config["in_channels"], model_config["resolution"], model_config["resolution"])
    return (model_config.get("dim") or model_config.get("in_dim") or model_config.get("in_channels"),)
