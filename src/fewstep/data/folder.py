"""Any folder of images (needs Pillow: `pip install pillow`, imported only here).

Files with a common image extension are found recursively and read in sorted path order. With
`class_folders=True` the first directory level under `root` names the class
(`root/cat/1.png` -> class "cat"); classes are numbered in sorted order.

Each image is converted to `channels` (1: grayscale "L", 3: "RGB"); with `resolution=R` it is
center-cropped to a square and resized to R x R (Lanczos); without it, all images must already
share one size. Result: [N, C, H, W] float32 in [-1, 1] (x / 127.5 - 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import Dataset, to_unit_range

__all__ = ["load_folder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm")


def _pil_image():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("loading an image folder needs Pillow: pip install pillow "
                          "(or pip install 'fewstep[train]')") from None
    return Image


def center_crop_resize(image, resolution: int):
    """Crop the largest centered square, then resize it to resolution x resolution."""
    Image = _pil_image()
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    if s != resolution:
        lanczos = getattr(Image, "Resampling", Image).LANCZOS  # Pillow < 9.1: Image.LANCZOS
        image = image.resize((resolution, resolution), lanczos)
    return image


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def load_folder(root, resolution: int | None = None, channels: int = 3,
                class_folders: bool = False, split: str = "train") -> Dataset:
    """All images under `root` as one Dataset (the folder is the split: `split` is not used)."""
    Image = _pil_image()
    if root is None:
        raise FileNotFoundError("folder: pass root= the directory holding the images")
    if channels not in (1, 3):
        raise ValueError(f"folder: channels must be 1 or 3, got {channels}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"folder: directory not found: {root}")
    paths = list_images(root)
    if not paths:
        raise FileNotFoundError(f"folder: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")

    arrays = []
    for path in paths:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if resolution is not None:
                image = center_crop_resize(image, resolution)
            arrays.append(np.asarray(image, dtype=np.uint8))
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"folder: images under {root} have different sizes {sorted(sizes)[:4]}...; "
                         "pass resolution= to crop and resize them to one square size")
    images = np.stack(arrays)
    images = images[:, None] if channels == 1 else images.transpose(0, 3, 1, 2)

    labels = classes = None
    if class_folders:
        parts = [p.relative_to(root).parts for p in paths]
        loose = [paths[i] for i, q in enumerate(parts) if len(q) < 2]
        if loose:
            raise ValueError(f"folder: class_folders=True but {loose[0]} is not inside a class "
                             f"subdirectory of {root}")
        classes = tuple(sorted({q[0] for q in parts}))
        index = {c: i for i, c in enumerate(classes)}
        labels = np.array([index[q[0]] for q in parts], dtype=np.int64)
    return Dataset(to_unit_range(images, 0, 255), labels,
                   num_classes=len(classes) if classes else None, name="folder", classes=classes)
