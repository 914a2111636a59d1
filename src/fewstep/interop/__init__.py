"""Interop with other diffusion libraries (optional extras).

diffusers (`pip install 'fewstep[diffusers]'`):

- `load_diffusers_unet(path)` / `denoiser_from_diffusers(unet, scheduler)`: a diffusers UNet as a
  fewstep denoiser, on the discrete VP process of its scheduler (fewstep.interop.diffusers);
- `FewstepScheduler`: a diffusers scheduler that runs fewstep's solvers inside diffusers pipelines
  (fewstep.interop.scheduler).

Importing fewstep or this package never imports diffusers: the names are resolved on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_diffusers_unet": "diffusers",
    "denoiser_from_diffusers": "diffusers",
    "process_from_scheduler_config": "diffusers",
    "prediction_from_diffusers": "diffusers",
    "DiffusersNetwork": "diffusers",
    "FewstepScheduler": "scheduler",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
