"""Offline feature extractors: a small CNN classifier per built-in dataset, weights in the package.

`ClassifierFeatures("digits")` (or "fashion-mnist") loads `assets/classifier-<name>.safetensors`,
trained by `scripts/train_feature_classifier.py` on the dataset's training images; its features are
the penultimate layer (the Frechet distance over them is this project's FD for that dataset, the
role Inception plays for FID on natural images). Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["SmallClassifier", "ClassifierFeatures", "classifier_path", "SHIPPED_CLASSIFIERS"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SHIPPED_CLASSIFIERS = ("digits", "fashion-mnist")


class SmallClassifier(nn.Module):
    """conv(32)-conv(64, stride 2)-conv(128, stride 2) with GroupNorm/SiLU, global average pool,
    a `feature_dim` embedding and a linear head. Works at 8x8 and 28x28."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, feature_dim: int = 64, dropout: float = 0.1):
        super().__init__()
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "feature_dim": feature_dim,
                       "dropout": dropout}

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(block(in_channels, 32, 1), block(32, 64, 2), block(64, 128, 2))
        self.embed = nn.Sequential(nn.Linear(128, feature_dim), nn.SiLU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.embed(self.body(x).mean((2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.features(x)))


def classifier_path(name: str) -> Path:
    return ASSETS / f"classifier-{name}.safetensors"


class ClassifierFeatures:
    """Penultimate features of the shipped classifier for dataset `name` (images in [-1, 1])."""

    def __init__(self, name: str = "digits", path=None, device="cpu"):
        from safetensors.torch import load_file, safe_open

        path = Path(path) if path is not None else classifier_path(name)
        if not path.exists():
            raise FileNotFoundError(
                f"no feature classifier at {path}: shipped ones are {', '.join(SHIPPED_CLASSIFIERS)}; "
                f"train one with `python scripts/train_feature_classifier.py --dataset {name}`")
        with safe_open(str(path), "pt") as f:
            config = json.loads(f.metadata()["config"])
        self.model = SmallClassifier(**config).to(device).eval()
        self.model.load_state_dict(load_file(str(path), device=str(device)))
        self.name = f"classifier-{name}"
        self.device = device

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        return self.model.features(images.float().to(self.device))

    @torch.inference_mode()
    def predict(self, images: Tensor) -> Tensor:
        """Class predictions (for accuracy checks and class-conditional evaluation)."""
        return self.model(images.float().to(self.device)).argmax(1)
