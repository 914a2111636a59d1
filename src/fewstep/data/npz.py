"""Images from a NumPy `.npz` file (read with allow_pickle=False).

Keys: `images` (or `x`) [N, C, H, W], [N, H, W, C] or [N, H, W]; optional `labels` (or `y`) [N]
integers. The layout is inferred when only one of axis 1 / axis -1 has a channel count
(1, 3 or 4); otherwise pass layout="NCHW" or "NHWC".

Conversion to [-1, 1] maps `value_range=(low, high)` affinely onto [-1, 1]. When not given:

* integer arrays (uint8 ...) are taken as (0, 255): x / 127.5 - 1;
* float arrays within [0, 1] are taken as (0, 1): 2 x - 1;
* float arrays within [-1, 1] (with a negative value) are kept as they are;
* anything else is an error asking for value_range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import Dataset, to_unit_range

__all__ = ["load_npz", "infer_layout", "infer_value_range"]

_CHANNELS = (1, 3, 4)


def infer_layout(shape: tuple[int, ...]) -> str:
    """ "NCHW" or "NHWC" from a 4-D shape, when only one of the two reads as channels."""
    first, last = shape[1] in _CHANNELS, shape[3] in _CHANNELS
    if first != last:
        return "NCHW" if first else "NHWC"
    raise ValueError(f"npz: cannot tell whether images of shape {shape} are NCHW or NHWC; "
                     "pass layout='NCHW' or layout='NHWC'")


def infer_value_range(array: np.ndarray) -> tuple[float, float]:
    """The (low, high) that maps onto [-1, 1], by the rules in the module docstring."""
    if array.size == 0:
        return (0.0, 1.0)
    low, high = float(array.min()), float(array.max())
    if np.issubdtype(array.dtype, np.integer):
        if low >= 0 and high <= 255:
            return (0.0, 255.0)
    elif np.issubdtype(array.dtype, np.floating):
        if low >= 0 and high <= 1:
            return (0.0, 1.0)
        if low >= -1 and high <= 1:
            return (-1.0, 1.0)
    raise ValueError(f"npz: images of dtype {array.dtype} span [{low}, {high}], which is not uint8 "
                     "[0, 255] nor float [0, 1] or [-1, 1]; pass value_range=(low, high)")


def _get(arrays, keys, path):
    found = [k for k in keys if k in arrays.files]
    if len(found) > 1:
        raise ValueError(f"npz: {path} has both {found[0]!r} and {found[1]!r}; keep one")
    return arrays[found[0]] if found else None


def load_npz(root, layout: str | None = None, value_range=None, num_classes: int | None = None,
             split: str = "train") -> Dataset:
    """The .npz file at `root` as a Dataset (the file is the split: `split` is not used)."""
    if root is None:
        raise FileNotFoundError("npz: pass root= the path of the .npz file")
    path = Path(root).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"npz: file not found: {path}")
    with np.load(path, allow_pickle=False) as arrays:
        images = _get(arrays, ("images", "x"), path)
        labels = _get(arrays, ("labels", "y"), path)
        if images is None:
            raise ValueError(f"npz: {path} has no 'images' (or 'x') array; keys: {arrays.files}")

    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        layout = layout or infer_layout(images.shape)
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"npz: layout must be 'NCHW' or 'NHWC', got {layout!r}")
        if layout == "NHWC":
            images = images.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"npz: images must be [N, H, W] or 4-D, got shape {images.shape}")
    low, high = value_range if value_range is not None else infer_value_range(images)

    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
            raise ValueError(f"npz: labels must be integers of shape ({len(images)},), "
                             f"got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    return Dataset(to_unit_range(images, low, high), labels, num_classes=num_classes, name="npz")
