"""Data-driven criteria (activation attention maps, Taylor) plug into the same pruner as the magnitude ones."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import RESNET_SHAPE
from edgeprune.errors import ConfigError
from edgeprune.pruning.importance import CRITERIA
from edgeprune.pruning.prune import prune_model

EXAMPLE = torch.zeros(1, *RESNET_SHAPE)


def _batches(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, *RESNET_SHAPE, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _kept(result, name):
    return result.widths_after[name]


@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_every_criterion_prunes_a_working_model(resnet20_base, criterion):
    res = prune_model(resnet20_base, EXAMPLE, 0.5, 4, criterion, batches=_batches())
    out = res.model(torch.randn(2, *RESNET_SHAPE))
    assert out.shape == (2, 10)
    assert sum(p.numel() for p in res.model.parameters()) < sum(p.numel() for p in resnet20_base.parameters())


@pytest.mark.parametrize("criterion", ["activation", "taylor"])
def test_data_criteria_need_batches(resnet20_base, criterion):
    with pytest.raises(ConfigError, match="calibration data"):
        prune_model(resnet20_base, EXAMPLE, 0.5, 4, criterion)


def test_activation_importance_keeps_the_most_active_filters():
    # conv -> BN -> ReLU with BN biases set so that the BN output of channel c is about c - 4: only channels
    # 5..7 are active after ReLU, and those are the ones an activation criterion must keep.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        model[0].weight.mul_(1e-3)
        model[1].bias.copy_(torch.arange(8.0) - 4.0)
    batches = [(torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))]
    res = prune_model(model, torch.zeros(1, 3, 8, 8), 0.0, 1, "activation", widths={"0": 3}, batches=batches)
    kept_bias = res.model[1].bias.detach()
    assert sorted(kept_bias.tolist()) == pytest.approx([1.0, 2.0, 3.0], abs=1e-4)


def test_activation_and_l1_choose_differently_on_a_real_model(resnet20_base):
    batches = _batches()
    a = prune_model(resnet20_base, EXAMPLE, 0.5, 4, "activation", batches=batches).model
    b = prune_model(resnet20_base, EXAMPLE, 0.5, 4, "l1").model
    assert a.conv1.weight.shape == b.conv1.weight.shape
    assert not torch.equal(a.conv1.weight, b.conv1.weight)
