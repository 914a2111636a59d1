"""Cache of reference statistics (mean, covariance) as .npz files.

A file is keyed by dataset name + split + feature extractor name (+ number of samples), so
statistics from different data, splits, networks or sample counts never mix. Writes are atomic
(a temporary file in the same folder, then ``os.replace``), so a crashed or concurrent run never
leaves a half-written file behind; a file that is present is simply loaded.

The default folder is ``$FEWSTEP_CACHE_DIR/stats`` or ``~/.cache/fewstep/stats``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_write
from .frechet import feature_statistics

__all__ = [
    "cache_key", "cached_statistics", "default_cache_dir", "load_statistics", "save_statistics", "statistics_path",
]


def default_cache_dir() -> Path:
    """``$FEWSTEP_CACHE_DIR/stats`` if set, else ``~/.cache/fewstep/stats``."""
    root = os.environ.get("FEWSTEP_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "fewstep") / "stats"


def cache_key(dataset: str, split: str, extractor: str, num_samples: int | None = None) -> str:
    """A readable, file-name-safe key; a short hash of the exact fields keeps sanitised names unique."""
    count = "all" if num_samples is None else f"n{int(num_samples)}"
    fields = [str(dataset), str(split), str(extractor), count]
    readable = "-".join(re.sub(r"[^A-Za-z0-9._]+", "_", f).strip("_") or "_" for f in fields)
    digest = hashlib.sha1("\x00".join(fields).encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def statistics_path(dataset: str, split: str, extractor: str, num_samples: int | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the statistics for this key live (the file may not exist yet)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{cache_key(dataset, split, extractor, num_samples)}.npz"


def save_statistics(path: str | os.PathLike, mu, sigma, **metadata) -> Path:
    """Atomically write mu, sigma (and string/number metadata) to `path` (.npz)."""
    meta = {f"meta_{k}": np.asarray(v) for k, v in metadata.items() if v is not None}
    return atomic_write(path, lambda f: np.savez(f, mu=np.asarray(mu, np.float64),
                                                 sigma=np.asarray(sigma, np.float64), **meta))


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray] | None:
    """(mu, sigma) from `path`, or None if the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    with np.load(path) as data:
        mu, sigma = data["mu"], data["sigma"]
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: malformed statistics (mu {mu.shape}, sigma {sigma.shape})")
    return mu, sigma


def cached_statistics(compute_features: Callable[[], object], dataset: str, split: str, extractor: str,
                      num_samples: int | None = None, cache_dir: str | os.PathLike | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Reference (mu, sigma): loaded from the cache if present, else `compute_features()` -> [N, D]
    features are reduced to statistics, saved atomically, and returned. `extractor` is the
    extractor's name (e.g. ``InceptionFID.name``)."""
    path = statistics_path(dataset, split, extractor, num_samples, cache_dir)
    stats = load_statistics(path)
    if stats is not None:
        return stats
    features = compute_features()
    if num_samples is not None and len(features) != num_samples:
        raise ValueError(f"compute_features returned {len(features)} samples, expected {num_samples=}")
    mu, sigma = feature_statistics(features)
    save_statistics(path, mu, sigma, dataset=dataset, split=split, extractor=extractor,
                    num_samples=len(features))
    return mu, sigma
