import pytest
import torch

from fewstep.data import load_dataset
from fewstep.metrics import ClassifierFeatures, frechet_distance_from_features


def test_shipped_digits_classifier_is_accurate_and_separates_sets():
    ds = load_dataset("digits")
    f = ClassifierFeatures("digits")
    # the held-out fifth used in training (fixed permutation, seed 0)
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    test = perm[: len(ds) // 5]
    acc = (f.predict(ds.images[test]) == ds.labels[test]).float().mean().item()
    assert acc > 0.95
    feats = f(ds.images)
    assert feats.shape == (len(ds), 64)
    half = len(ds) // 2
    fd_same = frechet_distance_from_features(feats[perm[:half]], feats[perm[half:]])
    noise = torch.randn(half, 1, 8, 8).clamp(-1, 1)
    fd_noise = frechet_distance_from_features(feats[:half], f(noise))
    blur = torch.nn.functional.avg_pool2d(ds.images[:half], 3, 1, 1)
    fd_blur = frechet_distance_from_features(feats[half:], f(blur))
    assert fd_same < 0.1 * fd_blur < 0.1 * fd_noise


def test_missing_classifier_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature classifier"):
        ClassifierFeatures("cifar10")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        ClassifierFeatures("digits", path=tmp_path / "x.safetensors")


def test_shipped_fashion_classifier():
    import os

    if not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    te = load_dataset("fashion-mnist", split="test")
    f = ClassifierFeatures("fashion-mnist")
    acc = (f.predict(te.images[:2000]) == te.labels[:2000]).float().mean().item()
    assert acc > 0.85
