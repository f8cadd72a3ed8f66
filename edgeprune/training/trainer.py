"""Who trains and who scores a build's models: the built-in loop and top-1 accuracy, or the user's own
`train_fn(model, epochs) -> model` and `eval_fn(model_or_session) -> float` (Python API, or --train-fn /
--eval-fn pkg.module:fn). A user's metric is labelled as theirs wherever it is reported."""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..config import as_finite
from ..errors import ConfigError, first_line
from .loop import TrainStatus, accuracy_torch, fit
from .options import FINETUNE_LR, TrainOptions

log = logging.getLogger(__name__)

BUILT_IN_METRIC = "top-1 accuracy (percent) on the val split"


@dataclass
class Trainer:
    options: TrainOptions = field(default_factory=TrainOptions)
    train_fn: Callable[[nn.Module, int], nn.Module] | None = None
    eval_fn: Callable[[Any], float] | None = None
    train_label: str | None = None
    eval_label: str | None = None

    @classmethod
    def from_config(cls, config, train_fn: Callable | None = None, eval_fn: Callable | None = None) -> "Trainer":
        """The config's options (checked against this host now) and the user's functions: callables given to
        the Python API, else the config's pkg.module:fn paths."""
        options = TrainOptions.from_config(config)
        options.resolve()  # a device that is not present, or AMP it lacks, fails before any work
        if train_fn is None and config.train_fn:
            train_fn = load_callable(config.train_fn, "train-fn")
        if eval_fn is None and config.eval_fn:
            eval_fn = load_callable(config.eval_fn, "eval-fn")
        return cls(options, train_fn, eval_fn, _label(train_fn, config.train_fn), _label(eval_fn, config.eval_fn))

    @property
    def metric(self) -> str:
        return f"user: {self.eval_label}" if self.eval_fn is not None else BUILT_IN_METRIC

    def describe(self) -> dict[str, Any]:
        from . import distributed

        resolved = self.options.resolve().describe() if self.train_fn is None else None
        group = distributed.current()
        return {"loop": f"user: {self.train_label}" if self.train_fn is not None else "built-in",
                "accuracy_metric": self.metric, "device": resolved,
                "optimizer": self.options.optimizer if self.train_fn is None else None,
                "distributed": group.describe() if group is not None else None}

    def finetune(self, model: nn.Module, data, epochs: int, seed: int, lr: float = FINETUNE_LR,
                 progress: Callable[[TrainStatus], None] | None = None,
                 teacher: nn.Module | None = None) -> nn.Module:
        if self.train_fn is not None:
            return run_train_fn(self.train_fn, self.train_label, model, epochs)
        if teacher is not None:
            teacher.eval()
        return fit(model, data, epochs, self.options, lr=lr, seed=seed, progress=progress, teacher=teacher)

    def accuracy_torch(self, model: nn.Module, data) -> float:
        if self.eval_fn is not None:
            model.eval()
            with torch.no_grad():
                return run_eval_fn(self.eval_fn, self.eval_label, model)
        return accuracy_torch(model, data)

    def accuracy_deployed(self, runner, deployed, data, batch: int = 64) -> float:
        """The score of the deployed artifact itself: run through its runner (ONNX Runtime, TensorRT, ...)."""
        if self.eval_fn is not None:
            return run_eval_fn(self.eval_fn, self.eval_label, DeployedModel(runner, deployed))
        correct = n = 0
        for x, y in data.loader("val", batch):
            out = runner.infer(deployed, x.numpy())
            correct += int((np.argmax(out, 1) == y.numpy()).sum())
            n += len(y)
        return 100.0 * correct / max(n, 1)


class DeployedModel:
    """What eval_fn is given for a deployed artifact: called like the PyTorch model (a tensor in, a tensor out),
    or `run(array) -> array`; it runs on the target runtime. `runner` and `deployed` are there for more."""

    def __init__(self, runner, deployed):
        self.runner, self.deployed = runner, deployed

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.runner.infer(self.deployed, np.ascontiguousarray(x, dtype=np.float32)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(x.detach().cpu().numpy()))

    def eval(self) -> "DeployedModel":  # so eval_fn may call model.eval() whichever it is given
        return self


def run_train_fn(fn: Callable, label: str | None, model: nn.Module, epochs: int) -> nn.Module:
    """The user's loop on the pruned model; the pruned model back, trained, or one line saying what went wrong."""
    shapes = _shapes(model)
    try:
        out = fn(model, epochs)
    except Exception as exc:  # their code: whatever it raises is reported as theirs, in one line
        raise ConfigError(f"train_fn {label} raised {type(exc).__name__}: {first_line(exc)}") from None
    if out is None:
        raise ConfigError(f"train_fn {label} returned None: it must return the model it was given, trained "
                          "(train_fn(model, epochs) -> model)")
    if not isinstance(out, nn.Module):
        raise ConfigError(f"train_fn {label} returned a {type(out).__name__}, not the model: return the "
                          "nn.Module it was given, trained")
    changed = _differences(shapes, _shapes(out))
    if changed:
        raise ConfigError(f"train_fn {label} returned a different model ({changed}): return the pruned model it "
                          "was given, trained, without changing its layers")
    if out is not model:  # the same architecture (a copy, a wrapper's inner module): its weights are taken
        model.load_state_dict({k: v.detach().cpu() for k, v in out.state_dict().items()})
    model.to(device="cpu", memory_format=torch.contiguous_format)
    return model.eval()


def run_eval_fn(fn: Callable, label: str | None, model: Any) -> float:
    try:
        value = fn(model)
    except Exception as exc:
        raise ConfigError(f"eval_fn {label} raised {type(exc).__name__}: {first_line(exc)}") from None
    number = as_finite(value)
    if number is None:
        kind = "not finite" if isinstance(value, (int, float)) else f"{type(value).__name__}, not a number"
        raise ConfigError(f"eval_fn {label} returned {value!r:.40} ({kind}): it must return a finite score "
                          "(higher is better)")
    return number


def load_callable(spec: str, what: str) -> Callable:
    """'pkg.module:name' -> the callable it names, or one line saying why not."""
    module_name, _, attr = str(spec).partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{what} {spec!r} is malformed: write pkg.module:function")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"{what} {spec}: cannot import {module_name} ({type(exc).__name__}: "
                          f"{first_line(exc)})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"{what} {spec}: {module_name} has no {attr}")
    if not callable(fn):
        raise ConfigError(f"{what} {spec}: {attr} is a {type(fn).__name__}, not a function")
    return fn


def _label(fn: Callable | None, spec: str | None) -> str | None:
    if fn is None:
        return None
    if spec:
        return spec
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _differences(before: dict[str, tuple], after: dict[str, tuple]) -> str:
    missing, extra = sorted(set(before) - set(after)), sorted(set(after) - set(before))
    if missing or extra:
        return ", ".join(filter(None, [f"missing {', '.join(missing[:3])}" if missing else "",
                                       f"new {', '.join(extra[:3])}" if extra else ""]))
    resized = [k for k in before if before[k] != after[k]]
    return f"{resized[0]} is {list(after[resized[0]])}, was {list(before[resized[0]])}" if resized else ""

