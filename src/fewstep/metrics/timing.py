"""Cost accounting for samplers: model calls (NFE) and wall-clock time per sample.

    counted = CallCounter(denoiser)
    with Stopwatch(device) as sw:
        x = solver(counted, x, ...)
    print(counted.calls, sw.per_sample(x.shape[0]))

GPU work is asynchronous, so the stopwatch synchronises CUDA on start and stop.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

__all__ = ["CallCounter", "Stopwatch", "synchronize", "time_per_sample"]


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for pending CUDA work on `device` (or on every initialised GPU when None); else no-op."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize(device)
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class CallCounter:
    """Wraps a callable and counts its invocations (``.calls``); other attributes pass through."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)

    def reset(self) -> int:
        """Zero the counter and return the previous count."""
        calls, self.calls = self.calls, 0
        return calls

    def __getattr__(self, name):  # only reached for attributes not found on the wrapper
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)

    def __repr__(self) -> str:
        return f"CallCounter({self.fn!r}, calls={self.calls})"


class Stopwatch:
    """Context manager measuring wall-clock seconds (``.elapsed``), CUDA-synchronised on `device`."""

    def __init__(self, device: str | torch.device | None = None):
        self.device = device
        self.elapsed = 0.0

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.elapsed = time.perf_counter() - self._start

    def per_sample(self, num_samples: int) -> float:
        return self.elapsed / max(int(num_samples), 1)


def time_per_sample(fn: Callable[[], object], num_samples: int, device: str | torch.device | None = None,
                    warmup: int = 1, repeats: int = 1) -> float:
    """Best-of-`repeats` wall-clock seconds per sample of `fn()`, which makes `num_samples` samples,
    after `warmup` untimed calls (compilation, cuDNN autotuning, allocator warm-up)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(max(repeats, 1)):
        with Stopwatch(device) as sw:
            fn()
        best = min(best, sw.per_sample(num_samples))
    return best
