"""Write src/fewstep/assets/digits.npz from scikit-learn's bundled 8x8 digits.

Run once, with scikit-learn installed (it is not a fewstep dependency; the package only reads
the .npz with numpy):

    python scripts/make_digits_asset.py

The file holds `images` [1797, 8, 8] uint8 with values 0..16 and `labels` [1797] uint8 (0..9).
sklearn's copy is the test set of the UCI "Optical Recognition of Handwritten Digits" data
(Alpaydin & Kaynak, 1998; CC BY 4.0).
"""

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

OUT = Path(__file__).resolve().parents[1] / "src" / "fewstep" / "assets" / "digits.npz"


def main():
    digits = load_digits()
    images = digits.images
    assert images.shape == (1797, 8, 8) and images.min() == 0 and images.max() == 16
    assert np.array_equal(images, np.round(images)), "digits are expected to be integers"
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, images=images.astype(np.uint8), labels=digits.target.astype(np.uint8))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
