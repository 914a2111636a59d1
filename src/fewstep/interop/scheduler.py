"""`FewstepScheduler`: fewstep's solvers behind diffusers' scheduler interface.

diffusers pipelines drive a scheduler one model call at a time:

    scheduler.set_timesteps(n, device)
    for t in scheduler.timesteps:
        out = unet(scheduler.scale_model_input(x, t), t).sample
        x = scheduler.step(out, t, x).prev_sample

fewstep's solvers are plain functions that call the denoiser themselves (DESIGN.md: "stateful
diffusers-style schedulers are an adapter on top, not the core"). This adapter keeps, as its
state, the initial sample and the x0 estimates of the model outputs received so far, and at each
`step` replays the solver function from the start with a denoiser that answers its first calls
from that record and stops it at the next call: the state it stops at is `prev_sample`, where
the pipeline calls the model next; the last step lets the solver finish. The update formulas
are therefore exactly those of `fewstep.sample` (no copy of the maths), and with the same noise
and grid the pipeline gives the same samples as `fewstep.sample` on the wrapped model.

Cost: the replay redoes the solver's arithmetic, O(n^2) cheap tensor updates for n steps against
n network calls; negligible for the 5-50 steps these solvers are for, noticeable for hundreds.

Supported: solvers that call the model once per grid time (ddim, dpm-solver, dpm++2m, dpm++3m,
unipc, unipc-bh1, the singlestep ones, euler, sde-dpm++2m); stochastic ones draw their noise
from a generator seeded with `seed` at every replay, so the pipeline's `generator` is not used.
Edits the pipeline makes to the latents between steps (inpainting blends, callbacks) are not
seen by the solver, which continues from its own state (a warning says so).
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import Tensor

from ..predictions import to_x0
from ..sample import SOLVERS
from ..spacing import SPACINGS, make_grid
from .diffusers import prediction_from_diffusers, process_from_scheduler_config, require_diffusers

require_diffusers()

from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput  # noqa: E402

__all__ = ["FewstepScheduler", "SCHEDULER_SOLVERS"]

# solvers whose k-th model call is at the k-th grid time (heun calls twice per step, the adaptive
# solver picks its own times)
SCHEDULER_SOLVERS = tuple(name for name in SOLVERS if name not in ("heun", "dpm-solver-adaptive"))


class _Pause(Exception):
    """Stops a replayed solve at the first model call that has no recorded output yet."""

    def __init__(self, x: Tensor):
        super().__init__("paused")
        self.x = x


class _Replay:
    """A denoiser that answers a solver's first calls with recorded x0 estimates, then pauses it.

    It checks that call k is at grid time ts[k]: the pipeline evaluated the model there.
    """

    def __init__(self, process, ts: Tensor, x0s: list):
        self.process = process
        self.ts = ts
        self.x0s = x0s
        self.calls = 0

    def __call__(self, x: Tensor, t, **cond) -> Tensor:
        k = self.calls
        t = float(t)
        if k >= len(self.ts) - 1 or abs(t - float(self.ts[k])) > 1e-9:
            raise RuntimeError(f"the solver called the model at t={t:.9g} for call {k}, off the scheduler's grid; "
                               f"FewstepScheduler supports solvers with one call per grid time: "
                               f"{', '.join(SCHEDULER_SOLVERS)}")
        self.calls += 1
        if k < len(self.x0s):
            return self.x0s[k]
        raise _Pause(x)


class FewstepScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that samples with a fewstep solver on a discrete VP (DDPM) process.

    The noise schedule (num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
    and prediction_type are diffusers' own, so `FewstepScheduler.from_config(pipe.scheduler.config,
    solver="unipc")` swaps the sampler of a pipeline. fewstep options: `solver` (one of
    SCHEDULER_SOLVERS), `solver_order` (None: the solver's default), `spacing` (a fewstep spacing
    name, None for the solver's default; "linspace" / "leading" / "trailing" are diffusers' integer
    grids), `end` ("zero": the last step goes to sigma = 0; "t_min": stop at the smallest
    training noise level), `solver_options` (keyword arguments of the solver function, e.g.
    {"lower_order_final": 15} or {"eta": 1.0}) and `seed` (noise of stochastic solvers).

    `timesteps` are discrete (possibly fractional) DDPM indices n = t N - 1, float32; the model is
    called once per timestep (`order` = 1).
    """

    config_name = "scheduler_config.json"
    _compatibles = []
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas=None, prediction_type: str = "epsilon",
                 solver: str = "dpm++2m", solver_order: int | None = None, spacing=None, end: str = "zero",
                 solver_options: dict | None = None, seed: int = 0):
        if solver not in SCHEDULER_SOLVERS:
            raise ValueError(f"FewstepScheduler: solver {solver!r} is not supported; "
                             f"known: {', '.join(SCHEDULER_SOLVERS)}")
        spec = SOLVERS[solver]
        if solver_order is not None and solver_order not in spec.orders:
            raise ValueError(f"solver {solver!r} has orders {spec.orders}, not {solver_order}")
        if end not in ("zero", "t_min"):
            raise ValueError(f"end must be 'zero' or 't_min', got {end!r}")
        if isinstance(spacing, str) and spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {spacing!r}; known: {', '.join(SPACINGS)}")
        self.process = process_from_scheduler_config(self.config)
        self.prediction = prediction_from_diffusers(prediction_type)
        self.init_noise_sigma = float(self.process.prior_std())
        self._fn, self._options = _solver_call(solver, solver_order, solver_options or {})
        self.num_inference_steps = None
        self.ts = None  # the float64 time grid of the current solve
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.float32)
        self._begin_index = None
        self._reset()

    # ----- diffusers' scheduler interface ---------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int | None = None, device=None, timesteps=None):
        """Set the grid for `num_inference_steps` model calls, or call the model at the given
        discrete `timesteps` (decreasing; the grid then ends at 0 or t_min as `end` says)."""
        proc = self.process
        end = self.config.end
        if timesteps is not None:
            calls = proc.t_of_model_time(torch.as_tensor(timesteps, dtype=torch.float64).flatten().cpu())
            tail = 0.0 if end == "zero" else proc.t_min
            ts = make_grid(proc, calls.numel(), torch.cat([calls, torch.tensor([tail], dtype=torch.float64)]))
        elif num_inference_steps is not None:
            spacing = self.config.spacing or SOLVERS[self.config.solver].spacing
            ts = make_grid(proc, int(num_inference_steps), spacing, end=end)
        else:
            raise ValueError("set_timesteps needs num_inference_steps or timesteps")
        self.ts = ts
        self.num_inference_steps = ts.numel() - 1
        self.timesteps = proc.model_time(ts[:-1]).to(torch.float32).to(device)
        self._begin_index = None
        self._reset()

    def scale_model_input(self, sample: Tensor, timestep=None, *args, **kwargs) -> Tensor:
        """The model sees x_t itself (VP)."""
        return sample

    def step(self, model_output: Tensor, timestep, sample: Tensor, generator=None, return_dict: bool = True,
             **kwargs):
        """Take the model output at (sample, timestep) and return the state of the next model call
        (or the final sample after the last timestep). `generator` is not used (see `seed`)."""
        if self.ts is None:
            raise RuntimeError("FewstepScheduler: call set_timesteps() before step()")
        if self._step_index is None:
            self._init_step_index(timestep, sample)
        i = self._step_index
        if i >= self.num_inference_steps:
            raise RuntimeError(f"FewstepScheduler: step() called more than the {self.num_inference_steps} timesteps")
        x = self._x
        if self._last is not None and sample is not self._last and not self._warned \
                and not torch.equal(sample, self._last):
            warnings.warn("FewstepScheduler: the latents were changed between steps; the fewstep solver ignores "
                          "such edits and continues from its own state", stacklevel=2)
            self._warned = True
        if model_output.shape[1] == 2 * sample.shape[1]:  # learned variance channels
            model_output = model_output[:, : sample.shape[1]]
        x0 = to_x0(model_output.to(x.dtype), self.prediction, x, self.ts[i], self.process)
        self._x0s.append(x0)
        self._x = self._advance()
        self._last = self._x.to(sample.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=self._last) if return_dict else (self._last,)

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps) -> Tensor:
        """x_t = alpha x0 + sigma noise at discrete timesteps (one for all, or one per sample)."""
        n = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).flatten()
        alpha, sigma = self.process.alpha_sigma(self.process.t_of_model_time(n))
        shape = (-1,) + (1,) * (original_samples.ndim - 1)
        alpha = alpha.to(original_samples.device, original_samples.dtype).view(shape)
        sigma = sigma.to(original_samples.device, original_samples.dtype).view(shape)
        return alpha * original_samples + sigma * noise

    def set_begin_index(self, begin_index: int = 0):
        """Start at timesteps[begin_index] (img2img pipelines call this after set_timesteps)."""
        self._begin_index = int(begin_index)

    @property
    def step_index(self):
        return self._step_index

    @property
    def begin_index(self):
        return self._begin_index

    def index_for_timestep(self, timestep) -> int:
        """Index of `timestep` in `timesteps` (nearest; must be within 1e-3)."""
        ts = self.timesteps.detach().to("cpu", torch.float64)
        d = (ts - float(timestep)).abs()
        i = int(d.argmin())
        if d[i] > 1e-3 * max(1.0, abs(float(timestep))):
            raise ValueError(f"FewstepScheduler: timestep {float(timestep):.6g} is not one of the "
                             "scheduler's timesteps")
        return i

    def __len__(self):
        return self.config.num_train_timesteps

    # ----- the replayed solve --------------------------------------------------------------------

    def _reset(self):
        self._step_index = None
        self._start = None  # (begin index, initial state)
        self._x = None
        self._x0s = []
        self._last = None
        self._warned = False

    def _init_step_index(self, timestep, sample: Tensor):
        begin = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        # solver arithmetic in at least float32, whatever the pipeline's dtype (DESIGN.md precision policy)
        dtype = torch.promote_types(sample.dtype, torch.float32)
        self._x = sample.detach().to(dtype=dtype, copy=True)
        self._start = (begin, self._x)
        self._step_index = begin

    def _advance(self) -> Tensor:
        """Replay the solve with the recorded outputs: the next call's state, or the final sample."""
        begin, x_start = self._start
        ts = self.ts[begin:]
        replay = _Replay(self.process, ts, self._x0s)
        options = dict(self._options)
        if "generator" in options:
            options["generator"] = torch.Generator().manual_seed(int(self.config.seed))
        try:
            out = self._fn(replay, x_start, ts, **options)
        except _Pause as p:
            return p.x
        if len(self._x0s) != ts.numel() - 1:
            raise RuntimeError(f"the solver finished after {len(self._x0s)} of {ts.numel() - 1} model calls")
        return out


def _solver_call(name: str, order: int | None, options: dict):
    """(solver function, keyword options) as `fewstep.sample` builds them for solver `name`."""
    spec = SOLVERS[name]
    params = inspect.signature(spec.fn).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"solver {name!r} has no options {unknown}")
    opts = {**spec.fixed, **options}
    order = order if order is not None else spec.default_order
    if order is not None and "order" in params:
        opts["order"] = order
    if "generator" in params:
        opts["generator"] = None  # replaced by a freshly seeded generator at every replay
    return spec.fn, opts
