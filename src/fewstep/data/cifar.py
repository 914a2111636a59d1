"""CIFAR-10 from the "python version" batches (`cifar-10-python.tar.gz`, extracted).

The directory (`root`, or `root/cifar-10-batches-py`, or $FEWSTEP_CIFAR10_DIR) holds
`data_batch_1` ... `data_batch_5` (train) and `test_batch` (test): pickled dicts with b"data",
a [10000, 3072] uint8 array of rows R(1024) G(1024) B(1024), and b"labels", a list of ints.
Pickle is the dataset's own format; it is read with an unpickler that only admits the numpy
array constructors these files use (and codecs.encode), so a tampered file cannot run code.

Images come back as [N, 3, 32, 32] float32 in [-1, 1] (x / 127.5 - 1) with int64 labels.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np

from ._files import check_split, find_first, resolve_root
from .dataset import Dataset, to_unit_range

__all__ = ["load_cifar10", "CIFAR10_CLASSES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                   "truck")
_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_HOW = ("Extract cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html) and pass "
        "root= (or set $FEWSTEP_CIFAR10_DIR to) the cifar-10-batches-py directory holding "
        "data_batch_1 ... data_batch_5 and test_batch; fewstep never downloads.")


# _codecs.encode rebuilds bytes in protocol-2 pickles written by Python 3; it runs no code.
_ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode}
_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # numpy's multiarray._reconstruct, in any numpy version


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals needed to rebuild a plain ndarray."""

    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _RECONSTRUCT
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch file -> (uint8 images [n, 3, 32, 32], int64 labels [n])."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ValueError(f"{path}: expected data [n, 3072] and labels [n], "
                         f"got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(root=None, split: str = "train") -> Dataset:
    """CIFAR-10 train (50000) or test (10000) split from the python batches."""
    check_split(split, "cifar10")
    root = resolve_root(root, "FEWSTEP_CIFAR10_DIR", None, "cifar10", _HOW)
    if not (root / _FILES[split][0]).is_file() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    parts = [read_batch(find_first([root / name], "cifar10", _HOW)) for name in _FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return Dataset(to_unit_range(images, 0, 255), labels, num_classes=10, name="cifar10",
                   classes=CIFAR10_CLASSES)
