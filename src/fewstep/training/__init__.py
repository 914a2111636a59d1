"""Training diffusion models fast: objectives on any process, timestep samplers (uniform, SpeeD,
logit-normal, EDM log-normal, IDDPM importance sampling), loss weightings (SpeeD, Min-SNR, P2, EDM,
EDM2 learned uncertainty), EMA, and a resumable, distributed trainer.

    from fewstep.training import Trainer, train, get_preset
    trainer = train(get_preset("digits-speed").replace(steps=2000, out="runs/speed"))
    x0 = fewstep.sample(trainer.denoiser(), torch.randn(16, 1, 8, 8), steps=10)
"""

from .checkpoint import latest_checkpoint, load_checkpoint
from .config import PRESETS, TrainConfig, build_process, get_preset, list_presets, resolve_config
from .ema import EMA, ema_beta
from .losses import DiffusionLoss
from .timesteps import (SAMPLERS, LogitNormal, LogNormal, LossSecondMoment, SpeeD, TimeGrid, TimestepSampler, Uniform,
                        make_sampler)
from .trainer import NonFiniteLossError, Trainer, train
from .weighting import (WEIGHTINGS, EDMWeighting, LearnedWeighting, MinSNR, NoWeighting, P2, SpeeDWeighting, Weighting,
                        make_weighting, x0_gain)

__all__ = [
    "Trainer", "train", "NonFiniteLossError", "TrainConfig", "PRESETS", "get_preset", "list_presets", "resolve_config",
    "build_process", "DiffusionLoss", "EMA", "ema_beta",
    "TimestepSampler", "TimeGrid", "Uniform", "SpeeD", "LogitNormal", "LogNormal", "LossSecondMoment", "SAMPLERS",
    "make_sampler",
    "Weighting", "NoWeighting", "SpeeDWeighting", "MinSNR", "P2", "EDMWeighting", "LearnedWeighting", "WEIGHTINGS",
    "make_weighting", "x0_gain",
    "latest_checkpoint", "load_checkpoint",
]
