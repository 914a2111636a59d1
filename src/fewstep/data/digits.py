"""The 8x8 handwritten digits bundled with fewstep (the copy scikit-learn ships; no download).

1797 grayscale images, labels 0..9, stored in `fewstep/assets/digits.npz` as uint8 values 0..16
(written by scripts/make_digits_asset.py; scikit-learn is not needed at run time). They come back
as [1797, 1, 8, 8] float32 in [-1, 1] (x / 8 - 1), not resized. There is no official train/test
split: "train" (or "all") is the whole set.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from ._files import check_split
from .dataset import Dataset, to_unit_range

__all__ = ["load_digits"]


def load_digits(root=None, split: str = "train") -> Dataset:
    """The bundled digits; `root` must be None (the data ships inside the package)."""
    if root is not None:
        raise ValueError("digits: the data ships with fewstep; do not pass root=")
    if split == "test":
        raise ValueError("digits: there is no held-out test split; split='train' (or 'all') is "
                         "the whole set of 1797 images")
    check_split(split, "digits", ("train", "all"))
    with resources.files("fewstep").joinpath("assets").joinpath("digits.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    return Dataset(to_unit_range(images[:, None], 0, 16), labels.astype(np.int64), num_classes=10,
                   name="digits", classes=tuple(str(i) for i in range(10)))
