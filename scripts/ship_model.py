"""Reduce a training checkpoint to a model file (its EMA weights) and ship it inside the package.

    python scripts/ship_model.py runs/digits-teacher digits-teacher
    python scripts/ship_model.py runs/digits-scd digits-scd --teacher-name digits-teacher
    python scripts/ship_model.py runs/fashion-teacher32/checkpoints/ckpt-00005000.json fashion-teacher --dtype float16

writes src/fewstep/assets/models/<name>.safetensors (EMA weights) and <name>.json (training and
model config), loadable with fewstep.pretrained.load_denoiser(name) and `fewstep sample <name>`
(`fewstep export` with a path instead of a name; see fewstep.export).
"""

from __future__ import annotations

import argparse
import json

from fewstep.export import DTYPES, export_model
from fewstep.pretrained import SHIPPED_DIR, load_denoiser


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint .json or run directory")
    ap.add_argument("name", help="shipped model name")
    ap.add_argument("--teacher-name", default=None,
                    help="for a distilled student: the shipped name of its teacher, recorded in its config")
    ap.add_argument("--dtype", default="float32", choices=list(DTYPES), help="storage precision of the weights")
    args = ap.parse_args()
    path = export_model(args.checkpoint, SHIPPED_DIR / args.name, dtype=args.dtype, teacher=args.teacher_name)
    load_denoiser(args.name)  # loads as shipped
    size = path.with_suffix(".safetensors").stat().st_size
    step = json.loads(path.read_text()).get("step")
    print(f"shipped {args.name}: step {step}, {size / 1e6:.1f} MB ({args.dtype}) -> {SHIPPED_DIR}")


if __name__ == "__main__":
    main()
