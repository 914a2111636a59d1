"""The trainer: `Trainer(config).fit()` or `train(config)`.

One optimiser step = `accum_steps` micro-batches whose gradients are summed (each scaled by
1/accum_steps), global-norm clipping, AdamW / RAdam with linear LR warm-up, then the EMA update
(ema.py). The global batch (`batch_size`) is the same whatever the number of processes: under
`torchrun` each rank takes its contiguous slice of every micro-batch (data/loader.py) and draws
its slice of the same global randomness (losses.py), and DistributedDataParallel averages the
gradients, so N processes reproduce the one-process run up to float summation order; the same
holds for gradient accumulation (each micro-batch is a shard of the global batch's randomness).

Robustness: a step whose loss or gradient norm is not finite is skipped (no optimiser or EMA
update); after more than `max_bad_steps` consecutive such steps training stops with an error.

Reproducibility: checkpoints (checkpoint.py) hold the model, EMA, optimiser state, learned-weighting
and sampler state, the loss generator's and the global RNG states (per rank), the data-iterator
position and the step; resuming a CPU run continues bit-identically.

Outputs in `out`: config.yaml / config.json (the resolved config), checkpoints/ckpt-*.{safetensors,
json}, metrics.csv (and TensorBoard events when `tensorboard` is on and installed).
"""

from __future__ import annotations

import contextlib
import csv
import math
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ..data import batches, load_dataset
from ..models import build_model
from ..predictions import wrap
from . import distributed as D
from .checkpoint import (decode_state, encode_state, latest_checkpoint, load_checkpoint, optimizer_state_from_flat,
                         optimizer_state_to_flat, read_checkpoint_meta, save_checkpoint)
from .config import build_process, resolve_config
from .ema import EMA
from .losses import DiffusionLoss
from .timesteps import make_sampler
from .weighting import LearnedWeighting, make_weighting

__all__ = ["Trainer", "train", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive steps had a non-finite loss or gradient."""


class _Objective(nn.Module):
    """Network + loss in one module, so that DDP sees (and syncs) every trained parameter."""

    def __init__(self, net: nn.Module, loss: DiffusionLoss):
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x0, labels, step):
        return self.loss(self.net, x0, labels, step)


class _Progress:
    """tqdm bar (loss in the postfix, it/s from tqdm) or a plain stderr line; nothing when off."""

    def __init__(self, total: int, initial: int, enabled: bool, desc: str):
        self.enabled, self.total, self.desc = enabled, total, desc
        self.bar = None
        self.start, self.last, self.count = time.time(), 0.0, 0
        self.step = initial
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)

    def update(self, loss: float) -> None:
        self.step += 1
        self.count += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        now = time.time()
        if now - self.last > 0.5 or self.step == self.total:
            rate = self.count / max(now - self.start, 1e-9)
            sys.stderr.write(f"\r{self.desc} {self.step}/{self.total} loss {loss:.4f} {rate:.1f} it/s")
            sys.stderr.flush()
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.count:
            sys.stderr.write("\n")


class _Metrics:
    """metrics.csv (rank 0): rows after the resumed step are dropped so a resumed run stays consistent."""

    FIELDS = ["step", "images", "loss", "grad_norm", "lr", "it_per_s", "skipped", "elapsed_s"]

    def __init__(self, path: Path | None, resume_step: int, tensorboard: bool):
        self.path, self.writer = path, None
        if path is None:
            return
        rows = []
        if resume_step > 0 and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in self.FIELDS} for r in rows)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(path.parent / "tensorboard"), purge_step=resume_step + 1)
            except ImportError:
                warnings.warn("tensorboard=true but TensorBoard is not installed; metrics go to metrics.csv only")

    def write(self, row: dict) -> None:
        if self.path is None:
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.FIELDS).writerow(row)
        if self.writer is not None:
            for k in ("loss", "grad_norm", "lr", "it_per_s"):
                self.writer.add_scalar(f"train/{k}", row[k], row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _json_safe(x: float) -> float | None:
    return x if math.isfinite(x) else None


def resume_checkpoint(cfg, resume) -> Path | None:
    """The checkpoint a run of `cfg` continues from: None for resume=False (or True with no checkpoint
    in out/checkpoints yet), the latest there for resume=True, else `resume` itself (a path)."""
    if not resume:
        return None
    if isinstance(resume, bool):
        if not cfg.out:
            raise ValueError("resume=True needs an output directory (out=...)")
        return latest_checkpoint(Path(cfg.out) / "checkpoints")
    return Path(resume)


def resumed_student_spec(cfg, resume_path) -> dict | None:
    """The student spec a resumed consistency checkpoint records (its student is rebuilt from it, so
    its student_init may be gone); without one, `cfg.check_sources()` (a missing init is refused), None."""
    spec = read_checkpoint_meta(resume_path).get("student") if resume_path is not None else None
    if spec is None:
        cfg.check_sources()
    return spec


class Trainer:
    """Trains a diffusion model as described by a `TrainConfig` (or a preset name / YAML path / dict).

    Trainer(config, out=None, resume=False, progress=None)
      out:      output directory (overrides config.out; None and config.out None = write nothing)
      resume:   True = continue from the latest checkpoint in out/checkpoints (if any);
                a path = that checkpoint (JSON) or directory
      progress: overrides config.progress

    `fit(until=None)` trains to step `until` (default config.steps) and writes a final checkpoint;
    `train_step()` does one optimiser step; `save_checkpoint()` / `load_checkpoint(path)`;
    `denoiser(ema=True)` wraps the (EMA) network as a fewstep Denoiser for sampling.
    """

    def __init__(self, config, *, out=None, resume=False, progress: bool | None = None):
        cfg = resolve_config(config)
        if out is not None:
            cfg = cfg.replace(out=str(out))
        if progress is not None:
            cfg = cfg.replace(progress=bool(progress))
        self.config = cfg
        self.dist, self.device = D.setup(cfg.device)
        self.out = Path(cfg.out) if cfg.out else None
        self.ckpt_dir = self.out / "checkpoints" if self.out else None
        resume_path = resume_checkpoint(cfg, resume)
        student_spec = resumed_student_spec(cfg, resume_path)
        if cfg.batch_size % (cfg.accum_steps * self.dist.world_size):
            raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by accum_steps x world_size "
                             f"({cfg.accum_steps} x {self.dist.world_size})")
        if cfg.precision == "bf16" and self.device.type != "cuda":
            warnings.warn("precision=bf16 autocasts on CUDA only; training in float32 on " + self.device.type)

        # data
        data_args = dict(cfg.data_args)
        self.dataset = load_dataset(cfg.dataset, root=cfg.data_root, split="train", **data_args)
        if cfg.conditional and self.dataset.labels is None:
            raise ValueError(f"dataset {cfg.dataset!r} has no labels; set conditional=false")
        self.num_classes = int(self.dataset.num_classes or 0) if cfg.conditional else 0
        self.data = batches(self.dataset, cfg.micro_batch_size, seed=cfg.seed, rank=self.dist.rank,
                            world_size=self.dist.world_size)

        # model (identical initialisation on every rank)
        if "num_classes" in cfg.model_args:
            raise ValueError("config: model_args.num_classes is set from the dataset; use conditional=true/false")
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator(device=self.device).manual_seed(cfg.seed + 1)
        self.teacher = None
        if cfg.method == "diffusion":
            self.net = build_model(cfg.model, num_classes=self.num_classes, **cfg.model_args).to(self.device)
            self.process = build_process(cfg.process, cfg.process_args)
            self.sampler = make_sampler(cfg.timesteps, self.process, **cfg.timestep_args)
            weighting = make_weighting(cfg.weighting, self.process, cfg.prediction, cfg.sigma_data,
                                       **cfg.weighting_args)
            if cfg.learned_weighting:
                weighting = LearnedWeighting(self.process, base=weighting)
            self.loss_fn = DiffusionLoss(self.process, cfg.prediction, self.sampler, weighting,
                                         num_classes=self.num_classes,
                                         p_uncond=cfg.p_uncond if self.num_classes else 0.0,
                                         sigma_data=cfg.sigma_data, generator=self.generator, rank=self.dist.rank,
                                         world_size=self.dist.world_size).to(self.device)
        else:  # sCT / sCD (fewstep.distill): a TrigFlow student, the consistency objective
            from ..distill.setup import build_consistency

            self.net, self.process, self.loss_fn, self.teacher = build_consistency(
                cfg, self.num_classes, self.device, self.generator, self.dist.rank, self.dist.world_size,
                student_spec=student_spec)
            self.sampler = None
        self.objective = _Objective(self.net, self.loss_fn)
        if self.dist.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.module = DDP(self.objective, device_ids=ids)
        else:
            self.module = self.objective
        self.params = [p for p in self.objective.parameters() if p.requires_grad]
        opt_cls = {"adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[cfg.optimizer]
        kw = {"decoupled_weight_decay": True} if cfg.optimizer == "radam" else {}
        self.optimizer = opt_cls(self.params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                                 weight_decay=cfg.weight_decay, **kw)
        self.ema = EMA(self.net, cfg.batch_size, cfg.ema_half_life, cfg.ema_warmup_ratio)

        # per-rank stream for dropout etc.
        torch.manual_seed(cfg.seed + 2 + 1_000_003 * self.dist.rank)
        self.step, self.images_seen, self.bad_steps, self.skipped = 0, 0, 0, 0
        self.elapsed = 0.0
        self.last_loss = float("nan")
        self.last_checkpoint: Path | None = None

        if resume:
            if resume_path is not None:
                self.load_checkpoint(resume_path)
            elif self.dist.is_main:
                warnings.warn(f"resume: no checkpoint in {self.ckpt_dir}; starting from scratch")

    # ------------------------------------------------------------------ properties
    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def lr_at(self, step: int) -> float:
        """Linear warm-up over `warmup_steps`, constant, then (with `lr_cooldown` = c > 0) linear
        decay over the last c steps: step `steps` - c runs at lr, the last one at lr / c."""
        cfg = self.config
        w, c = cfg.warmup_steps, cfg.lr_cooldown
        factor = min(1.0, (step + 1) / w) if w > 0 else 1.0
        if c > 0:
            factor = min(factor, (cfg.steps - step) / c)
        return cfg.lr * factor

    def _autocast(self):
        if self.config.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        """One optimiser step over `accum_steps` micro-batches; returns its metrics."""
        cfg = self.config
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        feedback = []
        # Every micro-batch of every rank is one shard of the global batch: each replays the
        # generator from the same state, draws the randomness of the whole global batch and keeps
        # its slice, so results do not depend on accum_steps or the number of processes.
        shards, start = cfg.accum_steps * self.dist.world_size, self.generator.get_state()
        self.loss_fn.world_size = shards
        for micro in range(cfg.accum_steps):
            self.generator.set_state(start)
            self.loss_fn.rank = micro * self.dist.world_size + self.dist.rank
            x0, labels = next(self.data)
            x0 = x0.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True) if labels is not None and self.num_classes else None
            sync = self.dist.distributed and micro < cfg.accum_steps - 1
            with (self.module.no_sync() if sync else contextlib.nullcontext()):
                with self._autocast():
                    loss, stats = self.module(x0, labels, self.step)
                (loss / cfg.accum_steps).backward()
            total += loss.detach().to(torch.float64)
            if self.sampler is not None and self.sampler.needs_losses:
                feedback.append((stats["t"], stats["loss"]))
        loss_value = float(D.all_reduce_mean(total / cfg.accum_steps, self.dist))
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.bad_steps = 0
            for t, losses in feedback:  # every rank feeds back the whole global batch
                self.sampler.update(D.all_gather_cat(t, self.dist), D.all_gather_cat(losses, self.dist))
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.skipped += 1
            if self.is_main:
                warnings.warn(f"step {self.step}: non-finite loss ({loss_value}) or gradient norm ({grad_norm}); "
                              f"step skipped ({self.bad_steps} in a row)")
            if self.bad_steps > cfg.max_bad_steps:
                raise NonFiniteLossError(
                    f"training stopped at step {self.step}: {self.bad_steps} consecutive steps with a non-finite "
                    f"loss or gradient (last loss {loss_value}, grad norm {grad_norm}); lower lr, enable grad_clip, "
                    f"check the data, or resume from the last checkpoint")
        self.step += 1
        self.images_seen += cfg.batch_size
        if finite:
            self.ema.update(self.net, self.images_seen)
        self.last_loss = loss_value
        return {"loss": loss_value, "grad_norm": grad_norm, "lr": lr, "finite": finite}

    # ------------------------------------------------------------------ loop
    def fit(self, until: int | None = None) -> dict:
        """Train until step `until` (default config.steps); returns a summary dict."""
        cfg = self.config
        target = cfg.steps if until is None else int(until)
        if self.out and self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.yaml")
            cfg.save(self.out / "config.json")
        metrics = _Metrics(self.out / "metrics.csv" if (self.out and self.is_main) else None, self.step,
                           cfg.tensorboard)
        bar = _Progress(target, self.step, cfg.progress and self.is_main, cfg.name)
        window_loss, window_norm, window_n, window_start = 0.0, 0.0, 0, time.time()
        start_step, t0 = self.step, time.time()
        try:
            while self.step < target:
                m = self.train_step()
                bar.update(m["loss"])
                if m["finite"]:
                    window_loss += m["loss"]
                    window_norm += m["grad_norm"]
                    window_n += 1
                if self.step % cfg.log_every == 0 or self.step == target:
                    now = time.time()
                    n = max(window_n, 1)
                    metrics.write({"step": self.step, "images": self.images_seen,
                                   "loss": window_loss / n if window_n else float("nan"),
                                   "grad_norm": window_norm / n if window_n else float("nan"), "lr": m["lr"],
                                   "it_per_s": round(cfg.log_every / max(now - window_start, 1e-9), 3),
                                   "skipped": self.skipped, "elapsed_s": round(self.elapsed + now - t0, 3)})
                    window_loss, window_norm, window_n, window_start = 0.0, 0.0, 0, now
                if self.ckpt_dir and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 \
                        and self.step < target:
                    self.save_checkpoint()
        except KeyboardInterrupt:
            if self.ckpt_dir and self.step > start_step:
                self.elapsed += time.time() - t0
                t0 = time.time()
                self.save_checkpoint()
            raise
        finally:
            bar.close()
            metrics.close()
        self.elapsed += time.time() - t0
        if self.ckpt_dir and (self.last_checkpoint is None or not self.last_checkpoint.name.startswith(
                f"ckpt-{self.step:08d}")):
            self.save_checkpoint()
        return {"step": self.step, "images": self.images_seen, "loss": self.last_loss, "skipped": self.skipped,
                "seconds": self.elapsed, "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None}

    # ------------------------------------------------------------------ checkpoints
    def _rng_state(self) -> dict:
        cuda = encode_state(torch.cuda.get_rng_state(self.device)) if self.device.type == "cuda" else None
        mine = {"torch": encode_state(torch.get_rng_state()), "cuda": cuda}
        return {"per_rank": D.all_gather_objects(mine, self.dist), "generator": encode_state(self.generator.get_state())}

    def save_checkpoint(self, directory=None) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; all ranks must call it)."""
        directory = Path(directory) if directory is not None else self.ckpt_dir
        if directory is None:
            raise ValueError("save_checkpoint: no output directory (give out= or a directory)")
        rng = self._rng_state()  # a collective: every rank takes part
        path = None
        if self.is_main:
            tensors = {f"model.{k}": v for k, v in self.net.state_dict().items()}
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
            tensors.update({f"loss.{k}": v for k, v in self.loss_fn.state_dict().items()})
            if self.sampler is not None:
                tensors.update({f"sampler.{k}": v for k, v in self.sampler.state_dict().items()})
            opt_tensors, opt_scalars = optimizer_state_to_flat(self.optimizer.state_dict())
            tensors.update(opt_tensors)
            meta = {
                "config": self.config.to_dict(),
                "images_seen": self.images_seen, "bad_steps": self.bad_steps, "skipped": self.skipped,
                "elapsed_s": self.elapsed, "last_loss": _json_safe(self.last_loss),
                "world_size": self.dist.world_size, "rng": rng, "data": self.data.state_dict(),
                "optimizer": opt_scalars,
                "model_config": self.net.config.to_dict() if hasattr(self.net, "config") else None,
                "num_classes": self.num_classes,
            }
            if self.config.method != "diffusion":
                from ..distill.reparam import student_spec

                meta["student"] = student_spec(self.net)
            path = save_checkpoint(directory, self.step, tensors, meta, keep=self.config.keep_checkpoints,
                                   keep_every=self.config.keep_every)
            self.last_checkpoint = path
        D.barrier(self.dist)
        return path

    def load_checkpoint(self, path) -> None:
        """Restore everything a checkpoint holds (see the module docstring)."""
        meta, tensors = load_checkpoint(path)

        def part(prefix):
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        try:
            self.net.load_state_dict(part("model."))
            self.ema.load_state_dict(part("ema."))
            self.loss_fn.load_state_dict(part("loss."))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise ValueError(f"checkpoint {path} does not fit this model/config: {first}") from None
        if self.sampler is not None:
            self.sampler.load_state_dict(part("sampler."))
        self.optimizer.load_state_dict(optimizer_state_from_flat(tensors, meta["optimizer"]))
        self.data.load_state_dict(meta["data"])
        self.step, self.images_seen = int(meta["step"]), int(meta["images_seen"])
        self.bad_steps, self.skipped = int(meta["bad_steps"]), int(meta["skipped"])
        self.elapsed = float(meta.get("elapsed_s", 0.0))
        self.last_loss = meta.get("last_loss") if meta.get("last_loss") is not None else float("nan")
        rng = meta["rng"]
        self.generator.set_state(decode_state(rng["generator"]))
        per_rank = rng["per_rank"]
        if len(per_rank) == self.dist.world_size:
            mine = per_rank[self.dist.rank]
            torch.set_rng_state(decode_state(mine["torch"]))
            if mine.get("cuda") and self.device.type == "cuda":
                torch.cuda.set_rng_state(decode_state(mine["cuda"]), self.device)
        elif self.is_main:
            warnings.warn(f"checkpoint was written by {len(per_rank)} process(es), resuming on "
                          f"{self.dist.world_size}: per-rank RNG streams (dropout) are reseeded")
        self.last_checkpoint = Path(path) if Path(path).is_file() else None

    # ------------------------------------------------------------------ use
    def denoiser(self, ema: bool = True):
        """The trained network (EMA weights by default) as a fewstep Denoiser D(x, t) -> x0."""
        net = self.ema.module if ema else self.net
        if self.config.method != "diffusion":
            return net.denoiser()
        return wrap(net, self.process, self.config.prediction, sigma_data=self.config.sigma_data)

    def close(self) -> None:
        """Tear down the process group if this trainer created it."""
        D.cleanup(self.dist)

    def summary(self) -> str:
        from ..models import count_params

        cfg = self.config
        if cfg.method != "diffusion":
            teacher = f" from teacher {cfg.teacher}" if cfg.teacher else ""
            return (f"{cfg.name}: {cfg.method}{teacher} on {cfg.dataset} ({len(self.dataset)} samples), student "
                    f"{type(self.net.net).__name__} ({count_params(self.net):,} params), {self.process!r}, "
                    f"{self.loss_fn.config}, batch {cfg.batch_size} x {cfg.steps} steps on {self.device} "
                    f"x {self.dist.world_size}")
        return (f"{cfg.name}: {cfg.dataset} ({len(self.dataset)} samples, {self.num_classes or 'no'} classes), "
                f"{cfg.model} ({count_params(self.net):,} params), {self.process!r}, {cfg.prediction}, "
                f"t ~ {self.sampler!r}, weighting {self.loss_fn.weighting!r}, batch {cfg.batch_size} "
                f"x {cfg.steps} steps on {self.device} x {self.dist.world_size}")


def train(config, **kwargs) -> Trainer:
    """Build a Trainer (see its options), fit it, release the process group; returns the trainer."""
    trainer = Trainer(config, **kwargs)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer
