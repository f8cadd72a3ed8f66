"""Model sources: the built-in zoo, torchvision, importable factories, files defining factories, whole-module .pt."""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from .zoo import ZOO

log = logging.getLogger(__name__)

SOURCES_HELP = (
    "use a built-in name (" + ", ".join(ZOO) + "), torchvision:NAME, pkg.module:factory, path/to/file.py:factory "
    "or a whole-module .pt file"
)


@dataclass
class LoadedModel:
    module: nn.Module
    name: str
    source: str  # "zoo" | "torchvision" | "factory" | "file"
    input_shape: tuple[int, int, int]
    num_classes: int | None
    pretrained: bool  # weights came from the user (or the file); False: random init, to be trained if zoo


def load_model(spec: str, weights: str | None = None, input_shape: tuple[int, ...] | None = None,
               in_channels: int = 3, num_classes: int | None = None) -> LoadedModel:
    """Build the model `spec` names, load `weights` into it, and check that it runs on `input_shape`."""
    if spec in ZOO:
        shape = tuple(input_shape) if input_shape else (in_channels, 32, 32)
        module = ZOO[spec](num_classes=num_classes or 10, in_channels=shape[0])
        loaded = LoadedModel(module, spec, "zoo", shape, num_classes or 10, pretrained=False)
    elif spec.startswith("torchvision:"):
        loaded = _torchvision(spec.split(":", 1)[1], input_shape, num_classes)
    elif spec.endswith((".pt", ".pth")) and ":" not in spec:
        loaded = _whole_module(spec, input_shape)
    elif ":" in spec:
        loaded = _factory(spec, input_shape)
    else:
        raise ModelLoadError(f"unknown model {spec!r}: {SOURCES_HELP}")
    if weights:
        _load_weights(loaded.module, weights)
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
        raise ModelLoadError(f"unknown torchvision model {name!r}: see `torchvision.models.list_models()` for names")
    kwargs = {"weights": None}
    if num_classes:
        kwargs["num_classes"] = num_classes
    shape = tuple(input_shape) if input_shape else (3, 224, 224)
    kwargs.update(_size_kwargs(name, shape))
    try:
        module = torchvision.models.get_model(name, **kwargs)
    except (AssertionError, ValueError, TypeError) as exc:  # e.g. an image size the patch does not divide
        raise ModelLoadError(f"torchvision:{name} cannot be built for input shape {list(shape)}: "
                             f"{_first_line(exc)}; check --input-shape") from None
    return LoadedModel(module, f"torchvision:{name}", "torchvision", shape, num_classes, pretrained=False)


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
    if input_shape is None:
        raise ModelLoadError(f"model {spec!r} needs --input-shape C,H,W (e.g. 3,224,224)")
    return LoadedModel(module, spec, "factory", tuple(input_shape), None, pretrained=True)


def _whole_module(path: str, input_shape) -> LoadedModel:
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model file {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{p} is not a loadable PyTorch file ({type(exc).__name__}: {_first_line(exc)}); "
                             "save the whole module with torch.save(model, path)") from None
    meta = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):  # edgeprune's own model.pt
        meta, obj = obj, obj["model"]
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{p} holds a {type(obj).__name__}, not a whole nn.Module; for a state dict use "
                             "--model with its architecture and --weights for the file")
    shape = tuple(input_shape or meta.get("input_shape") or ())
    if not shape:
        raise ModelLoadError(f"model {p} needs --input-shape C,H,W (e.g. 3,224,224)")
    return LoadedModel(obj, meta.get("name", p.stem), "file", shape, meta.get("num_classes"), pretrained=True)


def _load_weights(module: nn.Module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"weights file {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"weights file {p} is corrupt or not a PyTorch checkpoint ({_first_line(exc)})") from None
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
