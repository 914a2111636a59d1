"""Frechet distance between two feature distributions (FID when the features are Inception's).

Each set of features is summarised by its mean and covariance, and the Frechet (2-Wasserstein)
distance between the Gaussians with those statistics is (Dowson & Landau 1982; Heusel et al. 2017)

    d^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2),

where tr (S1^1/2 S2 S1^1/2)^1/2 = tr (S1 S2)^1/2 (the two matrices are similar). Only that trace is
hard; two interchangeable ways to get it, both in float64:

* ``"scipy"``: ``scipy.linalg.sqrtm(S1 @ S2)`` (the pytorch-fid / clean-fid / EDM recipe). The product
  is not symmetric, so round-off can leave tiny imaginary parts; they are dropped when negligible, and
  a singular product is retried with ``eps * I`` added to both covariances.
* ``"eigh"``: symmetric eigendecompositions only: A = S1^1/2 from eigh(S1), then the eigenvalues of
  the symmetric PSD matrix A S2 A; negative round-off eigenvalues are clamped to zero. Needs only numpy.

``method="auto"`` uses scipy when it is installed (matching published FID numbers) and eigh otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_from_features", "trace_sqrt_product"]


def _as_features(features, name: str = "features") -> np.ndarray:
    """A float64 [N, D] numpy array from a torch tensor or array-like, with shape checks."""
    if hasattr(features, "detach"):  # torch.Tensor, without importing torch here
        features = features.detach().cpu().double().numpy()
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [num_samples, dim], got shape {f.shape}")
    if f.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples to estimate a covariance, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return f


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64 numpy) of features [N, D], N >= 2."""
    f = _as_features(features)
    mu = f.mean(axis=0)
    sigma = np.cov(f, rowvar=False)
    return mu, np.atleast_2d(sigma)


def _check_stats(mu1, s1, mu2, s2):
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"means must be 1-D vectors of equal length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must be [{d}, {d}] to match the means, got {s.shape}")
    for name, a in (("mu1", mu1), ("sigma1", s1), ("mu2", mu2), ("sigma2", s2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or Inf")
    return mu1, s1, mu2, s2


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix via eigh, round-off negatives clamped."""
    s = 0.5 * (s + s.T)
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _trace_sqrt_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    w = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def _trace_sqrt_scipy(s1: np.ndarray, s2: np.ndarray, eps: float, imag_atol: float) -> float:
    from scipy.linalg import sqrtm

    covmean = sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # Singular product (e.g. fewer samples than dimensions): regularise both covariances.
        offset = np.eye(s1.shape[0]) * eps
        covmean = sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max(initial=0.0)
        if imag > imag_atol:
            raise ValueError(
                f"sqrtm(S1 S2) has a significant imaginary component ({imag:.3g}); the covariances are "
                "probably far from PSD. Try method='eigh'."
            )
        covmean = covmean.real
    return float(np.trace(covmean))


def _resolve_method(method: str) -> str:
    if method == "auto":
        try:
            import scipy.linalg  # noqa: F401
        except ImportError:
            return "eigh"
        return "scipy"
    if method not in ("scipy", "eigh"):
        raise ValueError(f"method must be 'auto', 'scipy' or 'eigh', got {method!r}")
    return method


def trace_sqrt_product(s1, s2, method: str = "auto", eps: float = 1e-6, imag_atol: float = 1e-3) -> float:
    """tr (S1^1/2 S2 S1^1/2)^1/2 = tr sqrtm(S1 S2) for PSD S1, S2 (see the module docstring)."""
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if _resolve_method(method) == "scipy":
        return _trace_sqrt_scipy(s1, s2, eps, imag_atol)
    return _trace_sqrt_eigh(s1, s2)


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "auto", eps: float = 1e-6) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), a float >= 0 (up to round-off).

    method: "auto" (scipy if installed, else eigh), "scipy" or "eigh"; eps: diagonal offset used by
    the scipy path only when S1 S2 is singular.
    """
    mu1, s1, mu2, s2 = _check_stats(mu1, sigma1, mu2, sigma2)
    diff = mu1 - mu2
    tr_covmean = trace_sqrt_product(s1, s2, method=method, eps=eps)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_from_features(features1, features2, method: str = "auto") -> float:
    """Frechet distance between the statistics of two feature sets [N1, D] and [N2, D]."""
    f1, f2 = _as_features(features1, "features1"), _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    return frechet_distance(*feature_statistics(f1), *feature_statistics(f2), method=method)
