"""Labeled data for training, calibration and accuracy: scikit-learn's bundled digits, or an ImageFolder.

Every accuracy figure edgeprune reports comes from one of these; nothing is downloaded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..errors import ConfigError

DATA_HELP = "use --data digits, --data imagefolder:PATH or --data pkg.module:factory"

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    name: str
    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]

    def loader(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        ds = self.train if split == "train" else self.val
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=0)

    def calibration_batches(self, n: int = 256, batch_size: int = 64) -> list[torch.Tensor]:
        """The first n training images (deterministic): BN recalibration, parity checks, INT8 calibration."""
        return [x for x, _ in self.labeled_batches(n, batch_size)]

    def labeled_batches(self, n: int = 256, batch_size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first n training images with their labels: data-driven importance (activation, taylor)."""
        out, seen = [], 0
        for x, y in self.loader("train", batch_size):
            out.append((x[: n - seen], y[: n - seen]))
            seen += len(out[-1][0])
            if seen >= n:
                break
        return out

    def describe(self) -> dict:
        return {"name": self.name, "train": len(self.train), "val": len(self.val), "classes": self.num_classes,
                "input_shape": list(self.input_shape)}


def load_data(spec: str, input_shape: tuple[int, int, int], seed: int = 0, val_fraction: float = 0.2) -> DataBundle:
    if spec == "digits":
        return _digits(input_shape, seed, val_fraction)
    if spec.startswith("imagefolder:"):
        return _imagefolder(Path(spec.split(":", 1)[1]), input_shape, seed, val_fraction)
    from ..training.userdata import factory_data, is_factory

    if is_factory(spec):  # pkg.module:factory -> (train, val) datasets of the user's
        return factory_data(spec, input_shape)
    raise ConfigError(f"unknown data {spec!r}: {DATA_HELP}")


def _digits(shape: tuple[int, int, int], seed: int, val_fraction: float) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # ships inside scikit-learn: 1,797 8x8 images, 10 classes
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    c, h, w = shape
    if (h, w) != (8, 8):
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).repeat(1, c, 1, 1).contiguous()
    y = torch.from_numpy(digits.target.astype(np.int64))
    idx_train, idx_val = train_test_split(np.arange(len(y)), test_size=val_fraction, random_state=seed,
                                          stratify=digits.target)
    return DataBundle("digits", TensorDataset(x[idx_train], y[idx_train]), TensorDataset(x[idx_val], y[idx_val]),
                      10, shape)


def _imagefolder(root: Path, shape: tuple[int, int, int], seed: int, val_fraction: float) -> DataBundle:
    if not root.is_dir():
        raise ConfigError(f"image folder {root} does not exist: point imagefolder: at a folder of class sub-folders")
    from torchvision import datasets, transforms

    c, h, w = shape
    if c not in (1, 3):
        raise ConfigError(f"input shape {c},{h},{w} has {c} channels, but images are read as grayscale (1) or RGB "
                          f"(3): use --input-shape 1,{h},{w} or 3,{h},{w}")
    tf = [transforms.Resize((h, w)), transforms.ToTensor()]
    if c == 1:
        tf.insert(0, transforms.Grayscale(1))
        tf.append(transforms.Normalize([0.5], [0.5]))
    else:
        tf.append(transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    try:
        ds = datasets.ImageFolder(str(root), transform=transforms.Compose(tf))
    except (FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(f"image folder {root} holds no images in class sub-folders ({exc})") from None
    if len(ds) < 2:  # the split would leave nothing to train, calibrate or recalibrate BatchNorm on
        raise ConfigError(f"image folder {root} holds {len(ds)} image: a build needs at least 2 (one to train on, "
                          "one to measure accuracy on); add images")
    check_images(root, [p for p, _ in ds.samples])
    if len(ds.classes) == 1:
        log.warning("image folder %s has one class (%s): every prediction is right, so accuracy cannot guide "
                    "pruning; add the other classes", root, ds.classes[0])
    order = np.random.default_rng(seed).permutation(len(ds))
    n_val = max(1, int(round(len(ds) * val_fraction)))
    return DataBundle(f"imagefolder:{root}", Subset(ds, order[n_val:].tolist()), Subset(ds, order[:n_val].tolist()),
                      len(ds.classes), shape)


def check_images(root: Path, paths: list[str]) -> None:
    """Decode every image once, up front: ImageFolder opens them lazily, so a corrupt file would otherwise fail
    an epoch into training. Images are read as grayscale or RGB; one with another band count (RGBA, CMYK, LA)
    would lose or invent channels silently, so it is refused."""
    from PIL import Image

    unreadable, odd = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.load()  # decodes: a truncated or corrupt file fails here
                bands = img.getbands()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            unreadable.append((path, str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__))
            continue
        if len(bands) not in (1, 3):
            odd.append((path, "".join(bands)))
    if unreadable:
        path, why = unreadable[0]
        raise ConfigError(f"image folder {root}: {len(unreadable)} image(s) cannot be read, e.g. "
                          f"{Path(path).relative_to(root)} ({why}): remove or replace them")
    if odd:
        path, mode = odd[0]
        raise ConfigError(f"image folder {root}: {len(odd)} image(s) have {len(mode)} channels ({mode}), e.g. "
                          f"{Path(path).relative_to(root)}: edgeprune reads grayscale or RGB images; convert them "
                          "(e.g. PIL's Image.convert('RGB'))")
