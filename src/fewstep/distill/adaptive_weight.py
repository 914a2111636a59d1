"""sCM's learned adaptive weight w_phi(t) (Lu & Song 2025, Sec. 4.2 and Appendix; after EDM2's
uncertainty weighting, Karras et al. 2024).

The loss e^{w(t)} / D ||F - F^- - g||^2 - w(t) (Alg. 1) is minimised over w at
e^{-w(t)} = E[||F - F^- - g||^2 / D | t], so w learns to balance the loss's variance across times.
w is a small MLP on a positional embedding of t (c_noise(t) = t): PositionalEmbedding -> Linear ->
SiLU -> Linear(1), the last layer zero-initialised (w = 0 at the start).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..models.embedding import PositionalEmbedding

__all__ = ["AdaptiveWeight"]


class AdaptiveWeight(nn.Module):
    """w_phi(t) -> [B] (log-weight per sample); t: [B] TrigFlow times in [0, pi/2]."""

    def __init__(self, feature_dim: int = 64, hidden: int = 64, scale: float = 100.0):
        super().__init__()
        self.features = PositionalEmbedding(feature_dim, scale=scale)
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, t: Tensor) -> Tensor:
        w = self.mlp[0].weight
        return self.mlp(self.features(t.reshape(-1)).to(w.dtype)).squeeze(1)
