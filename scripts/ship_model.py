"""Reduce a training checkpoint to a model file (its EMA weights) and ship it inside the package.

    python scripts/ship_model.py runs/digits-teacher digits-teacher
    python scripts/ship_model.py runs/digits-scd digits-scd --teacher-name digits-teacher
    python scripts/ship_model.py runs/fashion-teacher32/checkpoints/ckpt-00005000.json fashion-teacher --dtype float16

is `fewstep export CHECKPOINT src/fewstep/assets/models/<name>` (see fewstep.export): it writes
<name>.safetensors (EMA weights) and <name>.json (training and model config) there, loadable with
fewstep.pretrained.load_denoiser(name) and `fewstep sample <name>`.
"""

from __future__ import annotations

import argparse
import sys

from fewstep.cli import main as fewstep_main
from fewstep.export import DTYPES
from fewstep.pretrained import SHIPPED_DIR


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint .json or run directory")
    ap.add_argument("name", help="shipped model name")
    ap.add_argument("--teacher-name", default=None,
                    help="for a distilled student: the shipped name of its teacher, recorded in its config")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES), help="storage precision of the weights")
    args = ap.parse_args()
    teacher = ["--teacher", args.teacher_name] if args.teacher_name else []
    sys.exit(fewstep_main(["export", args.checkpoint, str(SHIPPED_DIR / args.name), "--dtype", args.dtype, *teacher]))


if __name__ == "__main__":
    main()
