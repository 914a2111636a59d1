"""`fewstep sample MODEL`: samples from a checkpoint, a run directory or a shipped model.

Writes OUT/samples.png (an image grid; a scatter plot for 2-D data when matplotlib is installed),
OUT/samples.npz (images in [-1, 1] or vectors, labels) and OUT/config.json.
"""

from __future__ import annotations

import argparse

import numpy as np

from .common import add_sampling_arguments, generate, pyplot, run_dir, sampling_options, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a trained or shipped model into a PNG grid and an .npz",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint .json, run directory, model file .json (`fewstep export`) "
                                 "or shipped model name (`fewstep models`)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--out", default=None, help="output directory (default runs/sample-<time>)")
    add_sampling_arguments(p)
    p.set_defaults(fn=run)


def run(args) -> int:
    from ..images import save_grid
    from ..pretrained import load_denoiser

    if args.n < 1:
        raise ValueError("--n must be >= 1")
    D = load_denoiser(args.model, device=args.device)
    x, labels, nfe, seconds = generate(D, args.n, seed=args.seed, label=args.label, guidance=args.guidance,
                                       batch_size=args.batch_size, device=args.device, **sampling_options(args))
    out = run_dir(args.out, "sample")
    if x.ndim == 4:
        save_grid(x, out / "samples.png")
    elif not _scatter(x, labels, out / "samples.png"):
        print("(no samples.png: vector samples need matplotlib for a scatter plot)")
    np.savez_compressed(out / "samples.npz", images=x.numpy(),
                        **({"labels": labels.numpy()} if labels is not None else {}))
    write_json(out / "config.json", {"command": "sample", "args": {k: v for k, v in vars(args).items() if k != "fn"},
                                     "model_source": D.source, "nfe": nfe, "seconds": seconds})
    print(f"{args.n} samples in {seconds:.2f}s ({nfe} model calls each, {1e3 * seconds / args.n:.2f} ms/sample) "
          f"-> {out / 'samples.png'}, {out / 'samples.npz'}")
    return 0


def _scatter(x, labels, path) -> bool:
    """A scatter plot of the first two coordinates of vector samples; False without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    x = x.reshape(len(x), -1).numpy()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(x[:, 0], x[:, 1] if x.shape[1] > 1 else np.zeros(len(x)), s=4,
               c=None if labels is None else labels.numpy(), cmap="tab10")
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
