"""Training options (issue 16 item 2): the built-in recipe's math unchanged on the CPU, devices that are not
present refused in one line, optimizer / rate / smoothing honoured, progress, ImageFolder augmentation."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from edgeprune.config import BuildConfig
from edgeprune.data import load_data
from edgeprune.errors import ConfigError
from edgeprune.training import TrainOptions, TrainStatus, fit
from edgeprune.training.augment import train_dataset
from edgeprune.training.options import resolve_amp, resolve_device


@pytest.fixture(scope="module")
def digits8():
    return load_data("digits", (1, 8, 8), seed=0)


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def reference_train(model, data, epochs, lr, seed):
    """The loop as pruning/recover.py had it before the training package: the default must compute this."""
    torch.manual_seed(seed)
    loader = data.loader("train", 64, shuffle=True, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_default_options_compute_the_old_recipe_exactly(digits8):
    ours = fit(small_net(), digits8, 2, TrainOptions(device="cpu"), lr=0.03, seed=3)
    assert same_weights(ours, reference_train(small_net(), digits8, 2, 0.03, 3))
    from edgeprune.pruning.recover import finetune

    assert same_weights(finetune(small_net(), digits8, 2, seed=3), ours)  # the wrapper: the same defaults


def test_workers_keep_the_batch_order(digits8):
    a = fit(small_net(), digits8, 1, TrainOptions(device="cpu"), seed=1)
    b = fit(small_net(), digits8, 1, TrainOptions(device="cpu", workers=2), seed=1)
    assert same_weights(a, b)


@pytest.mark.parametrize("options", [TrainOptions(device="cpu", optimizer="adamw"),
                                     TrainOptions(device="cpu", label_smoothing=0.2),
                                     TrainOptions(device="cpu", weight_decay=0.1)])
def test_each_option_changes_training(digits8, options):
    base = fit(small_net(), digits8, 1, TrainOptions(device="cpu"), seed=1)
    assert not same_weights(fit(small_net(), digits8, 1, options, seed=1), base)


def test_lr_is_the_peak_rate(digits8):
    start = small_net()
    tiny = fit(copy.deepcopy(start), digits8, 1, TrainOptions(device="cpu", lr=1e-9), seed=1)
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(start.parameters(), tiny.parameters()))
    assert moved < 1e-6


def test_progress_reports_throughput_loss_and_eta(digits8):
    seen: list[TrainStatus] = []
    fit(small_net(), digits8, 2, TrainOptions(device="cpu"), seed=0, progress=seen.append)
    ends = [s for s in seen if s.epoch_done]
    assert [s.epoch for s in ends] == [1, 2]
    assert all(s.images_per_s > 0 and math.isfinite(s.loss) for s in ends)
    assert ends[0].eta_s > 0 and ends[-1].eta_s == 0
    assert "images/s" in ends[0].describe() and "ETA" in ends[0].describe()


def test_model_comes_back_on_the_cpu_in_eval_mode(digits8):
    model = fit(small_net(), digits8, 1, TrainOptions(device="cpu"))
    assert not model.training and all(p.device.type == "cpu" for p in model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1"])
def test_absent_cuda_is_refused(spec):
    with pytest.raises(ConfigError, match="not present"):
        resolve_device(spec)


@pytest.mark.parametrize("spec,match", [("tpu", "unknown"), ("cuda:x", "malformed")])
def test_unknown_devices_are_refused(spec, match):
    with pytest.raises(ConfigError, match=match):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto picks the GPU there")
def test_auto_is_the_cpu_without_a_gpu():
    assert resolve_device("auto").type in ("cpu", "mps")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_the_cpu_is_refused(amp):
    with pytest.raises(ConfigError, match="needs a GPU"):
        resolve_amp(amp, torch.device("cpu"))
    assert resolve_amp("auto", torch.device("cpu")) is None


@pytest.mark.parametrize("changes,match", [({"optimizer": "lamb"}, "optimizer"), ({"lr": 0}, "lr"),
                                           ({"workers": -1}, "workers"), ({"label_smoothing": 1.5}, "smoothing"),
                                           ({"weight_decay": float("nan")}, "weight-decay"),
                                           ({"augment": "mixup"}, "augment")])
def test_bad_training_options_are_config_errors(changes, match):
    with pytest.raises(ConfigError, match=match):
        BuildConfig(**changes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
@pytest.mark.parametrize("flags", [["--train-device", "cuda"], ["--amp", "fp16", "--train-device", "cpu"]])
def test_cli_refuses_absent_device_and_amp_in_one_line(tmp_path, flags):
    from click.testing import CliRunner

    from edgeprune.cli import main

    result = CliRunner().invoke(main, ["build", "--out", str(tmp_path / "out"), *flags])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits_png")
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images[:60], digits.target[:60])):
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray((img * 15).astype("uint8")).resize((16, 16)).save(root / str(label) / f"{i}.png")
    return root


def test_imagefolder_training_is_augmented_and_validation_is_not(digit_folder):
    from torchvision import transforms as T

    data = load_data(f"imagefolder:{digit_folder}", (1, 16, 16))
    kinds = [type(t) for t in train_dataset(data, "standard").dataset.transform.transforms]
    assert T.RandomResizedCrop in kinds and T.RandomHorizontalFlip in kinds and T.Resize not in kinds
    assert T.RandomHorizontalFlip not in [type(t) for t in train_dataset(data, "crop").dataset.transform.transforms]
    val_kinds = [type(t) for t in data.val.dataset.transform.transforms]
    assert T.Resize in val_kinds and T.RandomResizedCrop not in val_kinds
    assert train_dataset(data, "none") is data.train
    x, _ = train_dataset(data, "standard")[0]
    assert tuple(x.shape) == (1, 16, 16)


def test_tensor_data_is_never_augmented(digits8):
    assert train_dataset(digits8, "standard") is digits8.train


@pytest.mark.parametrize("bf16,amp,expected", [(True, "auto", torch.bfloat16), (False, "auto", torch.float16),
                                               (True, "fp16", torch.float16), (True, "off", None)])
def test_amp_on_a_gpu_picks_bf16_where_supported(monkeypatch, bf16, amp, expected):
    from edgeprune.training.options import Resolved

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    dtype = resolve_amp(amp, torch.device("cuda", 0))
    assert dtype is expected
    resolved = Resolved(torch.device("cuda", 0), dtype)
    assert resolved.scaler_needed == (dtype is torch.float16)  # fp16 needs loss scaling, bf16 does not
    assert resolved.channels_last == (dtype is not None)


def test_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    with pytest.raises(ConfigError, match="bf16 is not supported by Tesla T4"):
        resolve_amp("bf16", torch.device("cuda", 0))


def test_cpu_training_is_plain_fp32_nchw():
    resolved = TrainOptions(device="cpu").resolve()
    assert resolved.amp_dtype is None and not resolved.channels_last and not resolved.scaler_needed


def test_cache_key_changes_only_when_training_would():
    default = TrainOptions(device="cpu")
    assert default.recipe("digits") is None  # earlier versions' cached weights stay valid
    assert default.recipe("imagefolder:/x") is not None  # augmented
    assert TrainOptions(device="cpu", augment="none").recipe("imagefolder:/x") is None
    assert TrainOptions(device="cpu", optimizer="adamw").recipe("digits")["optimizer"] == "adamw"
    assert default.recipe("digits", world_size=2)["world_size"] == 2
