"""Exact oracles for testing solvers, trainers and distillers."""

from .gmm import GaussianMixture

__all__ = ["GaussianMixture"]
