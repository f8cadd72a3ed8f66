"""Small shared fixtures: tiny models and ONNX files exported once per session (export is the slow step)."""
from __future__ import annotations

import pytest
import torch
from torch import nn


def pytest_configure(config):
    # The test models are tiny: intra-op threads buy nothing, and on a shared 2-core machine OpenMP's waiting
    # threads slow small ops down many-fold whenever the other core is busy (0.05 s -> 1.3 s per prune here).
    torch.set_num_threads(1)


RESNET_SHAPE = (1, 16, 16)  # resnet20 at a small input keeps pruning and export fast
TINY_SHAPE = (3, 8, 8)


def make_tiny(seed: int = 0) -> nn.Module:
    """Conv -> ReLU -> global pool -> Linear: no BN, so the ONNX weights are exactly the PyTorch parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that folding BN into convs matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    return model


def make_resnet20(seed: int = 0) -> nn.Module:
    from edgeprune.models import load_model

    torch.manual_seed(seed)
    return randomize_bn(load_model("resnet20", input_shape=RESNET_SHAPE).module, seed).eval()


@pytest.fixture
def tiny_model() -> nn.Module:
    return make_tiny()


@pytest.fixture
def resnet20() -> nn.Module:
    return make_resnet20()


@pytest.fixture(scope="session")
def resnet20_base() -> nn.Module:
    """A shared resnet20 (seed 0, random BN statistics) for tests that only read it; copy before changing it."""
    return make_resnet20(seed=0)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory):
    """(model, path) of the tiny model exported with batch 1."""
    from edgeprune.export.onnx import export_onnx

    model = make_tiny()
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_onnx(model, TINY_SHAPE, 1, path)
    return model, path


@pytest.fixture(scope="session")
def pruned_resnet20_onnx(tmp_path_factory):
    """(pruned model, path, ExportResult) of resnet20 pruned by half at multiple 4, exported with batch 1."""
    from edgeprune.export.onnx import export_onnx
    from edgeprune.pruning.prune import prune_model

    model = prune_model(make_resnet20(), torch.zeros(1, *RESNET_SHAPE), 0.5, 4).model.eval()
    path = tmp_path_factory.mktemp("resnet20") / "pruned.onnx"
    result = export_onnx(model, RESNET_SHAPE, 1, path)
    return model, path, result


@pytest.fixture
def tiny_factory():
    """make_tiny(seed): a fresh tiny model per call."""
    return make_tiny


@pytest.fixture
def resnet20_factory():
    """make_resnet20(seed): a fresh resnet20 at (1, 16, 16) with random BN statistics per call."""
    return make_resnet20


@pytest.fixture(scope="session")
def edgeprune_cache(tmp_path_factory):
    """EDGEPRUNE_CACHE pointed at a per-session directory, so builds never touch the user's cache (trained
    weights are still shared between the builds of one session)."""
    path = tmp_path_factory.mktemp("edgeprune-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEPRUNE_CACHE", str(path))
        yield path
