"""`--data pkg.module:factory`: the user's own datasets. `factory()` returns (train, val), two map-style torch
datasets of (image tensor C,H,W, integer label); the shape is read from the first image and the class count from
a `classes` attribute (else the labels are read once)."""
from __future__ import annotations

import re

import torch

from ..errors import ConfigError, first_line

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_factory(spec: str | None) -> bool:
    return bool(spec) and not str(spec).startswith("imagefolder:") and bool(_FACTORY.match(str(spec)))


def factory_data(spec: str, input_shape: tuple[int, ...] | None):
    from ..data import DataBundle
    from .trainer import load_callable

    factory = load_callable(spec, "data")
    try:
        made = factory()
    except Exception as exc:  # their code
        raise ConfigError(f"data factory {spec} raised {type(exc).__name__}: {first_line(exc)}") from None
    if not isinstance(made, (tuple, list)) or len(made) != 2:
        raise ConfigError(f"data factory {spec} returned {type(made).__name__}: it must return (train, val), two "
                          "torch datasets")
    train, val = made
    for split, ds in (("train", train), ("val", val)):
        if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__") or len(ds) == 0:
            raise ConfigError(f"data factory {spec}: its {split} dataset is empty or not a map-style dataset "
                              "(one with __len__ and __getitem__)")
    shape = _shape(spec, train[0])
    if input_shape is not None and tuple(input_shape) != shape:
        raise ConfigError(f"data factory {spec} gives {','.join(map(str, shape))} images but the input shape is "
                          f"{','.join(map(str, input_shape))}: make them agree (or leave --input-shape out)")
    return DataBundle(spec, train, val, _num_classes(train, val), shape)


def _shape(spec: str, sample) -> tuple[int, int, int]:
    x = sample[0] if isinstance(sample, (tuple, list)) and len(sample) == 2 else None
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ConfigError(f"data factory {spec}: an item must be (image tensor C,H,W, label), got "
                          f"{type(sample).__name__}" + (f" of {type(x).__name__}" if x is not None else ""))
    return tuple(int(s) for s in x.shape)


def _num_classes(train, val) -> int:
    for ds in (train, getattr(train, "dataset", None)):
        classes = getattr(ds, "classes", None)
        if classes is not None:
            return len(classes)
    labels = [int(ds[i][1]) for ds in (train, val) for i in range(len(ds))]
    return max(labels) + 1
