"""Reduce a training checkpoint to its EMA weights and ship it inside the package.

    python scripts/ship_model.py runs/digits-teacher digits-teacher
    python scripts/ship_model.py runs/digits-scd digits-scd --teacher-name digits-teacher

writes src/fewstep/assets/models/<name>.safetensors (EMA weights) and <name>.json (training and
model config), loadable with fewstep.pretrained.load_denoiser(name) and `fewstep sample <name>`.
"""

from __future__ import annotations

import argparse
import json

from safetensors.torch import save_file

from fewstep.pretrained import SHIPPED_DIR
from fewstep.training.checkpoint import load_checkpoint


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="checkpoint .json or run directory")
    ap.add_argument("name", help="shipped model name")
    ap.add_argument("--teacher-name", default=None,
                    help="for a distilled student: the shipped name of its teacher, recorded in its config")
    args = ap.parse_args()
    meta, tensors = load_checkpoint(args.checkpoint)
    ema = {k[len("ema."):]: v.contiguous() for k, v in tensors.items() if k.startswith("ema.")}
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    save_file(ema, str(SHIPPED_DIR / f"{args.name}.safetensors"))
    keep = {k: meta[k] for k in ("config", "model_config", "num_classes", "step", "images_seen", "student")
            if k in meta}
    if args.teacher_name:
        keep["config"] = {**keep["config"], "teacher": args.teacher_name}
    keep["config"] = {**keep["config"], "out": None}
    (SHIPPED_DIR / f"{args.name}.json").write_text(json.dumps({**keep, "format": "fewstep-model-1"}, indent=1))
    size = (SHIPPED_DIR / f"{args.name}.safetensors").stat().st_size
    print(f"shipped {args.name}: step {meta['step']}, {size / 1e6:.1f} MB -> {SHIPPED_DIR}")


if __name__ == "__main__":
    main()
