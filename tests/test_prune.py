from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeprune.errors import ConfigError
from edgeprune.models.zoo import BasicBlock
from edgeprune.pruning.cost import model_cost
from edgeprune.pruning.importance import CRITERIA
from edgeprune.pruning.prune import DEEPEST_RATIO, prunable_widths, prune_model, round_width

SHAPE = (1, 16, 16)
EXAMPLE = torch.zeros(1, *SHAPE)
RATIOS = [round(0.1 * i, 1) for i in range(10)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


def _convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# -- round_width ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("multiple", [1, 2, 4, 8, 16])
def test_round_width_properties(multiple):
    for channels in range(1, 130):
        prev = None
        for i in range(100):
            ratio = i / 100
            kept = round_width(channels, ratio, multiple)
            assert isinstance(kept, int)
            assert 1 <= kept <= channels  # never zero, never above the original
            exact = channels * (1 - ratio)
            # half a multiple (m >= 8) only where the unrounded width is at or below it, or at the deepest ratio
            floor = multiple // 2 if multiple >= 8 else multiple
            if channels <= floor:
                assert kept == channels  # nothing to round to: left whole
                continue
            if exact <= floor or ratio >= DEEPEST_RATIO:
                assert kept == floor
            elif channels <= multiple:
                assert kept == channels  # not yet down to the floor, and no multiple below it
            else:
                assert kept % multiple == 0 or kept == channels  # a multiple, unless clamped to the original
                if kept < channels:
                    assert abs(kept - exact) <= multiple / 2 + 1e-9  # the nearest one
            if prev is not None:
                assert kept <= prev  # more pruning never keeps more channels
            prev = kept


def test_round_width_avoids_round_to_trap():
    # torch-pruning's round_to floors: a 16-channel layer at 10% goes to 8 with multiple 8. Here it stays 16.
    assert round_width(16, 0.1, 8) == 16
    assert round_width(64, 0.1, 8) == 56
    assert round_width(16, 0.7, 8) == 8  # one multiple while the exact width (4.8) is above half of one
    assert round_width(16, 0.75, 8) == 4  # half a multiple once the exact width is down to it
    assert round_width(64, 0.9, 8) == 8 and round_width(64, 0.94, 8) == 4
    assert round_width(16, 0.25, 16) == 16 and round_width(16, 0.5, 16) == 8  # a layer one multiple wide
    assert round_width(16, 0.99, 8) == 4  # every layer at half a multiple at the deepest ratio
    assert round_width(16, 0.99, 4) == 4  # below 8 the floor is the multiple itself


def test_round_width_leaves_widths_between_one_multiple_and_the_deepest():
    # ResNet-56's stages (16, 32, 64 channels) at multiple 8: between every stage at one multiple and every
    # stage at half of one, each stage reaches half a multiple at its own ratio, so a budget can land between
    stages = (16, 32, 64)
    ladder = []
    for r in (0.70, 0.80, 0.90, 0.95, DEEPEST_RATIO):
        widths = tuple(round_width(c, r, 8) for c in stages)
        if widths not in ladder:
            ladder.append(widths)
    assert ladder[0] == (8, 8, 16) and ladder[-1] == (4, 4, 4)
    assert len(ladder) >= 4  # at least two models strictly between


@pytest.mark.parametrize("channels, multiple", [(10, 4), (9, 4), (100, 8)])
def test_round_width_ratio_zero_keeps_everything(channels, multiple):
    assert round_width(channels, 0.0, multiple) == channels


def test_prune_ratio_zero_keeps_odd_widths():
    model = nn.Sequential(nn.Conv2d(3, 10, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(10, 2)).eval()
    res = prune_model(model, torch.zeros(1, 3, 8, 8), 0.0, 4)
    assert res.model[0].out_channels == 10


# -- prune_model on resnet20 ----------------------------------------------------------------------------------
@pytest.fixture
def base(resnet20_base):
    return resnet20_base


def _check_resnet_consistent(model):
    for block in (m for m in model.modules() if isinstance(m, BasicBlock)):
        assert block.bn1.num_features == block.conv1.out_channels == block.conv2.in_channels
        assert block.bn2.num_features == block.conv2.out_channels
        sc_out = block.shortcut[0].out_channels if isinstance(block.shortcut, nn.Sequential) else block.conv1.in_channels
        assert block.conv2.out_channels == sc_out  # residual add needs equal widths
    assert model.fc.in_features == model.layer3[-1].conv2.out_channels


@pytest.mark.parametrize("ratio, multiple", [(0.3, 4), (0.5, 8), (0.7, 1)])
def test_prune_resnet20(base, ratio, multiple):
    res = prune_model(base, EXAMPLE, ratio, multiple)
    model = res.model
    before, after = model_cost(base, SHAPE), model_cost(model, SHAPE)
    assert after.params < before.params
    assert after.macs < before.macs
    assert after.param_bytes < before.param_bytes
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert model(x).shape == base(x).shape == (4, 10)  # classifier output width unchanged
    assert model.fc.out_features == base.fc.out_features
    assert res.kept_layers == ["fc"]
    assert "fc" not in res.widths_after
    _check_resnet_consistent(model)
    for name, width in res.widths_after.items():
        assert width == round_width(res.widths_before[name], ratio, multiple)
        assert model.get_submodule(name).out_channels == width  # the module holds what the result reports
    for name, conv in _convs(model).items():  # resnet20's widths (16, 32, 64) are multiples of 1, 4 and 8
        assert conv.out_channels % multiple == 0, name
    assert res.changed > 0
    assert res.ratio == ratio


def test_prune_keeps_model_in_eval_and_deterministic(base):
    a = prune_model(base, EXAMPLE, 0.5, 4)
    b = prune_model(base, EXAMPLE, 0.5, 4)
    assert not a.model.training
    assert a.widths_after == b.widths_after
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x), rtol=0, atol=0)


def test_ratio_zero_with_multiple_one_is_identity(base):
    res = prune_model(base, EXAMPLE, 0.0, 1)
    assert res.changed == 0
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), base(x))


def test_pruned_filters_are_original_filters(base):
    # pruning removes whole filters: each kept filter is an original one, copied unchanged, in the original order
    name = "layer1.0.conv1"
    res = prune_model(base, EXAMPLE, widths={name: 8})
    kept_w = res.model.get_submodule(name).weight
    orig_w = base.get_submodule(name).weight
    idx = [next(i for i in range(orig_w.shape[0]) if torch.equal(orig_w[i], k)) for k in kept_w]
    assert idx == sorted(idx) and len(set(idx)) == 8


def test_explicit_widths_honoured(base):
    widths = {"layer1.0.conv1": 5, "layer2.1.conv1": 12, "conv1": 8, "layer3.0.shortcut.0": 40}
    res = prune_model(base, EXAMPLE, ratio=0.9, multiple=8, widths=widths)
    m = res.model
    for name, w in widths.items():
        assert m.get_submodule(name).out_channels == w
        assert res.widths_after[name] == w
    # layers not named keep their width (widths overrides the ratio entirely)
    assert m.layer2[0].conv1.out_channels == base.layer2[0].conv1.out_channels
    # coupled layers follow their root: the stem width is the width of every layer1 residual output
    assert all(b.conv2.out_channels == 8 for b in m.layer1)
    assert all(b.conv2.out_channels == 40 for b in m.layer3)
    _check_resnet_consistent(m)
    with torch.no_grad():
        assert m(torch.randn(1, *SHAPE)).shape == (1, 10)


def test_explicit_width_clamped(base):
    res = prune_model(base, EXAMPLE, widths={"layer1.0.conv1": 0, "layer1.1.conv1": 999})
    assert res.model.layer1[0].conv1.out_channels == 1
    assert res.model.layer1[1].conv1.out_channels == base.layer1[1].conv1.out_channels


def test_original_untouched(resnet20):
    resnet20.train()  # even a model in training mode: prune_model works on a copy
    state = _state(resnet20)
    prune_model(resnet20, torch.randn(2, *SHAPE), 0.6, 4)
    assert _same_state(resnet20, state)
    assert resnet20.training
    assert resnet20.conv1.out_channels == 16


def test_prunable_widths_leaves_model_untouched(resnet20):
    resnet20.train()
    state = _state(resnet20)
    prunable_widths(resnet20, torch.randn(2, *SHAPE))
    assert _same_state(resnet20, state)
    assert resnet20.training


def test_prunable_widths(base):
    widths = prunable_widths(base, EXAMPLE)
    assert "fc" not in widths
    assert widths == prune_model(base, EXAMPLE, 0.5, 4).widths_before
    for name, w in widths.items():
        assert base.get_submodule(name).out_channels == w
    # residual coupling: layer1's conv2 outputs belong to the stem's group, not to groups of their own
    assert "conv1" in widths and "layer1.0.conv2" not in widths


@pytest.mark.parametrize("multiple", [4, 8])
def test_macs_decrease_monotonically(base, multiple):
    macs, params = [], []
    for ratio in RATIOS:
        cost = model_cost(prune_model(base, EXAMPLE, ratio, multiple).model, SHAPE)
        macs.append(cost.macs)
        params.append(cost.params)
    assert all(b <= a for a, b in zip(macs, macs[1:])), macs
    assert all(b <= a for a, b in zip(params, params[1:])), params
    assert macs[-1] < macs[0] / 4
    # the smallest step keeps most of the network (no 16 -> 8 collapse of a whole stage)
    assert macs[1] > 0.75 * macs[0]


@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_every_criterion_prunes(base, criterion):
    batches = [(torch.randn(4, *SHAPE), torch.randint(0, 10, (4,)))]
    res = prune_model(base, EXAMPLE, 0.5, 4, criterion=criterion, batches=batches)
    assert res.widths_after == prune_model(base, EXAMPLE, 0.5, 4).widths_after
    _check_resnet_consistent(res.model)
    with torch.no_grad():
        assert res.model(torch.randn(1, *SHAPE)).shape == (1, 10)


def test_unknown_criterion(base):
    with pytest.raises(ConfigError, match="criterion"):
        prune_model(base, EXAMPLE, 0.5, 4, criterion="taylor-magic")


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio(base, ratio):
    with pytest.raises(ValueError):
        prune_model(base, EXAMPLE, ratio, 4)


def test_l1_drops_the_smallest_filters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(8, 6, 3, padding=1, bias=False), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)).eval()
    scale = torch.tensor([5.0, 0.1, 3.0, 0.2, 4.0, 0.3, 2.0, 0.4])
    with torch.no_grad():
        model[0].weight.copy_(torch.sign(torch.randn(8, 3, 3, 3)) * scale[:, None, None, None])
        model[2].weight.fill_(0.5)  # the next layer sees every input channel alike
    orig = model[0].weight.detach().clone()
    res = prune_model(model, torch.zeros(1, 3, 8, 8), widths={"0": 4})
    keep = sorted(torch.topk(scale, 4).indices.tolist())
    torch.testing.assert_close(res.model[0].weight, orig[keep])
    assert res.model[2].in_channels == 4
    assert res.kept_layers == ["6"]


def test_classifier_not_last_module_stays_whole():
    # the class scores come from a conv here (1x1 conv head, then pooling): that conv must keep its width
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 5, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    res = prune_model(model, torch.zeros(1, 3, 8, 8), 0.5, 4)
    assert res.model[2].out_channels == 5
    assert res.model[0].out_channels == 8
    assert res.kept_layers == ["2"]


# -- torchvision mobilenet_v2 (depthwise convolutions) ---------------------------------------------------------
def test_prune_mobilenet_v2():
    from edgeprune.models import load_model

    shape = (3, 32, 32)
    torch.manual_seed(0)
    base = load_model("torchvision:mobilenet_v2", input_shape=shape, num_classes=10).module
    res = prune_model(base, torch.zeros(1, *shape), 0.5, 8)
    model = res.model
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise
    for m in depthwise:
        assert m.groups == m.in_channels == m.out_channels  # still depthwise after pruning
    for name, w in res.widths_after.items():
        assert w % 8 == 0 and w < res.widths_before[name]
    assert model_cost(model, shape).macs < 0.6 * model_cost(base, shape).macs
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 10)


# -- model cost -----------------------------------------------------------------------------------------------
def test_model_cost_counts():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).train()
    cost = model_cost(model, (3, 6, 6))
    n_params = sum(p.numel() for p in model.parameters())
    assert cost.params == n_params
    # parameters + BN running mean/var (float); num_batches_tracked (int64) is not a weight
    assert cost.param_bytes == 4 * (n_params + 2 * 8)
    conv_macs = 8 * 3 * 3 * 3 * 6 * 6
    assert cost.macs >= conv_macs + 8 * 4
    assert cost.macs < 2 * (conv_macs + 8 * 4)
    assert model.training  # mode restored
    assert cost.to_dict() == {"macs": cost.macs, "params": cost.params, "param_bytes": cost.param_bytes}
