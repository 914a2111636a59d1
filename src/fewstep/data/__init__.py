"""Built-in and on-disk datasets behind one entry point, `load_dataset`; nothing is downloaded.

    ds = load_dataset("digits")                      # bundled, [1797, 1, 8, 8] in [-1, 1]
    ds = load_dataset("fashion-mnist", split="test") # /usr/share/datasets/fashion-mnist (Debian)
    ds = load_dataset("mnist", root="~/data/mnist")  # idx files (.gz or raw)
    ds = load_dataset("cifar10", root="~/data/cifar-10-batches-py")
    ds = load_dataset("folder", root="imgs/", resolution=64, channels=3, class_folders=True)
    ds = load_dataset("npz", root="images.npz")
    ds = load_dataset("moons", n=10_000, seed=0)     # also swissroll, checkerboard, gmm2d
    for x, y in batches(ds, batch_size=256, seed=0, rank=rank, world_size=world_size): ...

Every loader returns a `Dataset`: `.images` (alias `.x`), `.labels` (int64 or None),
`.num_classes`, `.shape` (per sample), `.name`. Images are float32 NCHW in [-1, 1].
"""

from __future__ import annotations

from .cifar import load_cifar10
from .dataset import Dataset, to_unit_range
from .digits import load_digits
from .folder import load_folder
from .idx import load_fashion_mnist, load_mnist, read_idx
from .loader import Batches, batches
from .npz import load_npz
from .toys import checkerboard, gmm2d, gmm2d_oracle, moons, swissroll

__all__ = ["load_dataset", "DATASETS", "Dataset", "Batches", "batches", "read_idx", "to_unit_range",
           "gmm2d_oracle"]

# name -> loader(root, split, **kw)
DATASETS = {
    "digits": load_digits,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "folder": load_folder,
    "npz": load_npz,
}
TOYS = {"moons": moons, "swissroll": swissroll, "checkerboard": checkerboard, "gmm2d": gmm2d}
ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
           "swiss_roll": "swissroll", "swiss-roll": "swissroll"}


def known_names() -> list[str]:
    return [*DATASETS, *TOYS]


def load_dataset(name: str, root: str | None = None, split: str = "train", **kw) -> Dataset:
    """Load dataset `name` (see `known_names()`); extra keywords go to its loader.

    Toys (moons, swissroll, checkerboard, gmm2d) take n= and seed= and no root.
    """
    key = ALIASES.get(name.lower(), name.lower())
    if key in TOYS:
        if root is not None:
            raise ValueError(f"{key} is generated; it takes n= and seed=, not root=")
        return TOYS[key](split=split, **kw)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(known_names())} "
                         f"(aliases: {', '.join(ALIASES)})")
    return DATASETS[key](root=root, split=split, **kw)
