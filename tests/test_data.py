from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from edgeprune.data import load_data
from edgeprune.errors import ConfigError

N_DIGITS = 1797  # scikit-learn's bundled digits


def _labels(ds):
    return [int(ds[i][1]) for i in range(len(ds))]


@pytest.fixture(scope="module")
def digits16():
    return load_data("digits", (3, 16, 16), seed=0)


def test_digits_split_sizes(digits16):
    n_val = math.ceil(0.2 * N_DIGITS)  # scikit-learn rounds the test share up
    assert len(digits16.val) == n_val
    assert len(digits16.train) == N_DIGITS - n_val
    assert digits16.num_classes == 10
    assert digits16.describe() == {"name": "digits", "train": N_DIGITS - n_val, "val": n_val, "classes": 10,
                                   "input_shape": [3, 16, 16]}


def test_digits_split_is_stratified(digits16):
    from sklearn.datasets import load_digits

    total = Counter(load_digits().target.tolist())
    val = Counter(_labels(digits16.val))
    train = Counter(_labels(digits16.train))
    assert set(val) == set(range(10))
    for c, n in total.items():
        assert train[c] + val[c] == n
        assert abs(val[c] - 0.2 * n) <= 1.5  # each class keeps its share in the validation split


def test_digits_split_disjoint_and_complete():
    from sklearn.datasets import load_digits

    data = load_data("digits", (1, 8, 8), seed=0)
    src = torch.from_numpy(load_digits().images.astype(np.float32) / 16.0)
    want = Counter(r.numpy().tobytes() for r in ((src - 0.5) / 0.5).flatten(1))
    got = Counter(r.numpy().tobytes() for r in torch.cat([data.train.tensors[0], data.val.tensors[0]]).flatten(1))
    assert got == want  # train + val is exactly the whole set: nothing lost, nothing in both


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (3, 12, 20)])
def test_digits_shapes_and_range(shape):
    data = load_data("digits", shape, seed=0)
    x, y = data.train[0]
    assert tuple(x.shape) == shape
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    allx = data.train.tensors[0]
    assert allx.min() >= -1.0 - 1e-6 and allx.max() <= 1.0 + 1e-6
    assert allx.min() < -0.9 and allx.max() > 0.9  # normalized to [-1, 1], the range is used


def test_digits_channels_replicated(digits16):
    x = digits16.train.tensors[0]
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])


def test_digits_native_resolution_matches_sklearn():
    from sklearn.datasets import load_digits

    data = load_data("digits", (1, 8, 8), seed=0)
    src = load_digits()
    x, y = data.val[0]
    matches = [i for i in range(len(src.target))
               if np.allclose((src.images[i] / 16.0 - 0.5) / 0.5, x[0].numpy(), atol=1e-6)]
    assert matches and all(src.target[i] == int(y) for i in matches)


def test_digits_seeded_determinism(digits16):
    again = load_data("digits", (3, 16, 16), seed=0)
    assert torch.equal(again.train.tensors[0], digits16.train.tensors[0])
    assert torch.equal(again.val.tensors[1], digits16.val.tensors[1])
    other = load_data("digits", (3, 16, 16), seed=1)
    assert not torch.equal(other.val.tensors[0], digits16.val.tensors[0])
    assert len(other.val) == len(digits16.val)


def test_val_fraction():
    data = load_data("digits", (1, 8, 8), val_fraction=0.5)
    assert abs(len(data.train) - len(data.val)) <= 1


def test_loader_and_calibration(digits16):
    batches = digits16.calibration_batches(n=10, batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat(batches), digits16.train.tensors[0][:10])  # the first n, in order
    a = [y for _, y in digits16.loader("train", 64, shuffle=True, seed=3)]
    b = [y for _, y in digits16.loader("train", 64, shuffle=True, seed=3)]
    c = [y for _, y in digits16.loader("train", 64, shuffle=True, seed=4)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
    assert sum(len(y) for y in a) == len(digits16.train)


def test_unknown_data():
    with pytest.raises(ConfigError, match="imagefolder"):
        load_data("cifar10", (3, 32, 32))


# -- imagefolder ----------------------------------------------------------------------------------------------
@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for cls, n in (("cat", 6), ("dog", 4), ("eel", 5)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def test_imagefolder_rgb(image_folder):
    data = load_data(f"imagefolder:{image_folder}", (3, 8, 8), seed=0)
    assert data.num_classes == 3
    assert len(data.train) + len(data.val) == 15
    assert len(data.val) == round(15 * 0.2)
    x, y = data.train[0]
    assert tuple(x.shape) == (3, 8, 8)
    assert 0 <= y < 3
    assert data.name == f"imagefolder:{image_folder}"


def test_imagefolder_grayscale(image_folder):
    data = load_data(f"imagefolder:{image_folder}", (1, 6, 6), seed=0)
    x, _ = data.val[0]
    assert tuple(x.shape) == (1, 6, 6)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6


def test_imagefolder_split_deterministic_and_disjoint(image_folder):
    a = load_data(f"imagefolder:{image_folder}", (3, 8, 8), seed=5)
    b = load_data(f"imagefolder:{image_folder}", (3, 8, 8), seed=5)
    assert a.train.indices == b.train.indices and a.val.indices == b.val.indices
    assert not set(a.train.indices) & set(a.val.indices)
    assert sorted(a.train.indices + a.val.indices) == list(range(15))
    assert Counter(_labels(a.train)) + Counter(_labels(a.val)) == Counter({0: 6, 1: 4, 2: 5})


def test_imagefolder_small_folder_keeps_one_val(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "few" / cls).mkdir(parents=True)
        Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "few" / cls / "0.png")
    data = load_data(f"imagefolder:{tmp_path / 'few'}", (3, 4, 4))
    assert len(data.val) >= 1 and len(data.train) >= 1


def test_imagefolder_missing(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'nowhere'}", (3, 8, 8))


def test_imagefolder_without_images(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images"):
        load_data(f"imagefolder:{tmp_path / 'empty'}", (3, 8, 8))
