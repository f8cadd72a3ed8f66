"""edgeprune's model.pt: what rebuilds the model (its spec and input shape) and its weights, never pickled code.

The file is a plain dict of strings, numbers and tensors, read back with `torch.load(weights_only=True)`: the
architecture is rebuilt from the spec it was built from (a built-in name, torchvision:NAME, timm:NAME), narrowed
to the pruned widths (read from the weights' own shapes), and the weights are loaded into it. A spec that runs
the user's code to rebuild (pkg.module:factory, file.py:factory) is not run on the say-so of a file: the user
names it (`--model SPEC --weights model.pt`). A whole-module pickle runs code when read: it is refused unless the
caller opted in (`--trust-pickle`).
"""
from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from . import LoadedModel

log = logging.getLogger(__name__)

FORMAT = "edgeprune.model"
FORMAT_VERSION = 2
LIBRARY_PREFIXES = ("torchvision:", "timm:")  # specs rebuilt by library code alone
TRUST_HINT = "pass --trust-pickle only for a file you trust"


def save_artifact(path: Path, module: nn.Module, loaded: "LoadedModel",
                  widths: dict[str, int] | None = None) -> Path:
    """Write model.pt: spec, shape, classes, widths and the state dict. A model with no spec to rebuild it from
    (it came from a whole-module pickle the user trusted) is written as a whole module again, which only
    `--trust-pickle` reads back."""
    from .. import __version__

    meta = {"name": loaded.name, "input_shape": list(loaded.input_shape), "num_classes": loaded.num_classes,
            "widths": dict(widths) if widths else None, "edgeprune_version": __version__}
    if loaded.spec is None:
        torch.save({"model": module, **meta}, path)
        return path
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "spec": loaded.spec, "source": loaded.source,
                **meta, "state_dict": state}, path)
    return path


def is_artifact(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_artifact(path: str | Path, input_shape=None, trust_pickle: bool = False,
                  allow_factory: bool = False) -> "LoadedModel":
    """The model in `path`: edgeprune's model.pt (rebuilt, no code from the file) or, with `trust_pickle`, a
    whole-module pickle. `allow_factory`: rebuild from a factory spec too (only for a file this process wrote)."""
    from . import LoadedModel

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model file {p} does not exist")
    obj = read_safely(p, trust_pickle)
    if is_artifact(obj):
        return _rebuild(p, obj, input_shape, allow_factory)
    meta: dict[str, Any] = {}
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):  # edgeprune's pickled model.pt (v1)
        meta, obj = obj, obj["model"]
    if isinstance(obj, dict):
        raise ModelLoadError(f"{p} holds a state dict, not a model: give the architecture with --model and this "
                             "file with --weights")
    if not isinstance(obj, nn.Module):
        raise ModelLoadError(f"{p} holds a {type(obj).__name__}, not a whole nn.Module; for a state dict use "
                             "--model with its architecture and --weights for the file")
    shape = tuple(input_shape or meta.get("input_shape") or ())
    if not shape:
        from . import shape_from_module

        shape = shape_from_module(obj) or ()
    if not shape:
        raise ModelLoadError(f"model {p} needs --input-shape C,H,W (e.g. 3,224,224)")
    return LoadedModel(obj, meta.get("name", p.stem), "file", tuple(shape), meta.get("num_classes"),
                       pretrained=True, spec=None)


def read_safely(p: Path, trust_pickle: bool) -> Any:
    """torch.load with weights_only=True; a pickle of Python objects is refused (one line) unless trusted."""
    if trust_pickle:
        log.warning("--trust-pickle: unpickling %s, which runs any code it holds", p)
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise ModelLoadError(f"{p} is not a loadable PyTorch file ({type(exc).__name__}: {_first_line(exc)})") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():  # torch's refusal of a global outside its allow-list
            raise ModelLoadError(f"{p} is a pickle of Python objects (a whole module), and unpickling runs the "
                                 f"code it names: {TRUST_HINT}") from None
        raise ModelLoadError(f"{p} is not a loadable PyTorch file ({_first_line(exc)})") from None
    except Exception as exc:
        raise ModelLoadError(f"{p} is not a loadable PyTorch file ({type(exc).__name__}: {_first_line(exc)})") from None


def _rebuild(p: Path, obj: dict[str, Any], input_shape, allow_factory: bool) -> "LoadedModel":
    from . import ZOO, load_model

    spec, state = obj.get("spec"), obj.get("state_dict")
    if not isinstance(spec, str) or not isinstance(state, dict):
        raise ModelLoadError(f"{p} is an edgeprune model.pt without its spec or weights: rebuild it")
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise ModelLoadError(f"{p} was written by a newer edgeprune ({obj.get('edgeprune_version')}): upgrade")
    if spec not in ZOO and not spec.startswith(LIBRARY_PREFIXES) and not allow_factory:
        raise ModelLoadError(f"{p} was built from {spec}, code that model.pt does not carry: load it with "
                             f"--model {spec} --weights {p}")
    saved_shape = tuple(obj.get("input_shape") or ())
    shape = tuple(input_shape) if input_shape else saved_shape
    loaded = load_model(spec, input_shape=shape or None, num_classes=obj.get("num_classes"))
    loaded.module = apply_state(loaded.module, state, loaded.input_shape, p)
    loaded.name, loaded.source, loaded.pretrained = obj.get("name") or spec, "file", True
    return loaded


def apply_state(module: nn.Module, state: dict[str, Any], input_shape, where: Path) -> nn.Module:
    """`module` narrowed to the widths `state` was saved at (each prunable layer's out channels, read from its
    weight) with `state` loaded: the pruned model, rebuilt from its unpruned architecture."""
    from ..pruning.prune import prunable_widths, prune_model

    state = {k.removeprefix("module."): v for k, v in state.items()}
    example = torch.zeros(1, *input_shape)
    try:
        full = prunable_widths(module, example)
    except ModelLoadError:
        full = {}
    widths = {name: int(state[f"{name}.weight"].shape[0]) for name in full if f"{name}.weight" in state}
    if any(widths[name] != full[name] for name in widths):
        module = prune_model(module, example, 0.0, widths=widths).model
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"the weights in {where} do not fit this model: {_first_line(exc)}") from None
    return module.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
