"""`fewstep export CHECKPOINT OUT`: reduce a training checkpoint to a model file (fewstep.export).

    fewstep export runs/fashion-teacher32 models/fashion-teacher --dtype float16
    fewstep sample models/fashion-teacher.json --steps 10
    fewstep distill fashion-scd teacher=models/fashion-teacher.json

Writes OUT.json and OUT.safetensors: the EMA weights in --dtype (float32, float16 or bfloat16) and the
configs that loading needs, without the optimiser state (a quarter of the checkpoint's size in
float32, an eighth in half precision); fitted solvers in a run directory's solvers/ go along.
"""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from ..export import DTYPES

    p = sub.add_parser("export", help="reduce a training checkpoint to a model file (EMA weights and config)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint .json or run directory (its latest checkpoint)")
    p.add_argument("out", help="output name: writes OUT.json and OUT.safetensors")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="storage precision of the weights")
    p.add_argument("--teacher", default=None, help="for a student: the teacher to record in its config")
    p.set_defaults(fn=run)


def run(args) -> int:
    from ..export import export_model
    from ..pretrained import load_denoiser

    path = export_model(args.checkpoint, args.out, dtype=args.dtype, teacher=args.teacher)
    D = load_denoiser(str(path))
    size = path.with_suffix(".safetensors").stat().st_size
    print(f"{path} ({size / 1e6:.2f} MB of {args.dtype} weights, {D.method} model on {D.config['dataset']})")
    return 0
