"""The shipped models: they load, sample by default with the right sampler, and are as good as measured."""

import pytest
import torch

from fewstep import sample
from fewstep.commands.evaluate import extractor_for, measure, reference_features
from fewstep.metrics import ClassifierFeatures
from fewstep.models.presets import count_params
from fewstep.pretrained import load_denoiser, shipped_models


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """One intra-op thread (conftest.one_thread)."""


@pytest.fixture(scope="module")
def digits_fd():
    """FD (shipped classifier features, to the training digits) of 600 samples of a loaded model."""
    ext = extractor_for("classifier", "digits")
    real, _ = reference_features(ext, "digits")
    return lambda D, **opts: measure(D, ext, real, 600, seed=0, **opts)[1]["fd"]


@pytest.fixture(scope="module")
def teacher_fd(digits_fd):
    """The shipped digits teacher's FD with DPM-Solver++(2M) at 20 calls (600 samples)."""
    return digits_fd(load_denoiser("digits-teacher"), solver="dpm++2m", steps=20)


def test_shipped_names():
    assert {"digits-teacher", "digits-scd", "digits-sct", "digits-sct-small", "fashion-teacher"} <= set(shipped_models())


def test_shipped_fashion_teacher_draws_the_classes_asked():
    """fashion-teacher (the 32-channel Fashion-MNIST UNet of BENCHMARKS.md section 2, 5000 SpeeD iterations):
    the shipped Fashion-MNIST classifier labels 70% or more of 100 samples (10 calls of the default solver)
    as the class they were drawn for (measured: 89% / 82% / 84% on noise seeds 0 / 1 / 2); an untrained or
    mis-shipped network is near 10%."""
    D = load_denoiser("fashion-teacher")
    assert D.config["dataset"] == "fashion-mnist" and D.num_classes == 10 and D.sample_shape == (1, 28, 28)
    assert D.method == "diffusion" and count_params(D.model) == 1_742_433
    y = torch.arange(100) % 10
    x = sample(D, torch.randn(100, 1, 28, 28, generator=torch.Generator().manual_seed(0)), steps=10, class_labels=y)
    accuracy = (ClassifierFeatures("fashion-mnist").predict(x) == y).float().mean().item()
    assert accuracy >= 0.7, accuracy


def test_small_student_is_smaller():
    """digits-sct-small's point is a cheaper network than its teacher's (the speed-up at equal FD)."""
    params = {name: count_params(load_denoiser(name).model) for name in ("digits-teacher", "digits-sct-small")}
    assert params["digits-sct-small"] * 3 < params["digits-teacher"], params


@pytest.mark.parametrize("name,method", [("digits-scd", "scd"), ("digits-sct", "sct"), ("digits-sct-small", "sct")])
def test_shipped_students(name, method, digits_fd, teacher_fd):
    """Each shipped consistency student samples with solver="consistency" by default, and its 1- / 2-step
    FD is within 1.6x / 1.25x of the teacher's at 20 calls (BENCHMARKS.md section 2 measures 0.94-1.41x /
    0.90-1.06x over 3-6 x 2000 samples; 600 samples here, so looser bounds): a broken or mis-shipped
    checkpoint lands far outside (untrained: FD > 10)."""
    S = load_denoiser(name)
    assert S.method == method and S.config["dataset"] == "digits" and S.num_classes == 10
    z = torch.randn(4, *S.sample_shape)
    y = torch.arange(4)
    x1, nfe = sample(S, z, steps=1, class_labels=y, return_nfe=True)
    assert nfe == 1 and x1.shape == z.shape and torch.isfinite(x1).all()
    torch.testing.assert_close(x1, sample(S, z, solver="consistency", steps=1, class_labels=y))
    assert digits_fd(S, solver="consistency", steps=1) <= 1.6 * teacher_fd
    assert digits_fd(S, solver="consistency", steps=2) <= 1.25 * teacher_fd
