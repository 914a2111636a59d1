"""Improved precision and recall (Kynkaanniemi et al., NeurIPS 2019, arXiv 1904.06991).

Each set's manifold is approximated by the union of balls around its feature vectors, each ball's
radius being the distance to the k-th nearest neighbour within the same set (k = 3 in the paper).

    precision = fraction of generated samples inside the real manifold   (fidelity)
    recall    = fraction of real samples inside the generated manifold   (coverage / diversity)

Distances are computed `batch_size` rows at a time, so memory is O(batch_size * N).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["PrecisionRecall", "knn_radii", "manifold_coverage", "precision_recall"]


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _as_tensor(features, name: str, device, dtype) -> Tensor:
    x = torch.as_tensor(features).to(device=device, dtype=dtype)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [num_samples, dim], got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def knn_radii(features: Tensor, k: int = 3, batch_size: int = 1024) -> Tensor:
    """Distance from each row of features [N, D] to its k-th nearest other row, shape [N]."""
    n = features.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, num_samples - 1] = [1, {n - 1}], got {k}")
    radii = []
    for start in range(0, n, batch_size):
        d = torch.cdist(features[start:start + batch_size], features)
        # k + 1 smallest includes the point itself (distance 0), so index k is the k-th neighbour.
        radii.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def manifold_coverage(manifold: Tensor, radii: Tensor, queries: Tensor, batch_size: int = 1024) -> float:
    """Fraction of `queries` lying in some ball B(manifold[j], radii[j]) (closed balls)."""
    inside = []
    for start in range(0, queries.shape[0], batch_size):
        d = torch.cdist(queries[start:start + batch_size], manifold)
        inside.append((d <= radii.unsqueeze(0)).any(dim=1))
    return torch.cat(inside).double().mean().item()


@torch.no_grad()
def precision_recall(real, fake, k: int = 3, batch_size: int = 1024, device=None,
                     dtype: torch.dtype = torch.float32) -> PrecisionRecall:
    """Improved precision and recall of generated features `fake` [M, D] against `real` [N, D].

    Returns PrecisionRecall(precision, recall), both in [0, 1]. Both sets need more than k samples;
    the paper uses k = 3 and equal set sizes (the metric depends on N through the radii).
    """
    real = _as_tensor(real, "real", device, dtype)
    fake = _as_tensor(fake, "fake", device, dtype)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]} vs fake {fake.shape[1]}")
    real_radii = knn_radii(real, k, batch_size)
    fake_radii = knn_radii(fake, k, batch_size)
    precision = manifold_coverage(real, real_radii, fake, batch_size)
    recall = manifold_coverage(fake, fake_radii, real, batch_size)
    return PrecisionRecall(precision, recall)
