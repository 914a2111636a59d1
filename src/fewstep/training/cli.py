"""`fewstep train`: train from a preset or a YAML config with key=value overrides.

    fewstep train digits-speed                              # preset, writes runs/digits-speed/
    fewstep train digits-speed steps=2000 lr=1e-3 --out runs/a
    fewstep train my.yaml timestep_args.k=2 --dry-run       # print the resolved config
    fewstep train --out runs/a --resume                     # continue from runs/a's latest checkpoint
    fewstep train --list-presets
    torchrun --nproc_per_node=2 -m fewstep train digits-speed   # DistributedDataParallel

Until the `fewstep` entry point registers this sub-command, `python -m fewstep.training ...`
accepts the same arguments. The resolved config is written to OUT/config.yaml and OUT/config.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_train_parser", "add_distill_parser", "run_train", "run_distill", "main", "parse_with_late_items"]


def parse_with_late_items(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """parser.parse_args, except that key=value overrides may also follow the options
    (`fewstep distill NAME --out runs/a steps=100`): argparse leaves those over once an option has
    ended the positional list; they join `items`. Anything else left over is an error as usual."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        late = [e for e in extra if "=" in e and not e.startswith("-")]
        if late != extra or not hasattr(args, "items"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.items = list(args.items or []) + late
    return args


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `train` sub-command to an argparse sub-parsers object (sets fn=run_train)."""
    p = subparsers.add_parser("train", help="train a diffusion model (presets: digits-speed, toy-2d, ...)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(fn=run_train)
    return p


DISTILL_DOC = """`fewstep distill`: sCD / sCT consistency models (sCM, fewstep.distill) on the trainer.

    fewstep distill                                          # preset digits-scd: the shipped digits teacher
    fewstep distill --teacher runs/my-teacher --method scd steps=4000 --out runs/my-scd
    fewstep distill --method sct                             # preset digits-sct: consistency training
    fewstep distill digits-scd scm_args.tangent_warmup=1000 scm_args.guidance=2.0
    fewstep distill --out runs/my-scd --resume               # continue from the latest checkpoint
    torchrun --nproc_per_node=2 -m fewstep distill ...       # DistributedDataParallel

The teacher is a checkpoint (.json), a run directory or a shipped model name, of any process and
prediction type; by default the student starts as the teacher (student_init=teacher). Checkpoints,
exact resume, progress, metrics.csv and DDP work as in `fewstep train`; key=value overrides set any
TrainConfig field, scm_args.KEY the sCM options (P_mean, P_std, tangent_warmup, tangent_c,
tangent_norm, tangent = jvp | fd, adaptive_weight, guidance, guidance_range). Sample the result with
`fewstep sample OUT --solver consistency --steps 2`.
"""


def add_distill_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `distill` sub-command (sets fn=run_distill)."""
    p = subparsers.add_parser("distill", help="distil a diffusion model into a 1-2 step consistency model (sCD / sCT)",
                              description=DISTILL_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.add_argument("--teacher", default=None, metavar="CKPT",
                   help="sCD teacher: checkpoint .json, run directory or shipped model name (default: the preset's)")
    p.add_argument("--method", choices=("scd", "sct"), default=None,
                   help="scd = distil the teacher, sct = consistency training from data (default: the preset's, "
                        "else scd)")
    p.set_defaults(fn=run_distill)
    return p


def run_distill(args) -> int:
    """`fewstep distill`: a `fewstep train` run with method / teacher set (see DISTILL_DOC)."""
    items = list(args.items or [])
    has_spec = any("=" not in i for i in items)
    resuming_saved = args.resume and args.out and (Path(args.out) / "config.yaml").is_file()
    if not has_spec and not resuming_saved and not args.list_presets:
        items.insert(0, f"digits-{args.method or 'scd'}")
    method = args.method
    spec = next((i for i in items if "=" not in i), None)
    if method is None and not any(i.startswith("method=") for i in items) and spec is not None:
        from .config import PRESETS

        if spec in PRESETS and PRESETS[spec].method == "diffusion":  # distilling a diffusion preset's setting
            method = "scd"
    if method:
        items.append(f"method={method}")
        if method == "sct" and not args.teacher:
            items.append("teacher=null")
    if args.teacher:
        items.append(f"teacher={args.teacher}")
    args.items = items
    return run_train(args)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="CONFIG | KEY=VALUE",
                   help="a preset name or a .yaml/.json config file, then key=value overrides "
                        "(values are YAML; dict fields take a.b=value)")
    p.add_argument("--out", "-o", default=None, help="output directory (default: the config's out, else runs/NAME)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from the latest checkpoint in OUT (or from the given checkpoint .json / directory)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-presets", action="store_true", help="list the training presets and exit")


def _resolve(args):
    from .config import TrainConfig, resolve_config

    items = list(args.items or [])
    if isinstance(args.resume, str) and "=" in args.resume and not Path(args.resume).exists():
        items.append(args.resume)  # `--resume key=value`: argparse took the override for a path
        args.resume = True
    specs = [i for i in items if "=" not in i]
    overrides = [i for i in items if "=" in i]
    if len(specs) > 1:
        raise ValueError(f"give one preset or config file, got {', '.join(map(repr, specs))}")
    spec = specs[0] if specs else None
    if spec is None:
        saved = Path(args.out) / "config.yaml" if args.out else None
        if args.resume and saved is not None and saved.is_file():
            cfg = TrainConfig.load(saved)
        else:
            from .config import list_presets

            raise ValueError(f"give a training preset ({', '.join(list_presets())}) or a .yaml config file")
    else:
        cfg = resolve_config(spec)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    if args.out:
        cfg = cfg.replace(out=str(args.out))
    elif cfg.out is None:
        cfg = cfg.replace(out=str(Path("runs") / cfg.name))
    if args.no_progress:
        cfg = cfg.replace(progress=False)
    return cfg


def run_train(args) -> int:
    """Run `fewstep train` for parsed arguments; returns the exit status (ValueError on bad input)."""
    from .config import PRESETS, list_presets

    if args.list_presets:
        for name in list_presets():
            c = PRESETS[name]
            print(f"{name:<16} {c.dataset:<14} {c.model:<12} {c.process:<6} {c.prediction:<4} "
                  f"t~{c.timesteps:<8} w={c.weighting:<6} batch {c.batch_size} x {c.steps} steps")
        return 0
    cfg = _resolve(args)
    if args.dry_run:
        from .trainer import resume_checkpoint, resumed_student_spec

        resumed_student_spec(cfg, resume_checkpoint(cfg, args.resume))  # checks sources as a real run does
        sys.stdout.write(cfg.to_yaml())
        return 0
    from .trainer import NonFiniteLossError, Trainer

    trainer = Trainer(cfg, resume=args.resume)
    try:
        if trainer.is_main:
            print(trainer.summary(), flush=True)
            if trainer.step:
                print(f"resumed at step {trainer.step} from {trainer.last_checkpoint}", flush=True)
        try:
            result = trainer.fit()
        except NonFiniteLossError as e:
            print(f"fewstep train: error: {e}", file=sys.stderr)
            return 3
        if trainer.is_main:
            print(f"done: step {result['step']}, loss {result['loss']:.4f}, {result['seconds']:.1f}s, "
                  f"{result['skipped']} skipped; checkpoint {result['checkpoint']}", flush=True)
    finally:
        distributed = trainer.dist.distributed
        trainer.close()
    if distributed:
        # torchrun workers: everything is written and the process group is gone. Leave without running
        # C++ static destructors, which abort a rank now and then under torch 2.13 / gloo on CPU
        # ("terminate called without an active exception" after a complete run).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def main(argv=None) -> int:
    """Stand-alone entry point (`python -m fewstep.training ...`)."""
    p = argparse.ArgumentParser(prog="fewstep train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    args = parse_with_late_items(p, argv)
    try:
        return run_train(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"fewstep train: error: {e}", file=sys.stderr)
        return 2
