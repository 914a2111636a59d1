"""MNIST and Fashion-MNIST from their standard idx files (gzip-compressed or raw).

A directory holds `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`
and `t10k-labels-idx1-ubyte`, each optionally ending in `.gz`; the torchvision layout
`DIR/MNIST/raw/` (`DIR/FashionMNIST/raw/`) is found too. Nothing is downloaded:

* Fashion-MNIST: `apt-get install dataset-fashion-mnist` (Debian / Ubuntu) puts the four `.gz`
  files in /usr/share/datasets/fashion-mnist, the default; or pass root= / set
  $FEWSTEP_FASHION_MNIST_DIR.
* MNIST: pass root= or set $FEWSTEP_MNIST_DIR to a directory holding the four files.

Images come back as [N, 1, 28, 28] float32 in [-1, 1] (x / 127.5 - 1) with int64 labels.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ._files import check_split, find_first, resolve_root
from .dataset import Dataset, to_unit_range

__all__ = ["read_idx", "load_mnist", "load_fashion_mnist", "FASHION_MNIST_DIR"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

# idx format (http://yann.lecun.com/exdb/mnist/): magic = 0x00 0x00 <type code> <ndim>, then ndim
# big-endian uint32 sizes, then the data in big-endian order.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path) -> np.ndarray:
    """Read one idx file (gzip-compressed or raw, detected from its first bytes) into an array."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: corrupt gzip stream ({e})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES or data[3] == 0:
        raise ValueError(f"{path}: not an idx file (bad magic number {data[:4].hex() or 'empty'}; "
                         f"expected 0000<type><ndim>, e.g. 00000803 for uint8 images)")
    dtype, ndim = np.dtype(_IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    count = int(np.prod(dims))
    if len(data) != header + count * dtype.itemsize:
        raise ValueError(f"{path}: idx header says shape {dims} ({count * dtype.itemsize} data "
                         f"bytes) but the file has {len(data) - header} data bytes")
    array = np.frombuffer(data, dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _load_idx_pair(root: Path, split: str, name: str, torchvision_dir: str, how_to_get: str,
                   num_classes: int, classes=None) -> Dataset:
    prefix = _PREFIX[split]
    dirs = [root, root / torchvision_dir / "raw"]

    def find(stem):
        return find_first([d / (stem + ext) for d in dirs for ext in (".gz", "")], name, how_to_get)

    images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{name}: expected images [N, H, W] and labels [N] in {root}, "
                         f"got {images.shape} and {labels.shape}")
    return Dataset(to_unit_range(images[:, None], 0, 255), labels.astype(np.int64),
                   num_classes=num_classes, name=name, classes=classes)


def load_mnist(root=None, split: str = "train") -> Dataset:
    """MNIST from idx files in `root` (or $FEWSTEP_MNIST_DIR); no default location."""
    check_split(split, "mnist")
    how = ("Pass root= (or set $FEWSTEP_MNIST_DIR to) a directory holding train-images-idx3-ubyte.gz, "
           "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
           "(or the same names without .gz); fewstep never downloads.")
    root = resolve_root(root, "FEWSTEP_MNIST_DIR", None, "mnist", how)
    return _load_idx_pair(root, split, "mnist", "MNIST", how, num_classes=10)


def load_fashion_mnist(root=None, split: str = "train") -> Dataset:
    """Fashion-MNIST from `root`, else $FEWSTEP_FASHION_MNIST_DIR, else the Debian location."""
    check_split(split, "fashion-mnist")
    how = (f"Run `apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_DIR}), or pass "
           "root= (or set $FEWSTEP_FASHION_MNIST_DIR to) a directory holding train-images-idx3-ubyte.gz, "
           "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
           "(or the same names without .gz); fewstep never downloads.")
    root = resolve_root(root, "FEWSTEP_FASHION_MNIST_DIR", FASHION_MNIST_DIR, "fashion-mnist", how)
    return _load_idx_pair(root, split, "fashion-mnist", "FashionMNIST", how, num_classes=10,
                          classes=FASHION_MNIST_CLASSES)
