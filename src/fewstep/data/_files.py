"""Shared helpers for on-disk datasets: where to look, what to say when it is not there.

Nothing here downloads: a missing dataset is a FileNotFoundError that names the exact paths
looked for and how to get the files.
"""

from __future__ import annotations

import os
from pathlib import Path

SPLITS = ("train", "test")


def check_split(split: str, name: str, splits=SPLITS) -> str:
    if split not in splits:
        raise ValueError(f"{name}: unknown split {split!r}; expected one of {list(splits)}")
    return split


def resolve_root(root, env_var: str, default: str | None, name: str, how_to_get: str) -> Path:
    """`root` if given, else $env_var if set, else `default`; error if none of them is given."""
    if root is None:
        root = os.environ.get(env_var) or default
    if root is None:
        raise FileNotFoundError(f"{name}: no data directory given (root=None, ${env_var} unset). "
                                f"{how_to_get}")
    return Path(root).expanduser()


def find_first(candidates: list[Path], name: str, how_to_get: str) -> Path:
    """The first existing path in `candidates`, else FileNotFoundError naming all of them."""
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise FileNotFoundError(f"{name}: file not found; looked for {looked}. {how_to_get}")
