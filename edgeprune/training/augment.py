"""Training-time augmentation for an ImageFolder: the standard random resized crop and horizontal flip in place of
the eval transform's resize. Validation keeps the eval transform; tensors already in memory (digits, a user's
datasets) are trained on as given."""
from __future__ import annotations

import copy

from torch.utils.data import Dataset, Subset

# A short fine-tune on small images cannot afford ImageNet's (0.08, 1) crops: they leave too little of the object
CROP_SCALE = (0.35, 1.0)


def train_dataset(data, augment: str) -> Dataset:
    """`data.train`, augmented when it is (a subset of) a torchvision ImageFolder and `augment` asks for it."""
    ds = data.train
    if augment == "none":
        return ds
    base, indices = (ds.dataset, ds.indices) if isinstance(ds, Subset) else (ds, None)
    transform = augmented(getattr(base, "transform", None), augment) if _is_image_folder(base) else None
    if transform is None:
        return ds
    train_base = copy.copy(base)  # the same file list; only this copy's transform changes (val keeps its own)
    train_base.transform = transform
    return Subset(train_base, indices) if indices is not None else train_base


def augmented(transform, augment: str):
    """The eval Compose with its Resize replaced by RandomResizedCrop (+ RandomHorizontalFlip for 'standard'),
    or None when the transform has no Resize to replace."""
    from torchvision import transforms as T

    if not isinstance(transform, T.Compose):
        return None
    steps, replaced = [], False
    for step in transform.transforms:
        if isinstance(step, T.Resize) and not replaced:
            size = step.size if isinstance(step.size, (tuple, list)) else (step.size, step.size)
            steps.append(T.RandomResizedCrop(tuple(size), scale=CROP_SCALE, antialias=True))
            if augment == "standard":
                steps.append(T.RandomHorizontalFlip())
            replaced = True
        else:
            steps.append(step)
    return T.Compose(steps) if replaced else None


def _is_image_folder(ds) -> bool:
    try:
        from torchvision.datasets import DatasetFolder
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return False
    return isinstance(ds, DatasetFolder)
