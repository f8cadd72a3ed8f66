"""Model sources: the built-in zoo, torchvision, timm, importable factories, files defining factories, and model.pt
files (edgeprune's own, rebuilt without running code from the file; a whole-module pickle only with trust_pickle).

The input shape comes from the model where it says it (timm's pretrained_cfg, pytorchcv's in_size / in_channels,
torchvision's weights transforms), so --input-shape is needed only where nothing does."""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from .artifact import is_artifact, load_artifact
from .zoo import ZOO

log = logging.getLogger(__name__)

SOURCES_HELP = (
    "use a built-in name (" + ", ".join(ZOO) + "), torchvision:NAME, timm:NAME, pkg.module:factory, "
    "path/to/file.py:factory or a model.pt edgeprune wrote"
)


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    source: str  # "zoo" | "torchvision" | "timm" | "factory" | "file"
    input_shape: tuple[int, int, int]
    num_classes: int | None
    pretrained: bool  # weights came from the user (or the file); False: random init, to be trained if zoo
    spec: str | None = None  # what rebuilds the unpruned architecture (model.pt saves it); None: nothing does


def load_model(spec: str, weights: str | None = None, input_shape: tuple[int, ...] | None = None,
               in_channels: int = 3, num_classes: int | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Build the model `spec` names, load `weights` into it, and check that it runs on `input_shape`.
    `trust_pickle`: a whole-module pickle may be unpickled (it runs whatever code it names)."""
    if spec in ZOO:
        shape = tuple(input_shape) if input_shape else (in_channels, 32, 32)
        module = ZOO[spec](num_classes=num_classes or 10, in_channels=shape[0])
        loaded = LoadedModel(module, spec, "zoo", shape, num_classes or 10, pretrained=False, spec=spec)
    elif spec.startswith("torchvision:"):
        loaded = _torchvision(spec.split(":", 1)[1], input_shape, num_classes)
    elif spec.startswith("timm:"):
        from .timm_source import load_timm

        loaded = load_timm(spec.split(":", 1)[1], input_shape, num_classes)
    elif spec.endswith((".pt", ".pth")) and ":" not in spec:
        loaded = load_artifact(spec, input_shape, trust_pickle=trust_pickle)
    elif ":" in spec:
        loaded = _factory(spec, input_shape)
    else:
        raise ModelLoadError(f"unknown model {spec!r}: {SOURCES_HELP}")
    if weights:
        loaded.module = _load_weights(loaded.module, weights, loaded.input_shape)
        loaded.pretrained = True
    loaded.module.eval()
    loaded.num_classes = _check_forward(loaded)
    return loaded


def _torchvision(name: str, input_shape, num_classes) -> LoadedModel:
    try:
        import torchvision
    except Exception as exc:  # an incompatible torch/torchvision pair fails at import
        raise ModelLoadError(f"torchvision cannot be imported ({exc}); reinstall with ./run.sh's constraints") from None
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ModelLoadError(f"unknown torchvision model {name!r}{close_names(name, available)}: see "
                             "`torchvision.models.list_models()` for names")
    kwargs = {"weights": None}
    if num_classes:
        kwargs["num_classes"] = num_classes
    shape = tuple(input_shape) if input_shape else _torchvision_shape(torchvision, name)
    kwargs.update(_size_kwargs(name, shape))
    try:
        module = torchvision.models.get_model(name, **kwargs)
    except (AssertionError, ValueError, TypeError) as exc:  # e.g. an image size the patch does not divide
        raise ModelLoadError(f"torchvision:{name} cannot be built for input shape {list(shape)}: "
                             f"{_first_line(exc)}; check --input-shape") from None
    return LoadedModel(module, f"torchvision:{name}", "torchvision", shape, num_classes, pretrained=False,
                       spec=f"torchvision:{name}")


def _torchvision_shape(torchvision, name: str) -> tuple[int, int, int]:
    """The crop its weights' transforms take (299 for Inception v3), whether or not the weights are used."""
    try:
        crop = torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size
        return (3, int(crop[0]), int(crop[-1]))
    except Exception:  # no weights enum, or transforms without a crop: torchvision's usual size
        return (3, 224, 224)


def _size_kwargs(name: str, shape: tuple[int, ...]) -> dict:
    """Transformers whose position embeddings fix the image size take it as a constructor argument: build them
    for the input shape asked for (ViT: square, a multiple of the patch; MaxViT: any size its partitions divide)."""
    if shape[1:] == (224, 224):
        return {}
    if name.startswith("vit_"):
        if shape[1] != shape[2]:
            raise ModelLoadError(f"torchvision:{name} takes square images only: give --input-shape 3,S,S")
        return {"image_size": shape[1]}
    if name.startswith("maxvit_"):
        return {"input_size": tuple(shape[1:])}
    return {}


def _factory(spec: str, input_shape) -> LoadedModel:
    target, _, attr = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise ModelLoadError(f"model file {path} does not exist")
            mod_name = f"_edgeprune_user_{abs(hash(path.resolve()))}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            mod = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = mod  # so that torch.save can pickle classes defined there
            module_spec.loader.exec_module(mod)
        else:
            mod = importlib.import_module(target)
        factory = getattr(mod, attr)
        module = factory()
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot build model {spec!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{spec!r} returned {type(module).__name__}, not a torch.nn.Module")
    shape = tuple(input_shape) if input_shape else shape_from_module(module)
    if shape is None:
        raise ModelLoadError(f"model {spec!r} needs --input-shape C,H,W (e.g. 3,224,224): it does not say its "
                             "input size (no in_size/in_channels or pretrained_cfg attribute)")
    return LoadedModel(module, spec, "factory", shape, None, pretrained=True, spec=spec)


def shape_from_module(module: nn.Module) -> tuple[int, int, int] | None:
    """The C,H,W a model says it takes: timm's pretrained_cfg / default_cfg input_size, or pytorchcv's
    in_size (H, W) with in_channels; None where it says nothing."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(module, attr, None)
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if _is_shape(size, 3):
            return tuple(int(s) for s in size)
    size, channels = getattr(module, "in_size", None), getattr(module, "in_channels", 3)
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    if _is_shape(size, 2) and _is_shape((channels,), 1):
        return (int(channels), int(size[0]), int(size[1]))
    return None


def _is_shape(value, n: int) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == n
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value))


def close_names(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    return f" (close: {', '.join(close)})" if close else ""


def _load_weights(module: nn.Module, path: str, input_shape) -> nn.Module:
    """`module` with the weights in `path` (a state dict, a common checkpoint layout, or edgeprune's model.pt,
    whose pruned widths the module is narrowed to first)."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        why = ("a pickle of Python objects, not tensors: save model.state_dict() instead"
               if "weights only" in str(exc).lower() else f"corrupt or not a PyTorch checkpoint ({_first_line(exc)})")
        raise ModelLoadError(f"weights file {p} is {why}") from None
    if is_artifact(state):
        from .artifact import apply_state

        return apply_state(module, state.get("state_dict") or {}, input_shape, p)
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint layouts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ModelLoadError(f"weights file {p} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights file {p} does not fit this model: {_first_line(exc)}") from None
    return module


def _check_forward(loaded: LoadedModel) -> int | None:
    try:
        with torch.no_grad():
            out = loaded.module(torch.zeros(1, *loaded.input_shape))
    except Exception as exc:
        raise ModelLoadError(f"model {loaded.name} fails on input shape {list(loaded.input_shape)}: "
                             f"{type(exc).__name__}: {_first_line(exc)}; check --input-shape") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelLoadError(f"model {loaded.name} must return one (batch, classes) tensor; it returned "
                             f"{type(out).__name__}{'' if not isinstance(out, torch.Tensor) else list(out.shape)}")
    return int(out.shape[1])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
