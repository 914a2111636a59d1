"""fewstep.data: every loader on small files written here in the real formats, toys, batches."""

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fewstep.data import Dataset, batches, gmm2d_oracle, load_dataset, read_idx
from fewstep.data.idx import FASHION_MNIST_DIR
from fewstep.data.toys import gmm2d_means


# ---------------------------------------------------------------- writers in the real formats
def write_idx(path: Path, array: np.ndarray, gz: bool):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i2"): 0x0B, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + array.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def write_mnist_dir(root: Path, n_train=6, n_test=4, gz=True):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
        arrays[prefix] = images, labels
    return arrays


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings and numpy's old module name, as in the
    CIFAR-10 files (pickled by Python 2), so the loader meets exactly that opcode stream."""

    def save_bytes(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", "") != "_reconstruct":
            return super().save_global(obj, name)
        self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
        self.memoize(obj)

    dispatch = {**pickle._Pickler.dispatch, bytes: save_bytes, str: save_str}


def write_cifar_dir(root: Path, per_batch=3, py2=True):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        with open(root / name, "wb") as f:
            (Py2Pickler if py2 else pickle.Pickler)(f, protocol=2).dump(batch)
        written[name] = data, labels
    return written


# ---------------------------------------------------------------- digits
def test_digits_shape_range_labels():
    ds = load_dataset("digits")
    assert isinstance(ds, Dataset) and ds.name == "digits"
    assert ds.images.shape == (1797, 1, 8, 8) and ds.shape == (1, 8, 8) and len(ds) == 1797
    assert ds.images.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.images.min() == -1 and ds.images.max() == 1
    # values are k / 8 - 1 for integers k in 0..16
    assert torch.allclose((ds.images + 1) * 8, ((ds.images + 1) * 8).round())
    assert ds.num_classes == 10 and ds.labels.bincount().tolist() == [
        178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    x, y = ds[3]
    assert x.shape == (1, 8, 8) and y.item() == 3
    with pytest.raises(ValueError, match="no held-out test split"):
        load_dataset("digits", split="test")


# ---------------------------------------------------------------- idx (MNIST / Fashion-MNIST)
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a, gz)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)
    b = np.array([-300, 7, 1000], dtype=">i2")  # big-endian on disk, native in memory
    write_idx(tmp_path / "b", b, gz)
    out = read_idx(tmp_path / "b")
    assert out.dtype == np.int16 and out.tolist() == [-300, 7, 1000]


def test_read_idx_errors(tmp_path):
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x01\x02\x08\x03" + bytes(20))
    with pytest.raises(ValueError, match="bad magic number 01020803") as e:
        read_idx(bad)
    assert str(bad) in str(e.value)
    bad.write_bytes(gzip.compress(b"\x00\x00\x99\x01" + bytes(8)))  # unknown type code, gzipped
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(bad)
    short = tmp_path / "short"
    write_idx(short, np.zeros((4, 2, 2), np.uint8), gz=False)
    short.write_bytes(short.read_bytes()[:-3])
    with pytest.raises(ValueError, match="has 13 data bytes"):
        read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(np.random.default_rng(0).bytes(1000))[:100])  # truncated
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(broken)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_files(tmp_path, gz, monkeypatch):
    arrays = write_mnist_dir(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset("mnist", root=str(tmp_path), split=split)
        images, labels = arrays[prefix]
        assert ds.images.shape == (len(images), 1, 28, 28) and ds.num_classes == 10
        assert ds.images[0, 0, 0, 0] == -1 and ds.images[0, 0, 0, 1] == 1
        torch.testing.assert_close(ds.images[:, 0], torch.from_numpy(images).float() / 127.5 - 1)
        assert ds.labels.tolist() == labels.tolist()
    monkeypatch.setenv("FEWSTEP_MNIST_DIR", str(tmp_path))
    assert len(load_dataset("mnist", split="test")) == 4
    # Fashion-MNIST reads the same files from any root given
    assert len(load_dataset("fashion_mnist", root=tmp_path)) == 6


def test_mnist_torchvision_layout(tmp_path):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    write_mnist_dir(tmp_path / "MNIST" / "raw", gz=False)
    assert len(load_dataset("mnist", root=tmp_path)) == 6


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                    reason=f"{FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_debian_package():
    ds = load_dataset("fashion-mnist", split="test")  # default root: the Debian location
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.images.min() == -1 and ds.images.max() == 1
    assert ds.labels.bincount().tolist() == [1000] * 10
    assert ds.classes[9] == "Ankle boot"


# ---------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("subdir,py2", [(False, True), (True, False)])
def test_cifar10_batches(tmp_path, subdir, py2):
    batch_dir = tmp_path / "cifar-10-batches-py"
    written = write_cifar_dir(batch_dir, py2=py2)
    root = tmp_path if subdir else batch_dir
    train = load_dataset("cifar10", root=root)
    test = load_dataset("cifar10", root=root, split="test")
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.num_classes == 10 and train.classes[0] == "airplane"
    data, labels = written["data_batch_2"]
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32 x 32
    green = torch.from_numpy(data[1, 1024:2048].reshape(32, 32)).float() / 127.5 - 1
    torch.testing.assert_close(train.images[3 + 1, 1], green)
    assert train.labels[3:6].tolist() == labels
    assert test.labels.tolist() == written["test_batch"][1]


def test_cifar10_refuses_code(tmp_path):
    write_cifar_dir(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to load global .*print"):
        load_dataset("cifar10", root=tmp_path, split="test")


# ---------------------------------------------------------------- image folder
def test_image_folder(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 255), ("dog", 0)):
        (tmp_path / cls / "deeper").mkdir(parents=True)
        Image.new("RGB", (16, 16), (value, value, value)).save(tmp_path / cls / "a.png")
        # 24 x 16: the centre 16 x 16 is `value`, the 4-pixel side strips the opposite colour
        wide = np.full((16, 24, 3), 255 - value, np.uint8)
        wide[:, 4:20] = value
        Image.fromarray(wide).save(tmp_path / cls / "deeper" / "b.PNG")
    (tmp_path / "notes.txt").write_text("not an image")

    ds = load_dataset("folder", root=tmp_path, resolution=8, class_folders=True)
    assert ds.images.shape == (4, 3, 8, 8) and ds.num_classes == 2
    assert ds.classes == ("cat", "dog") and ds.labels.tolist() == [0, 0, 1, 1]
    # centre crop removed the strips: every cat pixel is white, every dog pixel black
    assert torch.all(ds.images[:2] == 1) and torch.all(ds.images[2:] == -1)

    gray = load_dataset("folder", root=tmp_path, resolution=4, channels=1)
    assert gray.images.shape == (4, 1, 4, 4) and gray.labels is None and gray[0][0].shape == (1, 4, 4)
    with pytest.raises(ValueError, match="pass resolution="):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(ValueError, match="not inside a class subdirectory"):
        Image.new("RGB", (16, 16)).save(tmp_path / "loose.png")
        load_dataset("folder", root=tmp_path, resolution=8, class_folders=True)


# ---------------------------------------------------------------- npz
def test_npz_layouts_and_ranges(tmp_path):
    rng = np.random.default_rng(0)
    nchw = rng.integers(0, 256, (5, 3, 6, 7), dtype=np.uint8)
    expected = torch.from_numpy(nchw).float() / 127.5 - 1
    labels = np.array([0, 1, 2, 1, 0])

    np.savez(tmp_path / "nchw.npz", images=nchw, labels=labels)
    np.savez(tmp_path / "nhwc.npz", x=nchw.transpose(0, 2, 3, 1), y=labels)
    np.savez(tmp_path / "float01.npz", images=nchw.astype(np.float32) / 255)
    np.savez(tmp_path / "float11.npz", images=expected.numpy())
    for name in ("nchw", "nhwc", "float01", "float11"):
        ds = load_dataset("npz", root=tmp_path / f"{name}.npz")
        assert ds.shape == (3, 6, 7), name
        torch.testing.assert_close(ds.images, expected)
    ds = load_dataset("npz", root=tmp_path / "nhwc.npz")
    assert ds.labels.tolist() == labels.tolist() and ds.num_classes == 3

    np.savez(tmp_path / "gray.npz", images=nchw[:, 0])  # [N, H, W]
    assert load_dataset("npz", root=tmp_path / "gray.npz").shape == (1, 6, 7)
    np.savez(tmp_path / "wide.npz", images=np.linspace(0, 10, 5 * 36).reshape(5, 1, 6, 6))
    ds = load_dataset("npz", root=tmp_path / "wide.npz", value_range=(0, 10))
    assert ds.images.min() == -1 and ds.images.max() == 1
    with pytest.raises(ValueError, match="value_range"):
        load_dataset("npz", root=tmp_path / "wide.npz")
    np.savez(tmp_path / "ambiguous.npz", images=np.zeros((2, 3, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="NCHW or NHWC"):
        load_dataset("npz", root=tmp_path / "ambiguous.npz")
    assert load_dataset("npz", root=tmp_path / "ambiguous.npz", layout="NHWC").shape == (3, 3, 5)
    np.savez(tmp_path / "nokey.npz", pixels=nchw)
    with pytest.raises(ValueError, match="keys: \\['pixels'\\]"):
        load_dataset("npz", root=tmp_path / "nokey.npz")


# ---------------------------------------------------------------- 2-D toys
@pytest.mark.parametrize("name", ["moons", "swissroll", "checkerboard", "gmm2d"])
def test_toys_shape_and_seeding(name):
    a = load_dataset(name, n=500, seed=3)
    assert a.images.shape == (500, 2) and a.shape == (2,) and a.images.dtype == torch.float32
    assert torch.equal(a.x, load_dataset(name, n=500, seed=3).x)
    assert not torch.equal(a.x, load_dataset(name, n=500, seed=4).x)
    assert not torch.equal(a.x, load_dataset(name, n=500, seed=3, split="test").x)
    assert 0.3 < a.x.std() < 1.5 and a.x.abs().max() < 4  # roughly unit scale


def test_toys_geometry():
    board = load_dataset("checkerboard", n=4000, seed=0).x
    assert board.min() >= -2 and board.max() < 2
    assert torch.all((board.floor().sum(1) % 2) == 0)  # only the "even" cells
    assert len(torch.unique(board.floor(), dim=0)) == 8

    moons = load_dataset("moons", n=2000, seed=0, noise=0.0)
    up, down = moons.x[moons.labels == 0], moons.x[moons.labels == 1]
    torch.testing.assert_close((up - torch.tensor([-0.5, -0.25])).norm(dim=1), torch.ones(len(up)))
    torch.testing.assert_close((down - torch.tensor([0.5, 0.25])).norm(dim=1), torch.ones(len(down)))
    assert torch.all(up[:, 1] >= -0.25 - 1e-6) and torch.all(down[:, 1] <= 0.25 + 1e-6)

    roll = load_dataset("swissroll", n=2000, seed=0, noise=0.0).x.norm(dim=1)
    assert roll.min() >= 1.5 * math.pi / 7 - 1e-5 and roll.max() <= 4.5 * math.pi / 7 + 1e-5

    gmm = load_dataset("gmm2d", n=4000, seed=0)
    means = torch.from_numpy(gmm2d_means()).float()
    assert gmm.num_classes == 8 and (gmm.x - means[gmm.labels]).norm(dim=1).max() < 0.6
    torch.testing.assert_close(gmm2d_oracle().means.float(), means)


# ---------------------------------------------------------------- errors
def test_missing_paths_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("mnist", root=tmp_path)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(e.value)
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("fashion-mnist", root=tmp_path, split="test")
    assert str(tmp_path / "t10k-images-idx3-ubyte.gz") in str(e.value)
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    with pytest.raises(FileNotFoundError, match="FEWSTEP_MNIST_DIR"):
        load_dataset("mnist")
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "data_batch_1") in str(e.value)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_dataset("folder", root=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset("folder", root=tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "a.npz")):
        load_dataset("npz", root=tmp_path / "a.npz")


def test_unknown_name_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*digits.*fashion-mnist.*gmm2d"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        load_dataset("moons", split="val")


# ---------------------------------------------------------------- sharded, resumable batches
def _take(it, steps):
    return [next(it) for _ in range(steps)]


def test_batches_shards_concatenate_to_global_batch():
    ds = Dataset(torch.arange(10.0)[:, None], torch.arange(10) % 3)  # 10 is not a multiple of 4
    whole = _take(batches(ds, 4, seed=7), 8)
    shards = [_take(batches(ds, 4, seed=7, rank=r, world_size=2), 8) for r in range(2)]
    for step, (x, y) in enumerate(whole):
        assert x.shape == (4, 1)
        assert torch.equal(torch.cat([shards[0][step][0], shards[1][step][0]]), x)
        assert torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), y)
    # the global stream is a sequence of epochs, each a permutation of the dataset
    stream = torch.cat([x[:, 0] for x, _ in whole])
    assert sorted(stream[:10].tolist()) == list(range(10))
    assert sorted(stream[10:20].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:20])
    # unlabeled data yields labels None; a dataset smaller than one batch still works
    x, y = next(batches(Dataset(torch.zeros(3, 2)), 8, seed=0))
    assert x.shape == (8, 2) and y is None
    with pytest.raises(ValueError, match="multiple of world_size"):
        batches(ds, 5, seed=0, rank=0, world_size=2)


def test_batches_state_resumes_identically():
    ds = Dataset(torch.randn(13, 2), torch.arange(13))
    ref = _take(batches(ds, 6, seed=1), 10)
    it = batches(ds, 6, seed=1)
    _take(it, 4)
    state = it.state_dict()
    assert state["epoch"] == 1 and state["position"] == 24 - 13
    resumed = batches(ds, 6, seed=1)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(ref[4:], _take(resumed, 6)):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    # the state is global: resuming on 3 ranks continues the same global batches
    ranks = [batches(ds, 6, seed=1, rank=r, world_size=3) for r in range(3)]
    for r in ranks:
        r.load_state_dict(state)
    assert torch.equal(torch.cat([next(r)[1] for r in ranks]), ref[4][1])
    with pytest.raises(ValueError, match="seed"):
        batches(ds, 6, seed=2).load_state_dict(state)
