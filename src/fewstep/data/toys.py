"""Seeded 2-D toy distributions, [n, 2] float32 points of roughly unit scale (numpy only).

Each generator draws n i.i.d. points from numpy's Generator seeded with (seed, split), so a
(seed, split) pair always gives the same points on every platform and "test" is an independent
draw from "train".

* moons: two interleaved unit half-circles (sklearn's make_moons, shifted to mean ~0): label 0
  is the upper half of the circle centred at (-0.5, -0.25), label 1 the lower half of the one
  centred at (0.5, 0.25); plus N(0, noise^2) per coordinate.
* swissroll: the 2-D swiss roll t (cos t, sin t) / 7, t ~ U[1.5 pi, 4.5 pi]; plus noise.
* checkerboard: uniform on the 8 cells [i, i+1) x [j, j+1) of [-2, 2)^2 with i + j even.
* gmm2d: 8 (k) Gaussians of std 0.1 at angles 2 pi m / k on a circle of radius sqrt(2), equal
  weights, label = component; `gmm2d_oracle` gives the same mixture as an exact oracle.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._files import check_split
from .dataset import Dataset

__all__ = ["moons", "swissroll", "checkerboard", "gmm2d", "gmm2d_means", "gmm2d_oracle"]

GMM2D_RADIUS = math.sqrt(2.0)  # with std 0.1: variance ~1 per coordinate


def _rng(seed: int, split: str, name: str) -> np.random.Generator:
    index = ("train", "test").index(check_split(split, name))
    return np.random.default_rng([int(seed), index])


def _dataset(points: np.ndarray, name: str, labels=None, num_classes=None) -> Dataset:
    return Dataset(torch.from_numpy(points.astype(np.float32)), labels, num_classes, name)


def moons(n: int = 10_000, seed: int = 0, noise: float = 0.05, split: str = "train") -> Dataset:
    rng = _rng(seed, split, "moons")
    labels = rng.integers(0, 2, n)
    angle = rng.uniform(0.0, math.pi, n)
    sign = 1 - 2 * labels  # +1 upper moon, -1 lower moon
    centre = np.stack([-0.5 * sign, -0.25 * sign], 1)
    points = centre + np.stack([np.cos(angle) * sign, np.sin(angle) * sign], 1)
    points += noise * rng.standard_normal((n, 2))
    return _dataset(points, "moons", labels, 2)


def swissroll(n: int = 10_000, seed: int = 0, noise: float = 0.05, split: str = "train") -> Dataset:
    rng = _rng(seed, split, "swissroll")
    t = 1.5 * math.pi * (1 + 2 * rng.uniform(size=n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 7.0
    points += noise * rng.standard_normal((n, 2))
    return _dataset(points, "swissroll")


def checkerboard(n: int = 10_000, seed: int = 0, split: str = "train") -> Dataset:
    rng = _rng(seed, split, "checkerboard")
    cells = np.array([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0])
    points = cells[rng.integers(0, len(cells), n)] + rng.uniform(size=(n, 2))
    return _dataset(points, "checkerboard")


def gmm2d_means(k: int = 8, radius: float = GMM2D_RADIUS) -> np.ndarray:
    angle = 2 * math.pi * np.arange(k) / k
    return radius * np.stack([np.cos(angle), np.sin(angle)], 1)


def gmm2d(n: int = 10_000, seed: int = 0, k: int = 8, radius: float = GMM2D_RADIUS,
          std: float = 0.1, split: str = "train") -> Dataset:
    rng = _rng(seed, split, "gmm2d")
    labels = rng.integers(0, k, n)
    points = gmm2d_means(k, radius)[labels] + std * rng.standard_normal((n, 2))
    return _dataset(points, "gmm2d", labels, k)


def gmm2d_oracle(k: int = 8, radius: float = GMM2D_RADIUS, std: float = 0.1):
    """The gmm2d mixture as a fewstep.testing.GaussianMixture (exact denoiser and ODE)."""
    from ..testing.gmm import GaussianMixture

    return GaussianMixture(gmm2d_means(k, radius), torch.full((k,), std), labels=torch.arange(k))
