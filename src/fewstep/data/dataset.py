"""The in-memory dataset every loader returns, and the conversion of pixels to [-1, 1].

A `Dataset` is a frozen pair of tensors, TensorDataset style: `images` [N, *shape] float32 (for
images [N, C, H, W] in [-1, 1]; for 2-D toys [N, 2] points) and optional `labels` [N] int64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["Dataset", "to_unit_range"]


def to_unit_range(array: np.ndarray, low: float, high: float) -> Tensor:
    """Map values in [low, high] affinely onto [-1, 1] and return a float32 tensor.

    uint8 pixels use (0, 255): x / 127.5 - 1; the sklearn digits use (0, 16): x / 8 - 1.
    """
    if not high > low:
        raise ValueError(f"value range must have high > low, got ({low}, {high})")
    x = torch.from_numpy(np.array(array, dtype=np.float32))  # a fresh, writable copy
    return x.sub_(low).mul_(2.0 / (high - low)).sub_(1.0)


@dataclass(frozen=True, eq=False)  # tensors: compare by identity
class Dataset:
    """Samples `images` [N, *shape] with optional integer `labels` [N].

    `dataset[i]` returns `(images[i], labels[i])`, or `(images[i],)` when unlabeled, like
    torch's TensorDataset (so a DataLoader accepts it); `i` may also be a slice or index tensor.
    `x` and `y` are aliases of `images` and `labels`.
    """

    images: Tensor
    labels: Tensor | None = None
    num_classes: int | None = None
    name: str = ""
    classes: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self):
        if not isinstance(self.images, Tensor) or self.images.ndim < 2:
            raise ValueError(f"{self.name or 'dataset'}: images must be a tensor [N, ...]")
        if self.labels is not None:
            labels = torch.as_tensor(self.labels).long()
            if labels.shape != (len(self.images),):
                raise ValueError(f"{self.name or 'dataset'}: labels must have shape "
                                 f"({len(self.images)},), got {tuple(labels.shape)}")
            object.__setattr__(self, "labels", labels)
            if self.num_classes is None and len(labels):
                object.__setattr__(self, "num_classes", int(labels.max()) + 1)
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    @property
    def x(self) -> Tensor:
        return self.images

    @property
    def y(self) -> Tensor | None:
        return self.labels

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28) or (2,)."""
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index):
        if self.labels is None:
            return (self.images[index],)
        return self.images[index], self.labels[index]

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, n={len(self)}, shape={self.shape}, "
                f"num_classes={self.num_classes})")
