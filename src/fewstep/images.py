"""Image grids as PNG with numpy and zlib only (no Pillow needed)."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["to_uint8", "make_grid_image", "save_png", "save_grid"]


def to_uint8(images) -> np.ndarray:
    """[-1, 1] NCHW (tensor or array) to uint8 NHWC."""
    x = images.detach().float().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images, np.float32)
    if x.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {x.shape}")
    x = np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def make_grid_image(images, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """A uint8 [H, W, C] grid of the images (C = 1 or 3), each upscaled by `scale` (nearest)."""
    x = to_uint8(images)
    if scale > 1:
        x = x.repeat(scale, 1).repeat(scale, 2)
    n, h, w, c = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = x[i]
    return grid


def save_png(array: np.ndarray, path) -> Path:
    """Write a uint8 [H, W] / [H, W, 1] / [H, W, 3] array as PNG."""
    a = np.asarray(array, np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    color = 0 if a.ndim == 2 else 2
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[i].tobytes() for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def save_grid(images, path, nrow: int | None = None, scale: int | None = None) -> Path:
    """Save images in [-1, 1] as one PNG grid (small images are upscaled to be visible)."""
    h = images.shape[-1]
    return save_png(make_grid_image(images, nrow, scale=scale or max(1, 64 // h)), path)
