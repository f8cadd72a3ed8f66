"""Stages of a build, each a plain function from typed inputs to a typed result; loop.py only orchestrates."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..config import BuildConfig
from ..data import DataBundle, load_data
from ..errors import ParityError, RuntimeUnavailable
from ..files import atomic_path
from ..export.onnx import ExportResult, Parity, check_parity, export_onnx
from ..models import LoadedModel, load_model
from ..models.zoo import ZOO
from ..targets.devices import DeviceSpec, HostInfo, detect_host, resolve_device
from ..backends import Deployed, RunContext, Runner, get_runner, measurable_here
from ..backends.jetson.telemetry import JetsonMonitor, MonitoredRunner
from ..pruning.recover import recalibrate_bn
from ..training import Trainer, TrainStatus, distributed, fit
from ..training.userdata import is_factory

log = logging.getLogger(__name__)

TRAIN_RECIPE = "sgd-nesterov-onecycle-lr0.05-bs64-seeded-init-v2"  # cache key part: change it when training changes


@dataclass
class Profile:
    device: DeviceSpec
    host: HostInfo
    runner: Runner
    threads: int | None
    fallback: dict[str, Any] | None = None  # when the device's runner could not run: it, and why not


def profile_stage(config: BuildConfig, work: Path | None = None) -> Profile:
    """The target's spec, what the measuring host has, and the runner that will measure; fails if it cannot
    measure there. The measuring host is this one, or with `config.remote` the far side of an SSH session."""
    if config.remote:
        return _remote_profile(config, work)
    host = detect_host()
    device, threads = _measurable_device(config, host, "here")
    context = run_context(config, threads, device, work)
    runner, fallback = choose_runner(device, lambda name: get_runner(name, context=context))
    # On a Jetson, memory, GPU load, power and clocks are recorded around every measurement; elsewhere the
    # monitor does nothing and the report says why there is no telemetry.
    runner = MonitoredRunner(runner, JetsonMonitor())
    return Profile(device, host, runner, threads, fallback)


def _measurable_device(config: BuildConfig, host, where: str):
    """The target's spec and thread count, if `host` (this one or the far side) can measure it."""
    device = resolve_device(config.device, host)
    why = measurable_here(device, host)
    if why:
        raise RuntimeUnavailable(f"device {device.name} cannot be measured {where}: {why}")
    return device, config.threads if config.threads is not None else device.threads


def _remote_profile(config: BuildConfig, work: Path | None) -> Profile:
    from ..backends import runner_class
    from ..backends.remote.runner import RemoteRunner, SshSession

    session = SshSession.open(config.remote, python=config.remote_python, remote_dir=config.remote_dir,
                              ssh_options=config.remote_ssh_options)
    try:
        host = session.host
        device, threads = _measurable_device(config, host, f"on {session.target}")
        context = run_context(config, threads, device, work)
        runner, fallback = choose_runner(device, lambda name: RemoteRunner(
            session, name, runner_class(name).options_for(context)))
    except BaseException:
        session.close()
        raise
    return Profile(device, host, runner, threads, fallback)


def choose_runner(device: DeviceSpec, make: Callable[[str], Runner]) -> tuple[Runner, dict[str, Any] | None]:
    """The device's runner, or else the first of its fallback runners that can run (a Jetson whose Python lacks
    TensorRT or a CUDA PyTorch still has JetPack's trtexec); the fallback, if any, says what was skipped and why."""
    skipped: dict[str, str] = {}
    for name in (device.runner, *device.fallback_runners):
        try:
            runner = make(name)
        except RuntimeUnavailable as exc:
            skipped[name] = exc.message
            continue
        if not skipped:
            return runner, None
        log.warning("device %s names runner %s, which cannot run (%s): measuring with %s, its fallback",
                    device.name, device.runner, skipped[device.runner], name)
        return runner, {"named": device.runner, "skipped": skipped}
    raise RuntimeUnavailable(f"no runner of device {device.name} can measure: "
                             + "; ".join(f"{why}" for why in skipped.values()))


def run_context(config: BuildConfig, threads: int | None, device: DeviceSpec, work: Path | None) -> RunContext:
    """What the build asks of whichever runner measures it; each runner takes what it has a use for."""
    # Reduced precision is carried by the ONNX the precision stage makes (pipeline/precision.py): a runner builds
    # and runs what its ONNX carries, so the context asks for fp32 arithmetic beyond that.
    return RunContext(threads=threads, seed=config.seed, precision="fp32",
                      workdir=Path(work) if work is not None else None)


@dataclass
class Prepared:
    model: LoadedModel
    data: DataBundle
    accuracy_available: str | None  # None when accuracy can be measured, else why not
    training: dict[str, Any] = field(default_factory=dict)
    trainer: Trainer = field(default_factory=Trainer)  # the built-in loop and metric, or the user's


def model_stage(config: BuildConfig, progress: Callable[[str], None] | None = None) -> Prepared:
    """Load the model and the data; train a built-in model on the data (seeded, cached) so accuracy is real."""
    is_zoo = config.model in ZOO
    shape = config.input_shape or ((1, 32, 32) if is_zoo and config.data == "digits" else
                                   (3, 32, 32) if is_zoo else None)
    data = None
    if is_factory(config.data):  # the user's datasets say their shape
        data = load_data(config.data, config.input_shape, seed=config.seed)
        shape = data.input_shape
    elif config.data and shape is not None:
        data = load_data(config.data, shape, seed=config.seed)
    torch.manual_seed(config.seed)  # a built-in model's initial weights, so a cold-cache build is reproducible
    loaded = load_model(config.model, config.weights, shape, num_classes=data.num_classes if data else None,
                        trust_pickle=config.trust_pickle)
    if data is None:
        data = load_data(config.data, loaded.input_shape, seed=config.seed)
    why = None
    if loaded.num_classes != data.num_classes:
        why = (f"the model has {loaded.num_classes} outputs but {data.name} has {data.num_classes} classes: "
               "accuracy and fine-tuning are skipped")
    # the Python API's train_fn / eval_fn travel in config.extra (callables are not options: not in the report)
    trainer = config.extra.get("trainer") or Trainer.from_config(config)
    prepared = Prepared(loaded, data, why, trainer=trainer)
    if is_zoo and not loaded.pretrained:
        prepared.training = train_cached(loaded, data, config.train_epochs, config.seed, progress, trainer)
    prepared.training = {**prepared.training, "recovery": trainer.describe()}
    return prepared


def train_cached(loaded: LoadedModel, data: DataBundle, epochs: int, seed: int,
                 progress: Callable[[str], None] | None = None, trainer: Trainer | None = None) -> dict[str, Any]:
    """Train once per (model, data, shape, seed, epochs, recipe, torch) and keep the weights in the user's cache.
    The built-in loop trains it (a user's train_fn fine-tunes only), on the device the options name."""
    options = (trainer or Trainer()).options
    key = {"model": loaded.name, "shape": list(loaded.input_shape), "data": data.name, "seed": seed,
           "epochs": epochs, "recipe": TRAIN_RECIPE, "torch": torch.__version__.split("+")[0]}
    recipe = options.recipe(data.name, distributed.world_size())
    if recipe:  # another device, optimizer or augmentation trains other weights; the default keeps its old key
        key["train"] = recipe
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "trained" / f"{loaded.name}-{re.sub(r'[^A-Za-z0-9._-]+', '_', data.name)}-{digest}.pt"
    if path.is_file():
        try:
            loaded.module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            loaded.module.eval()
            return {**key, "cache": str(path), "cached": True}
        except Exception as exc:  # a corrupt cache entry is retrained, not trusted
            log.warning("ignoring unreadable cached weights %s (%s)", path, exc)
    torch.manual_seed(seed)
    fit(loaded.module, data, epochs, options, seed=seed,
        progress=(lambda st: progress(f"training {loaded.name} on {data.name}: {st.describe()}"))
        if progress else None)
    with atomic_path(path) as tmp:  # a full disk or a kill leaves no half-written cache entry
        torch.save(loaded.module.state_dict(), tmp)
    return {**key, "cache": str(path), "cached": False}


def cache_dir() -> Path:
    if os.environ.get("EDGEPRUNE_CACHE"):
        return Path(os.environ["EDGEPRUNE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeprune"


def recover_stage(model: nn.Module, data: DataBundle, epochs: int, seed: int, can_train: bool,
                  progress: Callable[[str], None] | None = None, bn_recalibration: bool = True,
                  teacher: nn.Module | None = None, trainer: Trainer | None = None) -> dict[str, Any]:
    """BN statistics recalibration, then fine-tuning on the training split (distilled from `teacher` if given):
    the built-in loop on the options' device, or the user's train_fn (which gets no teacher)."""
    trainer = trainer or Trainer()
    if bn_recalibration:
        recalibrate_bn(model, data.calibration_batches())
    done = {"bn_recalibration": bn_recalibration, "finetune_epochs": 0, "distillation": False}
    if can_train and epochs > 0:
        trainer.finetune(model, data, epochs, seed=seed, teacher=teacher,
                         progress=_fine_tuning_progress(progress) if progress else None)
        done["finetune_epochs"] = epochs
        done["distillation"] = teacher is not None and trainer.train_fn is None
        if trainer.train_fn is not None:
            done["train_fn"] = trainer.train_label
    return done


def _fine_tuning_progress(progress: Callable[[str], None]) -> Callable[[TrainStatus], None]:
    return lambda status: progress(f"fine-tuning: {status.describe()}")


@dataclass
class Exported:
    export: ExportResult                     # the ONNX the runner was given (fp32, or the precision stage's)
    parity: Parity                           # the fp32 export against PyTorch
    deployed: Deployed
    precision: str = "fp32"
    quantization: dict[str, Any] | None = None      # how the reduced-precision ONNX was made (PrecisionResult)
    precision_parity: dict[str, Any] | None = None  # it against the fp32 ONNX (PrecisionParity)


def export_stage(model: nn.Module, prepared: Prepared, batch_size: int, path: Path, runner: Runner,
                 parity_samples: int = 64) -> Exported:
    """Export ONNX, prepare it for the runner, and gate on parity with PyTorch on real validation images."""
    result = export_onnx(model, prepared.model.input_shape, batch_size, path)
    if "model.pt" in runner.beside_onnx:  # the torch-cuda runner times the PyTorch module itself
        save_model_pt(path.with_name("model.pt"), model, prepared.model)
    deployed = runner.prepare(path, path.parent)
    x = torch.cat([b for b, _ in prepared.data.loader("val", parity_samples)][:1])[:parity_samples]
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    atol, rtol = runner.parity_tolerance()
    parity = check_parity(ref, runner.infer(deployed, x.numpy()), atol=atol, rtol=rtol)
    if not parity.ok:
        raise ParityError(f"the exported ONNX differs from PyTorch (max abs error {parity.max_abs:.2e}, "
                          f"max rel {parity.max_rel:.2e} over {parity.samples} images): the export is wrong; "
                          "report the model and torch version")
    return Exported(result, parity, deployed)


def save_model_pt(path: Path, model: nn.Module, loaded: LoadedModel, widths: dict[str, int] | None = None) -> Path:
    """The model's spec, shape, widths and state dict, which `--model model.pt` and the torch-cuda runner rebuild
    it from without unpickling code (models/artifact.py)."""
    from ..models.artifact import save_artifact

    return save_artifact(path, model, loaded, widths)


def accuracy_stage(runner: Runner, deployed: Deployed, data: DataBundle, batch: int = 64,
                   trainer: Trainer | None = None) -> float:
    """The deployed artifact's own score: top-1 accuracy (percent) on the validation split, or the user's
    eval_fn given the artifact as it runs on the target runtime (labelled by Trainer.metric)."""
    return (trainer or Trainer()).accuracy_deployed(runner, deployed, data, batch)
