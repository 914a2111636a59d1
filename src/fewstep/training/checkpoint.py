"""Checkpoints: tensors in safetensors, everything else in JSON, written atomically; never pickle.

A checkpoint of step S in directory D is the pair

    D/ckpt-0000000S.safetensors   model.*, ema.*, optim.<param>.<key>, loss.*, sampler.* tensors
    D/ckpt-0000000S.json          config, step, RNG states, data-iterator state, optimiser scalars,
                                  model config, the name of the tensor file

Each file is written to a temporary name in D, flushed, fsync'ed and moved into place with
os.replace; the JSON is written last, so a JSON that exists always names a complete tensor file.
`latest_checkpoint(D)` finds the newest complete pair.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import atomic_write_bytes, atomic_write_text

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_checkpoint", "load_checkpoint", "read_checkpoint_meta",
           "latest_checkpoint", "list_checkpoints", "checkpoint_step", "optimizer_state_to_flat",
           "optimizer_state_from_flat", "encode_state", "decode_state"]

_NAME = re.compile(r"^ckpt-(\d{8,})\.json$")


def encode_state(state: Tensor) -> str:
    """A uint8 RNG state tensor as base64 text (for JSON)."""
    return base64.b64encode(state.detach().cpu().contiguous().numpy().tobytes()).decode("ascii")


def decode_state(text: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def optimizer_state_to_flat(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    """Split `optimizer.state_dict()` into tensors ("optim.<param>.<key>") and JSON-able scalars."""
    tensors, scalars = {}, {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"state": scalars, "param_groups": groups}


def optimizer_state_from_flat(tensors: dict[str, Tensor], scalars: dict) -> dict:
    """Inverse of `optimizer_state_to_flat`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in scalars.get("state", {}).items():
        state.setdefault(int(index), {}).update(entry)
    groups = []
    for g in scalars["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _step_in_name(name: str) -> int | None:
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def checkpoint_step(path) -> int:
    """The step in a checkpoint's name (ckpt-<step>.json)."""
    step = _step_in_name(Path(path).name)
    if step is None:
        raise ValueError(f"{str(path)!r} is not named like a checkpoint (ckpt-<step>.json)")
    return step


def _numbered_checkpoints(directory) -> list[tuple[int, Path]]:
    """(step, JSON path) of the complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        step = _step_in_name(p.name)
        if step is not None and p.with_suffix(".safetensors").is_file():
            found.append((step, p))
    return sorted(found)


def list_checkpoints(directory) -> list[Path]:
    """Complete checkpoints (JSON whose tensor file exists) in `directory`, oldest first."""
    return [p for _, p in _numbered_checkpoints(directory)]


def latest_checkpoint(directory) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(directory, step: int, tensors: dict[str, Tensor], meta: dict, keep: int | None = None,
                    keep_every: int = 0) -> Path:
    """Write the pair for `step` (atomically, JSON last), prune to the newest `keep`; returns the JSON path.

    With keep_every = k > 0 the checkpoints of steps that are multiples of k are never pruned (nor
    counted among the `keep` newest): the milestones a benchmark compares survive a long run.
    """
    from safetensors.torch import save

    directory = Path(directory)
    stem = f"ckpt-{int(step):08d}"
    blobs = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = save(blobs, metadata={"step": str(int(step)), "format": "fewstep-train-1"})
    atomic_write_bytes(directory / f"{stem}.safetensors", data)
    meta = {**meta, "step": int(step), "tensors": f"{stem}.safetensors", "format": "fewstep-train-1"}
    path = atomic_write_text(directory / f"{stem}.json", json.dumps(meta, indent=1))
    if keep is not None:
        prunable = [p for s, p in _numbered_checkpoints(directory) if keep_every <= 0 or s % keep_every]
        for old in prunable[:-keep]:
            old.with_suffix(".safetensors").unlink(missing_ok=True)
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path) -> tuple[dict, dict[str, Tensor]]:
    """(meta, tensors) from a checkpoint JSON path or a directory (its latest checkpoint)."""
    from safetensors.torch import load_file

    path, meta = _read_meta(path)
    return meta, load_file(str(path.parent / meta["tensors"]), device="cpu")


def read_checkpoint_meta(path) -> dict:
    """A checkpoint's JSON (as `load_checkpoint`, without reading its tensors)."""
    return _read_meta(path)[1]


def _read_meta(path) -> tuple[Path, dict]:
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path) or latest_checkpoint(path / "checkpoints")
        if found is None:
            raise ValueError(f"no checkpoint (ckpt-*.json with its .safetensors) found in {path}")
        path = found
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"checkpoint {path} is not valid JSON ({e})") from None
    if meta.get("format") != "fewstep-train-1" or "tensors" not in meta:
        raise ValueError(f"{path} is not a fewstep training checkpoint")
    tensor_path = path.parent / meta["tensors"]
    if not tensor_path.is_file():
        raise ValueError(f"checkpoint {path} names a missing tensor file {tensor_path.name}")
    return path, meta
