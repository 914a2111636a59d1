"""`TrainConfig`: the frozen, typed configuration of a training run, named presets, YAML in/out.

    cfg = get_preset("digits-speed")
    cfg = cfg.with_overrides(["steps=2000", "timestep_args.k=2", "lr=1e-3"])
    cfg.save("run/config.yaml"); TrainConfig.load("run/config.yaml") == cfg

Every bad input (unknown preset, unknown key, a value of the wrong type or out of range, an
unknown sampler / weighting option) raises ValueError with a one-line message.

Time inputs: the model presets embed the network's time input with time_scale = 1, which suits
VPDiscrete's index 0..999; for continuous processes give the model a larger scale through
`model_args` (e.g. time_scale: 1000 for t in [0, 1]) or a process with its own time_scale.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

__all__ = ["TrainConfig", "PRESETS", "get_preset", "list_presets", "resolve_config", "build_process",
           "parse_overrides"]

OPTIMIZERS = ("adamw", "radam")
PRECISIONS = ("fp32", "bf16")
METHODS = ("diffusion", "sct", "scd")
_PROCESS_FACTORIES = ("vp", "ddpm", "vp-discrete", "sd", "scaled-linear", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (see the field comments; defaults suit digits).

    data:        dataset (a `fewstep.data.load_dataset` name), data_root, data_args (loader options,
                 e.g. {n: 10000} for toys)
    model:       model (a `fewstep.models` preset), model_args (overrides, e.g. {dropout: 0.0})
    diffusion:   process (a `get_process` name), process_args (e.g. {num_steps: 1000} for "vp",
                 {beta_1: 20} for "vp-linear"), prediction, sigma_data
    objective:   timesteps + timestep_args (see training/timesteps.py), weighting + weighting_args
                 (training/weighting.py), learned_weighting (EDM2 uncertainty on top), conditional,
                 p_uncond (label dropout for classifier-free guidance)
    optimiser:   optimizer (adamw | radam), lr, betas, weight_decay, adam_eps, warmup_steps (linear
                 LR warm-up), lr_cooldown (the last lr_cooldown steps before `steps` bring the LR
                 linearly to 0: a warm-up / stable / decay schedule, so a constant-LR run can be
                 resumed with a larger `steps` and a cool-down), grad_clip (max global grad norm;
                 0 = off)
    schedule:    steps (optimiser steps), batch_size (global: all ranks and accumulation steps
                 together), accum_steps (gradient accumulation)
    EMA:         ema_half_life (images), ema_warmup_ratio (None = off)
    run:         precision (fp32 | bf16: autocast on CUDA only), seed, device (auto | cpu | cuda...)
    output:      out (directory), checkpoint_every (steps; 0 = at the end only), keep_checkpoints
                 (the newest kept), keep_every (k > 0: the checkpoints of steps divisible by k are
                 kept besides, never pruned), log_every, progress, tensorboard, max_bad_steps
                 (consecutive non-finite steps tolerated before stopping)
    consistency: method ("diffusion" = the denoising objective above; "sct" / "scd" = sCM consistency
                 training / distillation, fewstep.distill: the model becomes a TrigFlow student on
                 TrigFlow(sigma_data): process, prediction, timesteps and weighting are then set to
                 trigflow / trigflow / uniform (unused) / none), teacher (sCD: a
                 checkpoint, run directory or shipped model name), student_init ("teacher": the
                 student starts as the teacher, any process / prediction; "scratch": the preset's
                 initialisation with model_args; a checkpoint, run directory or shipped model name:
                 the student starts as that model, e.g. an earlier student, for sCD or sCT; a
                 copied student takes only dropout from model_args),
                 scm_args (SCMConfig options: P_mean, P_std, tangent_warmup, tangent_c,
                 tangent_norm, tangent, adaptive_weight, guidance, ...)
    """

    name: str = "custom"
    # data
    dataset: str = "digits"
    data_root: str | None = None
    data_args: dict = dataclasses.field(default_factory=dict)
    # model
    model: str = "unet-digits"
    model_args: dict = dataclasses.field(default_factory=dict)
    # diffusion
    process: str = "vp"
    process_args: dict = dataclasses.field(default_factory=dict)
    prediction: str = "eps"
    sigma_data: float = 0.5
    # objective
    timesteps: str = "uniform"
    timestep_args: dict = dataclasses.field(default_factory=dict)
    weighting: str = "none"
    weighting_args: dict = dataclasses.field(default_factory=dict)
    learned_weighting: bool = False
    conditional: bool = True
    p_uncond: float = 0.1
    # optimiser
    optimizer: str = "adamw"
    lr: float = 5e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    warmup_steps: int = 200
    lr_cooldown: int = 0
    grad_clip: float = 1.0
    # schedule
    steps: int = 10000
    batch_size: int = 64
    accum_steps: int = 1
    # EMA
    ema_half_life: float = 25000.0
    ema_warmup_ratio: float | None = 0.1
    # run
    precision: str = "fp32"
    seed: int = 0
    device: str = "auto"
    # output
    out: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    keep_every: int = 0
    log_every: int = 50
    progress: bool = True
    tensorboard: bool = False
    max_bad_steps: int = 10
    # consistency models (sCM)
    method: str = "diffusion"
    teacher: str | None = None
    student_init: str = "teacher"
    scm_args: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _coerce(f.name, hints[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        if self.method in ("sct", "scd"):  # a consistency model is a TrigFlow F on TrigFlow(sigma_data)
            for name, value in (("process", "trigflow"), ("process_args", {"sigma_data": self.sigma_data}),
                                ("prediction", "trigflow"), ("timesteps", "uniform"), ("timestep_args", {}),
                                ("weighting", "none"), ("weighting_args", {}), ("learned_weighting", False)):
                object.__setattr__(self, name, value)
        self.validate()

    # ----- validation -----
    def check_sources(self) -> None:
        """Refuse a student_init that names no model here. Not part of `validate`: a finished run's
        config (in its checkpoints and model files) must load after its init has been moved or deleted,
        or from another working directory. The Trainer calls this before it loads anything, unless it
        resumes a consistency checkpoint (whose student it rebuilds from the checkpoint's own spec)."""
        if self.student_init not in ("teacher", "scratch"):
            from ..pretrained import shipped_models

            if not (self.student_init in shipped_models() or Path(self.student_init).exists()):
                raise ValueError(f"config: student_init must be 'teacher', 'scratch' or a checkpoint / run "
                                 f"directory / model file / shipped model, got {self.student_init!r} (not found)")

    def validate(self) -> None:
        from ..predictions import PREDICTIONS
        from .timesteps import make_sampler, sampler_class
        from .weighting import make_weighting, weighting_class
        from ._util import check_kwargs

        def need(cond, msg):
            if not cond:
                raise ValueError(f"config: {msg}")

        need(self.prediction in PREDICTIONS, f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}")
        need(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(0 <= self.lr_cooldown <= self.steps,
             f"lr_cooldown must lie in [0, steps = {self.steps}], got {self.lr_cooldown}")
        need(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        need(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}")
        need(self.batch_size % self.accum_steps == 0,
             f"batch_size ({self.batch_size}) must be divisible by accum_steps ({self.accum_steps})")
        need(self.ema_half_life >= 0, f"ema_half_life must be >= 0 images, got {self.ema_half_life}")
        need(self.ema_warmup_ratio is None or self.ema_warmup_ratio > 0,
             f"ema_warmup_ratio must be positive or null, got {self.ema_warmup_ratio}")
        need(0.0 <= self.p_uncond < 1.0, f"p_uncond must lie in [0, 1), got {self.p_uncond}")
        need(self.sigma_data > 0, f"sigma_data must be positive, got {self.sigma_data}")
        need(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        need(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        need(self.keep_every >= 0, f"keep_every must be >= 0 (0 = off), got {self.keep_every}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        need(self.max_bad_steps >= 0, f"max_bad_steps must be >= 0, got {self.max_bad_steps}")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
             f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        need(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "scd":
            need(bool(self.teacher),
                 "method=scd needs teacher= (a checkpoint, run directory, model file or shipped model name)")
        if self.method == "sct":
            need(not self.teacher, "method=sct trains from data and takes no teacher (use method=scd to distil)")
        if self.method != "diffusion":
            from ..distill.scm import SCMConfig

            fields = {f.name for f in dataclasses.fields(SCMConfig)} - {"mode", "sigma_data"}
            bad = sorted(set(self.scm_args) - fields)
            need(not bad, f"unknown scm_args {bad} (mode and sigma_data come from method and sigma_data)")
            try:
                SCMConfig(mode=self.method, sigma_data=self.sigma_data, **self.scm_args)
            except (TypeError, ValueError) as e:
                raise ValueError(f"config: scm_args: {e}") from None
        elif self.scm_args or self.teacher:
            need(False, "teacher / scm_args are for method=sct or method=scd")
        sampler = sampler_class(self.timesteps)
        check_kwargs(sampler, self.timestep_args, f"timestep sampler {sampler.name!r}", skip=("process",))
        weighting = weighting_class(self.weighting)
        check_kwargs(weighting, self.weighting_args, f"weighting {weighting.name!r}",
                     skip=("process", "prediction", "sigma_data"))
        from ..processes import _KINDS

        known = sorted({*_PROCESS_FACTORIES, *_KINDS})
        need(self.process in known, f"unknown process {self.process!r}; known: {', '.join(known)}")
        process = build_process(self.process, self.process_args)
        try:  # build them once so that bad values fail here, with the option's own message
            make_sampler(self.timesteps, process, **self.timestep_args)
            make_weighting(self.weighting, process, self.prediction, self.sigma_data, **self.weighting_args)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config: {e}") from None
        from ..models import list_presets as model_presets

        need(self.model in model_presets(), f"unknown model preset {self.model!r}; valid: {', '.join(model_presets())}")
        from ..data import ALIASES, known_names

        need(self.dataset.lower() in known_names() or self.dataset.lower() in ALIASES,
             f"unknown dataset {self.dataset!r}; known: {', '.join(known_names())}")

    # ----- dict / YAML / JSON -----
    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ValueError(f"config must be a mapping of keys to values, got {type(d).__name__}")
        _check_keys(d)
        return cls(**d)

    def replace(self, **changes) -> "TrainConfig":
        _check_keys(changes)
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides) -> "TrainConfig":
        """Apply "key=value" strings (values parsed as YAML; "a.b=v" sets key b of dict field a)."""
        d = self.to_dict()
        for key, value in parse_overrides(overrides):
            top, _, sub = key.partition(".")
            _check_keys({top: None})
            if sub:
                if not isinstance(d[top], dict):
                    raise ValueError(f"config: {top} is not a mapping, cannot set {key}")
                d[top] = {**d[top], sub: value}
            else:
                d[top] = value
        return TrainConfig.from_dict(d)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "TrainConfig":
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"config: invalid YAML ({str(e).splitlines()[0]})") from None
        return cls.from_dict(d or {})

    def save(self, path) -> Path:
        """Write YAML (.yaml / .yml) or JSON (.json), atomically."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2) if path.suffix == ".json" else self.to_yaml()
        from ..atomic import atomic_write_text

        atomic_write_text(path, text)
        return path

    @classmethod
    def load(cls, path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        text = path.read_text()
        if path.suffix == ".json":
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as e:
                raise ValueError(f"config: invalid JSON in {path} ({e})") from None
        return cls.from_yaml(text)

    @property
    def micro_batch_size(self) -> int:
        """Global size of one accumulation micro-batch."""
        return self.batch_size // self.accum_steps


def _check_keys(d: dict) -> None:
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise ValueError(f"config: unknown key(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")


def _coerce(name: str, hint, value):
    """Check (and gently convert) a field value against its annotation."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    bad = ValueError(f"config: {name} must be {_type_name(hint)}, got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad
        return value
    if hint is float:
        value = _number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
        if math.isnan(value):
            raise bad
        return value
    if hint is str:
        if not isinstance(value, str) or not value:
            raise bad
        return value
    if hint is dict:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if hint is tuple:
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise bad
        return tuple(float(v) for v in value)
    return value


def _type_name(hint) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string",
            dict: "a mapping", tuple: "a list of numbers"}.get(hint, str(hint))


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _number(value):
    """YAML 1.1 reads 1e-3 as a string; numbers written that way become floats."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def parse_overrides(overrides) -> list[tuple[str, Any]]:
    """["a=1", "b.c=x"] -> [("a", 1), ("b.c", "x")], values parsed as YAML scalars / lists."""
    import yaml

    out = []
    for item in overrides or []:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key:
            raise ValueError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        out.append((key, _number(value)))
    return out


# ------------------------------------------------------------------------------------------------
# processes
# ------------------------------------------------------------------------------------------------


def build_process(name: str, args: dict | None = None):
    """A process from a name and keyword options: "vp"/"ddpm" -> VPDiscrete.linear(**args), "sd" ->
    scaled_linear, "cosine" -> VPDiscrete.cosine, other names -> the process class(**args)."""
    from ..processes import _KINDS, VPDiscrete, get_process

    args = dict(args or {})
    if not args:
        return get_process(name)
    factories = {"vp": VPDiscrete.linear, "ddpm": VPDiscrete.linear, "vp-discrete": VPDiscrete.linear,
                 "sd": VPDiscrete.scaled_linear, "scaled-linear": VPDiscrete.scaled_linear,
                 "cosine": VPDiscrete.cosine, **_KINDS}
    if name not in factories:
        raise ValueError(f"unknown process {name!r}; known: {', '.join(factories)}")
    try:
        return factories[name](**args)
    except TypeError as e:
        raise ValueError(f"bad process_args for {name!r}: {e}") from None


# ------------------------------------------------------------------------------------------------
# presets
# ------------------------------------------------------------------------------------------------


def _digits(**kw) -> TrainConfig:
    base = dict(name="digits", dataset="digits", model="unet-digits", process="vp", prediction="eps",
                conditional=True, p_uncond=0.1, lr=5e-4, batch_size=64, steps=10000, warmup_steps=200,
                ema_half_life=25000.0, ema_warmup_ratio=0.1, checkpoint_every=2000, log_every=50)
    base.update(kw)
    return TrainConfig(**base)


def _fashion(**kw) -> TrainConfig:
    base = dict(name="fashion", dataset="fashion-mnist", model="unet-mnist", process="vp", prediction="eps",
                conditional=True, p_uncond=0.1, lr=2e-4, batch_size=128, steps=50000, warmup_steps=1000,
                ema_half_life=500000.0, ema_warmup_ratio=0.05, checkpoint_every=5000, log_every=100)
    base.update(kw)
    return TrainConfig(**base)


_SPEED = dict(timesteps="speed", timestep_args={"k": 5.0, "tau": 700}, weighting="speed",
              weighting_args={"lam": 0.6, "tau": 700})

# what every sCM preset shares (sCM's optimiser settings, no lr warm-up, EMA from the first step)
_SCM = dict(optimizer="radam", betas=(0.9, 0.99), warmup_steps=0, grad_clip=1.0, ema_warmup_ratio=None)


def _scm_args(tangent_warmup: int) -> dict:
    return {"tangent_warmup": tangent_warmup, "adaptive_weight": False}


def _digits_sct(**kw) -> TrainConfig:
    """sCT from scratch on digits (the digits-sct recipe: lr 2e-4, tangent warm-up 300, no adaptive weight)."""
    return _digits(method="sct", student_init="scratch", lr=2e-4, ema_half_life=12800.0, checkpoint_every=2000,
                   scm_args=_scm_args(300), **_SCM, **kw)


PRESETS: dict[str, TrainConfig] = {
    # SpeeD (Wang et al. 2024) with the official k = 5, tau = 700 of 1000, lam = 0.6
    "digits-speed": _digits(name="digits-speed", **_SPEED),
    "digits-uniform": _digits(name="digits-uniform"),
    # a TrigFlow-F teacher (c_noise(t) = t, positional embedding scale 10): what sCD distils stably (sCM Sec. 4.1)
    "digits-speed-trigflow": _digits(name="digits-speed-trigflow", process="trigflow", prediction="trigflow",
                                     model_args={"time_scale": 10.0}, steps=4000, **_SPEED),
    "fashion-speed": _fashion(name="fashion-speed", **_SPEED),
    "fashion-uniform": _fashion(name="fashion-uniform"),
    "fashion-speed-trigflow": _fashion(name="fashion-speed-trigflow", process="trigflow", prediction="trigflow",
                                       model_args={"time_scale": 10.0}, **_SPEED),
    # 2-D Gaussian mixture (8 modes) with an MLP: seconds per thousand steps on CPU
    "toy-2d": TrainConfig(name="toy-2d", dataset="gmm2d", data_args={"n": 10000}, model="mlp-2d",
                          process="vp", prediction="eps", conditional=False, lr=1e-3, batch_size=256,
                          steps=5000, warmup_steps=100, ema_half_life=50000.0, checkpoint_every=1000,
                          log_every=100),
    # sCM (Lu & Song 2025) consistency models of digits: RAdam, lr 1e-4, betas (0.9, 0.99), no adaptive
    # weight. Measured (BENCHMARKS.md): from the TrigFlow teacher sCD improves steadily; from an eps
    # teacher on discrete VP (index time input) the student degrades once the tangent warm-up ends, and
    # the adaptive weight w(t) made that worse (gradient norm x20 in 1000 steps); lr 5e-4 / 2e-3 diverged.
    # The shipped digits-scd is this preset's 9000-iteration checkpoint (2-step FD 1.06x the teacher's).
    "digits-scd": _digits(name="digits-scd", method="scd", teacher="digits-teacher", lr=1e-4, steps=12000,
                          ema_half_life=12800.0, checkpoint_every=500, scm_args=_scm_args(200), **_SCM),
    # The shipped digits-sct is this preset's 16000-iteration checkpoint (1- / 2-step FD 1.02x / 0.90x the teacher's).
    "digits-sct": _digits_sct(name="digits-sct", steps=16000),
    # The same recipe on a 4x smaller network (16 base channels, 438k parameters; each call 3x cheaper on
    # CPU): the shipped digits-sct-small is its 32000-iteration checkpoint (1- / 2-step FD 0.94x / 1.06x
    # the teacher's over 6 seeds; at equal FD 13-15x (2 steps) and over 30x (1 step) faster than the teacher).
    "digits-sct-small": _digits_sct(name="digits-sct-small", model_args={"channels": 16}, steps=32000),
    # Fashion-MNIST sCD as measured in BENCHMARKS.md section 2 (teacher: runs/fashion-teacher, trained by
    # fashion-speed-trigflow with the overrides given there); batch 64, ~0.8 s per iteration on one CPU core.
    "fashion-scd": _fashion(name="fashion-scd", method="scd", teacher="runs/fashion-teacher", lr=1e-4, steps=30000,
                            batch_size=64, ema_half_life=12800.0, checkpoint_every=1000, scm_args=_scm_args(200),
                            **_SCM),
    "fashion-sct": _fashion(name="fashion-sct", method="sct", student_init="scratch", lr=2e-4, steps=50000,
                            ema_half_life=50000.0, checkpoint_every=2000, scm_args=_scm_args(2000), **_SCM),
    # smoke tests: tiny networks, a handful of steps
    "digits-tiny": _digits(name="digits-tiny", model="unet-tiny", batch_size=16, steps=20, warmup_steps=5,
                           ema_half_life=1000.0, checkpoint_every=0, log_every=5, progress=False),
    "toy-tiny": TrainConfig(name="toy-tiny", dataset="gmm2d", data_args={"n": 512}, model="mlp-tiny",
                            process="vp", conditional=False, lr=1e-3, batch_size=32, steps=20, warmup_steps=5,
                            ema_half_life=1000.0, log_every=5, progress=False),
}


def list_presets() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; valid: {', '.join(list_presets())}")
    return PRESETS[name]


def resolve_config(spec=None, overrides=None) -> TrainConfig:
    """A TrainConfig from a preset name, a YAML / JSON path, a dict or a TrainConfig, then overrides."""
    if spec is None:
        cfg = TrainConfig()
    elif isinstance(spec, TrainConfig):
        cfg = spec
    elif isinstance(spec, dict):
        cfg = TrainConfig.from_dict(spec)
    elif isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if s in PRESETS:
            cfg = PRESETS[s]
        elif s.endswith((".yaml", ".yml", ".json")) or os.path.sep in s:
            cfg = TrainConfig.load(s)
        else:
            raise ValueError(f"{s!r} is neither a training preset ({', '.join(list_presets())}) "
                             "nor a .yaml/.json config file")
    else:
        raise ValueError(f"cannot make a training config from {type(spec).__name__}")
    return cfg.with_overrides(overrides) if overrides else cfg
