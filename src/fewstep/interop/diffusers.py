"""diffusers models as fewstep denoisers.

A diffusers UNet trained with a DDPM-style scheduler is a network on a discrete VP process: the
scheduler config fixes the betas (hence `VPDiscrete`) and the prediction type, and the network
takes the discrete timestep n = t N - 1 (`VPDiscrete.model_time`). This module turns such a
(network, scheduler config) pair into a fewstep `Denoiser`:

- `process_from_scheduler_config(config)`: the `VPDiscrete` of a scheduler config, with betas and
  alphas_cumprod computed exactly as diffusers computes them (float32), so both libraries solve
  the same ODE;
- `prediction_from_diffusers(prediction_type)`: epsilon -> eps, sample -> x0, v_prediction -> v;
- `denoiser_from_diffusers(unet, scheduler)`: in-memory objects;
- `load_diffusers_unet(path)`: a directory written by `save_pretrained` (a model directory with a
  scheduler_config.json beside it or in a `scheduler` folder, or a saved pipeline such as
  DDPMPipeline with `unet/` and `scheduler/`).

Only the loaders need diffusers (imported when called); the config helpers are plain torch.
Sampler-side options of the scheduler (clip_sample, thresholding, variance_type for ancestral
sampling) are not part of the denoiser; fewstep's `sample(thresholding=...)` covers thresholding.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..predictions import Denoiser, wrap
from ..processes import VPDiscrete

__all__ = [
    "require_diffusers",
    "scheduler_config",
    "betas_from_config",
    "process_from_scheduler_config",
    "prediction_from_diffusers",
    "DiffusersNetwork",
    "denoiser_from_diffusers",
    "load_diffusers_unet",
]

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SCHEDULER_CONFIG = "scheduler_config.json"
MODEL_CONFIG = "config.json"


def require_diffusers():
    """The diffusers module, or an ImportError that says how to install the extra."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError("fewstep's diffusers interop needs the optional dependency diffusers: "
                          "pip install 'fewstep[diffusers]'") from e
    return diffusers


# ----------------------------------------------------------------------------------------------
# scheduler config -> process, prediction
# ----------------------------------------------------------------------------------------------


def scheduler_config(scheduler) -> dict:
    """A plain dict from a diffusers scheduler, its `.config`, or a mapping."""
    cfg = getattr(scheduler, "config", scheduler)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"expected a diffusers scheduler or its config (a mapping), got {type(scheduler).__name__}")
    return dict(cfg)


def _cosine_betas(n: int, max_beta: float = 0.999) -> Tensor:
    """iDDPM's "squaredcos_cap_v2" betas as diffusers builds them (python floats, then float32)."""
    def alpha_bar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float32)


def betas_from_config(config) -> Tensor:
    """The float32 betas of a DDPM-style scheduler config, computed as diffusers does.

    Supports trained_betas and beta_schedule linear, scaled_linear (linear in sqrt(beta)) and
    squaredcos_cap_v2 (iDDPM cosine, betas capped at 0.999).
    """
    cfg = scheduler_config(config)
    name = cfg.get("_class_name", "the scheduler")
    if cfg.get("trained_betas") is not None:
        return torch.tensor(cfg["trained_betas"], dtype=torch.float32).flatten()
    if "beta_schedule" not in cfg and "beta_start" not in cfg:
        raise ValueError(f"{name} config has no betas (beta_schedule / trained_betas): fewstep's diffusers "
                         "interop supports discrete VP (DDPM-style) schedulers")
    n = int(cfg.get("num_train_timesteps", 1000))
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    schedule = cfg.get("beta_schedule", "linear")
    if schedule == "linear":
        return torch.linspace(b0, b1, n, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        return _cosine_betas(n)
    raise ValueError(f"beta_schedule {schedule!r} is not supported; known: {', '.join(BETA_SCHEDULES)} "
                     "(or trained_betas)")


def process_from_scheduler_config(config) -> VPDiscrete:
    """The discrete VP process of a diffusers scheduler (object, `.config` or dict).

    alphas_cumprod = cumprod(1 - betas) in float32 as in diffusers, so fewstep and diffusers see the
    same noise levels. Zero terminal SNR (rescale_betas_zero_snr) has lambda = -inf and is refused.
    """
    cfg = scheduler_config(config)
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True gives zero terminal SNR (lambda = -inf), which fewstep's "
                         "VPDiscrete does not support")
    betas = betas_from_config(cfg)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return VPDiscrete(alphas_cumprod=alphas_cumprod.to(torch.float64))


def prediction_from_diffusers(prediction_type: str) -> str:
    """fewstep's prediction name for a diffusers prediction_type."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported; known: {', '.join(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[prediction_type]


def _learned_variance(cfg: dict) -> bool:
    return cfg.get("variance_type") in ("learned", "learned_range")


# ----------------------------------------------------------------------------------------------
# network and denoiser
# ----------------------------------------------------------------------------------------------


class DiffusersNetwork:
    """A diffusers model as a fewstep network f(x, t, **cond) -> prediction.

    Calls `model(x, t, **cond)` positionally (UNet2DModel, UNet2DConditionModel: sample, timestep)
    and returns `.sample`. x is cast to the model's dtype and device; the timestep stays float32 (a
    fractional discrete index must not be rounded by a half-precision cast), and the output comes
    back on x's device. With `learned_variance` the variance channels (the second half, as in
    diffusers' learned / learned_range variance types) are dropped. The call runs under
    torch.no_grad() unless `grad=True` (training or distillation through the model).
    """

    def __init__(self, model, learned_variance: bool = False, grad: bool = False):
        self.model = model
        self.learned_variance = learned_variance
        self.grad = grad

    def _device_dtype(self):
        p = next(self.model.parameters(), None)
        return (p.device, p.dtype) if p is not None else (None, None)

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        device, dtype = self._device_dtype()
        x_in = x.to(device=device or x.device, dtype=dtype or x.dtype)
        t_in = torch.as_tensor(t).to(device=x_in.device, dtype=torch.float32)
        with contextlib.nullcontext() if self.grad else torch.no_grad():
            out = self.model(x_in, t_in, **cond, return_dict=False)[0]
        if self.learned_variance and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]
        return out.to(x.device)

    def __repr__(self):
        return f"DiffusersNetwork({type(self.model).__name__})"


def denoiser_from_diffusers(unet, scheduler, *, grad: bool = False) -> Denoiser:
    """A fewstep `Denoiser` from an in-memory diffusers model and scheduler (or scheduler config).

    The process is `process_from_scheduler_config(scheduler)`, the prediction type the scheduler's
    prediction_type, and the network is called with the discrete timestep `process.model_time(t)`.
    """
    cfg = scheduler_config(scheduler)
    process = process_from_scheduler_config(cfg)
    prediction = prediction_from_diffusers(cfg.get("prediction_type", "epsilon"))
    net = DiffusersNetwork(unet, learned_variance=_learned_variance(cfg), grad=grad)
    return wrap(net, process, prediction)


# ----------------------------------------------------------------------------------------------
# loading from a directory
# ----------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _model_dir(root: Path, subfolder: str | None) -> Path:
    """The directory holding the model's config.json: root/subfolder, root, or root/unet."""
    if subfolder is not None:
        d = root / subfolder
        if not (d / MODEL_CONFIG).is_file():
            raise FileNotFoundError(f"no diffusers model config: {d / MODEL_CONFIG} does not exist")
        return d
    for d in (root, root / "unet"):
        if (d / MODEL_CONFIG).is_file():
            return d
    raise FileNotFoundError(f"no diffusers model config in {root}: looked for {root / MODEL_CONFIG} and "
                            f"{root / 'unet' / MODEL_CONFIG} (give subfolder= for another layout)")


def _scheduler_config_path(root: Path, model_dir: Path) -> Path:
    """scheduler_config.json beside the model, in a `scheduler` folder, or in the pipeline's."""
    candidates = [model_dir / SCHEDULER_CONFIG, model_dir / "scheduler" / SCHEDULER_CONFIG,
                  root / SCHEDULER_CONFIG, root / "scheduler" / SCHEDULER_CONFIG,
                  model_dir.parent / "scheduler" / SCHEDULER_CONFIG]
    seen = []
    for c in candidates:
        if c not in seen:
            seen.append(c)
            if c.is_file():
                return c
    raise FileNotFoundError(f"no scheduler config for the model in {model_dir}: looked for "
                            f"{', '.join(str(c) for c in seen)} (or pass scheduler=)")


def _model_class(name, where: Path):
    diffusers = require_diffusers()
    from diffusers import ModelMixin

    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, ModelMixin)):
        raise ValueError(f"{where / MODEL_CONFIG}: _class_name {name!r} is not a diffusers model class "
                         "(expected e.g. UNet2DModel or UNet2DConditionModel)")
    return cls


def load_diffusers_unet(path, subfolder: str | None = None, device="cpu", dtype: torch.dtype | None = None, *,
                        scheduler=None, grad: bool = False) -> Denoiser:
    """Load a diffusers UNet saved with `save_pretrained` as a fewstep `Denoiser`.

    path: a model directory (config.json + weights) with scheduler_config.json beside it or in
    a `scheduler` folder, or a saved pipeline directory (`unet/`, `scheduler/`); `subfolder`
    picks the model folder inside `path`. The class comes from config.json's _class_name
    (UNet2DModel, UNet2DConditionModel, or another diffusers model called as model(x, t, ...)).
    `scheduler` (a diffusers scheduler or config dict) overrides the saved scheduler config.
    The model is loaded locally only (no download), moved to `device` in `dtype`, in eval mode.
    Raises FileNotFoundError naming the path when the directory or a config is missing.
    """
    require_diffusers()
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"diffusers model directory not found: {root}")
    model_dir = _model_dir(root, subfolder)
    cls = _model_class(_read_json(model_dir / MODEL_CONFIG).get("_class_name"), model_dir)
    if scheduler is None:
        scheduler = _read_json(_scheduler_config_path(root, model_dir))
    model = cls.from_pretrained(str(model_dir), torch_dtype=dtype, local_files_only=True)
    model = model.to(device).eval()
    return denoiser_from_diffusers(model, scheduler, grad=grad)
