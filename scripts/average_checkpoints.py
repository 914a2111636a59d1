"""Average the EMA weights of several checkpoints of one run (a box filter over EMA snapshots, a
crude post-hoc EMA) and write the result as a new checkpoint that samplers and benchmarks load.

    python scripts/average_checkpoints.py runs/fashion-scd/checkpoints/ckpt-000{25..29}000.json --out /tmp/avg5

The output checkpoint keeps the step, config and model weights of the last input; only ema.* changes.
Used for the post-hoc averaging check in BENCHMARKS.md section 2 (it did not help there).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fewstep.training.checkpoint import load_checkpoint, save_checkpoint


def average_ema(paths) -> tuple[dict, dict]:
    """(meta, tensors) of the last checkpoint with ema.* replaced by the mean over all `paths`."""
    if not paths:
        raise ValueError("average_checkpoints: give at least one checkpoint")
    meta, tensors = load_checkpoint(paths[-1])
    keys = [k for k, v in tensors.items() if k.startswith("ema.") and v.is_floating_point()]
    if not keys:
        raise ValueError(f"{paths[-1]} holds no EMA weights")
    total = {k: tensors[k].double() for k in keys}
    for p in paths[:-1]:
        _, other = load_checkpoint(p)
        for k in keys:
            if k not in other or other[k].shape != tensors[k].shape:
                raise ValueError(f"{p} does not match {paths[-1]} at {k} (another run or network?)")
            total[k] += other[k].double()
    for k in keys:
        tensors[k] = (total[k] / len(paths)).to(tensors[k].dtype)
    return meta, tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint .json files of one run")
    ap.add_argument("--out", required=True, help="directory for the averaged checkpoint")
    args = ap.parse_args()
    meta, tensors = average_ema(args.checkpoints)
    step = int(meta["step"])
    meta = {k: v for k, v in meta.items() if k not in ("step", "tensors", "format")}
    meta["averaged_from"] = [str(p) for p in args.checkpoints]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(args.out, step, tensors, meta)
    print(f"wrote {path} (EMA weights averaged over {len(args.checkpoints)} checkpoints)")


if __name__ == "__main__":
    main()
