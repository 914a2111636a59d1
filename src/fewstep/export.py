"""Model files: a training checkpoint reduced to what sampling and distillation need.

    fewstep export runs/fashion-teacher32 models/fashion-teacher --dtype float16
    D = load_denoiser("models/fashion-teacher.json")
    fewstep distill fashion-scd teacher=models/fashion-teacher.json ...

A training checkpoint holds the weights, their EMA and the optimiser state (28 MB for the 1.74M-
parameter 28x28 UNet); a model file holds the EMA weights only (7.0 MB in float32, 3.5 MB in float16 /
bfloat16) in NAME.safetensors, and in NAME.json what loading needs: the training and model configs,
the classes, step and images seen, the student spec of a consistency model, and the fitted solvers
of a run directory (RUN/solvers/). `load_denoiser`, `fewstep sample / eval` and the `teacher=` /
`student_init=` settings of `fewstep distill` take its JSON path; weights stored in half precision
are cast back to the network's float32 on load. The models shipped in the package
(assets/models/, `fewstep models`) are model files. It cannot resume training (no optimiser state).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .atomic import atomic_write_bytes, atomic_write_text

__all__ = ["export_model", "read_model", "is_model_file", "load_training_weights", "MODEL_FORMAT", "DTYPES"]

MODEL_FORMAT = "fewstep-model-1"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_KEEP = ("config", "model_config", "num_classes", "step", "images_seen", "student", "sample_shape")


def _paths(out) -> tuple[Path, Path]:
    """(NAME.json, NAME.safetensors) for OUT = NAME or NAME.json."""
    out = Path(out)
    stem = out.name[:-len(".json")] if out.name.endswith(".json") else out.name
    if not stem:
        raise ValueError(f"model file name is empty: {str(out)!r}")
    return out.parent / f"{stem}.json", out.parent / f"{stem}.safetensors"


def export_model(checkpoint, out, dtype: str = "float32", teacher: str | None = None) -> Path:
    """Write the model file OUT(.json / .safetensors) from a training checkpoint (JSON or run directory):
    its EMA weights (the raw weights if it has no EMA) in `dtype`; `teacher` replaces the teacher
    recorded in a student's config (e.g. by the name the teacher is shipped under). Returns the JSON path."""
    from safetensors.torch import save

    from .solvers.fitted import load_fitted_solvers

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    json_path, tensor_path = _paths(out)
    meta, weights = load_training_weights(checkpoint)
    if not meta.get("model_config"):
        raise ValueError(f"{checkpoint}: the checkpoint has no model config")
    cast = {}
    for k, v in weights.items():
        w = v.to(DTYPES[dtype]) if v.is_floating_point() else v
        if w.is_floating_point() and not torch.isfinite(w).all():
            raise ValueError(f"{checkpoint}: weight {k} does not fit {dtype} (largest |w| = {v.abs().max():.4g})")
        cast[k] = w.contiguous()
    keep = {k: meta[k] for k in _KEEP if k in meta}
    keep["config"] = {**keep["config"], "out": None, **({"teacher": teacher} if teacher else {})}
    fits = load_fitted_solvers(Path(checkpoint) / "solvers")
    if fits:
        keep["fitted_solvers"] = [fs.to_dict() for fs in fits]
    atomic_write_bytes(tensor_path, save(cast, metadata={"format": MODEL_FORMAT, "step": str(meta.get("step"))}))
    atomic_write_text(json_path, json.dumps({**keep, "format": MODEL_FORMAT, "dtype": dtype,
                                             "tensors": tensor_path.name}, indent=1))
    return json_path


def _weights(tensors: dict, source) -> dict:
    """The EMA weights of a checkpoint's tensors, else its raw weights."""
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    weights = ema or {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if not weights:
        raise ValueError(f"{source}: the checkpoint holds no model weights (model.* / ema.*)")
    return weights


def is_model_file(path) -> bool:
    """Whether `path` is a model file's JSON (format fewstep-model-1)."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".json"):
        return False
    try:
        return json.loads(path.read_text()).get("format") == MODEL_FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_model(path) -> tuple[dict, dict]:
    """(meta, weights) of a model file's JSON path."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads(path.read_text())
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path} is not a fewstep model file (format {MODEL_FORMAT})")
    tensor_path = path.parent / meta.get("tensors", f"{path.stem}.safetensors")
    if not tensor_path.is_file():
        raise ValueError(f"model file {path} names a missing tensor file {tensor_path.name}")
    return meta, load_file(str(tensor_path), device="cpu")


def load_training_weights(checkpoint) -> tuple[dict, dict]:
    """(meta, weights) of a training checkpoint (JSON or run directory): EMA weights, else raw."""
    from .training.checkpoint import load_checkpoint

    meta, tensors = load_checkpoint(checkpoint)
    return meta, _weights(tensors, checkpoint)
