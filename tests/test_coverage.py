"""Issue 6: torchvision architectures prune, export and match; models torch-pruning cannot follow are pruned
around the part it cannot follow, or refused with the layer named."""
from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.errors import ModelLoadError
from edgeprune.export import onnx as onnx_export
from edgeprune.pruning.prune import prunable_widths, prune_model

ROOT = Path(__file__).resolve().parents[1]


def _coverage():
    spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "benchmarks" / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# One model of each family the issue names (the full sweep is benchmarks/coverage.py), at 64 px.
FAST_SUBSET = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "convnext_tiny", "vit_b_32",
               "swin_t", "shufflenet_v2_x0_5"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST_SUBSET)
def test_torchvision_model_prunes_exports_and_matches(name):
    warnings.simplefilter("ignore")
    cov = _coverage()
    res = cov.run_one(name, 64, ratio=0.3, multiple=8, latency=False, iters=0, blocks=0)
    assert res["ok"], res.get("reason")
    assert res["params_after"] < res["params_before"] and res["macs_after"] < res["macs_before"]
    assert res["groups_pruned"] > 0
    assert res["parity"]["ok"] and res["parity"]["top1_agreement"] == 1.0
    assert res["logit_std"] > 1e-3  # parity was checked on outputs of ordinary size, not on zeros


def test_meaningful_init_gives_nonzero_logits_to_a_zero_initialised_head():
    import torchvision

    cov = _coverage()
    model = torchvision.models.vit_b_32(weights=None, image_size=32).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).abs().max() == 0  # torchvision zero-initialises ViT's head
        cov.meaningful_init(model, 32)
        assert model(torch.randn(2, 3, 32, 32)).std() > 1e-3


class GroupedNet(nn.Module):
    def __init__(self, channels: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.grouped = nn.Conv2d(channels, channels, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, channels)
        self.head = nn.Linear(channels, 10)

    def forward(self, x):
        x = torch.relu(self.gn(self.grouped(torch.relu(self.bn(self.stem(x))))))
        return self.head(x.mean((2, 3)))


def test_grouped_convolution_keeps_its_groups_with_equal_slices():
    model = GroupedNet().eval()
    x = torch.randn(2, 3, 16, 16)
    res = prune_model(model, x[:1], ratio=0.5, multiple=4)
    g = res.model.grouped
    assert g.groups == 4 and g.out_channels == 16 and g.in_channels == 16
    assert res.model.gn.num_groups == 4 and res.model.gn.num_channels == 16
    assert g.weight.shape == (16, 4, 3, 3)
    # Equal slices: the stem channels kept (they feed the grouped conv) are 4 of each group's 8, the same slots.
    rows = [next(i for i in range(32) if torch.equal(model.stem.weight[i], w)) for w in res.model.stem.weight]
    slots = [sorted(r % 8 for r in rows if r // 8 == grp) for grp in range(4)]
    assert all(len(s) == 4 for s in slots) and all(s == slots[0] for s in slots)
    with torch.no_grad():
        assert res.model(x).shape == (2, 10)


class NumpyOp(nn.Module):
    """A custom op torch-pruning cannot trace: it leaves autograd through NumPy (fine in inference)."""

    def forward(self, x):
        return torch.from_numpy(np.maximum(x.numpy(), 0.0))


class CustomOpNet(nn.Module):
    def __init__(self, conv_after: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.op = NumpyOp()
        self.conv2 = nn.Conv2d(16, 16, 3) if conv_after else nn.Identity()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.conv2(self.op(self.conv1(x))).mean((2, 3)))


def test_layers_around_a_custom_op_are_pruned_and_the_op_is_left_whole():
    model = CustomOpNet().eval()
    x = torch.randn(2, 3, 16, 16)
    assert prunable_widths(model, x[:1]) == {"conv2": 16}  # conv1 feeds the op: its width is the op's input
    res = prune_model(model, x[:1], ratio=0.5, multiple=8)
    assert res.model.conv2.out_channels == 8 and res.model.head.in_features == 8
    assert res.model.conv1.out_channels == 16
    assert type(res.model.op) is NumpyOp  # the opaque stand-in class used while tracing is gone
    with torch.no_grad():
        assert res.model(x).shape == (2, 10)


def test_a_model_whose_only_prunable_layer_feeds_a_custom_op_is_refused_naming_the_layer():
    with pytest.raises(ModelLoadError) as err:
        prunable_widths(CustomOpNet(conv_after=False).eval(), torch.randn(1, 3, 16, 16))
    msg = str(err.value)
    assert "nothing in this model can be pruned" in msg and "op (NumpyOp)" in msg and "\n" not in msg


def test_shufflenet_prunes_around_channel_shuffle_and_pickles():
    import torchvision

    warnings.simplefilter("ignore")
    model = torchvision.models.shufflenet_v2_x0_5(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    res = prune_model(model, x, ratio=0.3, multiple=8)
    assert res.model.conv5[0].out_channels < model.conv5[0].out_channels  # outside the shuffled stages
    assert res.model.stage2[1].branch2[0].out_channels < model.stage2[1].branch2[0].out_channels  # inside one
    assert res.model.stage2[1].branch2[-3].out_channels == model.stage2[1].branch2[-3].out_channels  # its output
    buf = io.BytesIO()
    torch.save(res.model, buf)  # no stand-in classes left behind
    with torch.no_grad():
        assert res.model(x).shape == (1, 1000)


def test_a_model_over_the_protobuf_cap_is_exported_with_external_data(tmp_path, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    model = GroupedNet().eval()
    res = onnx_export.export_onnx(model, (3, 16, 16), 1, tmp_path / "model.onnx")
    data = tmp_path / "model.onnx.data"
    assert data.exists() and data.stat().st_size > (tmp_path / "model.onnx").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    x = torch.randn(1, 3, 16, 16)
    out = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert onnx_export.check_parity(model(x).numpy(), out).ok


def test_the_trace_time_limit_counts_afresh_per_group_and_stops_a_hung_one():
    import time as _time

    from edgeprune.pruning import trace as P

    with P._time_limit(1.0) as rearm:  # five steps of 0.3 s: over the limit in all, each well under it
        for _ in range(5):
            _time.sleep(0.3)
            rearm()
    with pytest.raises(P._TimeLimit):
        with P._time_limit(0.5):
            _time.sleep(3)


def test_group_width_keeps_slices_aligned_to_the_multiple_when_they_were():
    from edgeprune.pruning.prune import group_width

    assert group_width(512, 0.3, 8, 4) == 4 * 88  # 128 per group -> 88, not the nearest-total 90
    assert group_width(48, 0.3, 8, 2) == 2 * 16  # 24 -> 16
    assert group_width(128, 0.3, 8, 32) == 32 * 3  # 4 per group: narrower than the multiple, narrowed alike
    assert group_width(64, 0.3, 8, 1) == 48


def test_grouped_slices_one_multiple_wide_halve_only_at_the_deepest_step():
    from edgeprune.pruning.prune import DEEPEST_RATIO, group_width, round_width

    assert round_width(16, 0.6, 16) == 8  # an ordinary layer may go to half a multiple short of the deepest step
    assert group_width(64, 0.6, 16, 4) == 64  # 16 per slice stays 16: half-multiple slices are not measured
    assert group_width(64, DEEPEST_RATIO, 16, 4) == 32


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_allocations_round_grouped_slices_as_the_uniform_pruner_does(allocation):
    from edgeprune.pruning.allocation import Allocator
    from edgeprune.pruning.prune import DEEPEST_RATIO, group_width, prunable_groups

    # Four slices of 24 channels: rounding the total (96 -> 56 at ratio 0.4) would leave 14 per slice.
    model, x = GroupedNet(96).eval(), torch.randn(1, 3, 16, 16)
    groups = prunable_groups(model, x)
    assert groups["grouped"] == (96, 4)
    alloc = Allocator(model, x, 8, allocation, "l1")
    for ratio in (0.2, 0.4, 0.6, DEEPEST_RATIO):
        widths = alloc.widths(ratio)
        for name, (channels, slices) in groups.items():
            assert widths[name] % slices == 0 and (widths[name] // slices) % 8 in (0, 4), (ratio, name, widths)
    if allocation == "uniform":
        assert alloc.widths(0.4)["grouped"] == group_width(96, 0.4, 8, 4) == 64
        pruned = prune_model(model, x, 0.0, 8, "l1", widths=alloc.widths(0.4)).model
        assert pruned.grouped.out_channels == 64 and pruned.grouped.weight.shape[1] == 16


def test_build_of_an_unprunable_model_is_one_error_line_naming_the_layer(tmp_path, edgeprune_cache):
    from click.testing import CliRunner

    from edgeprune.cli import main

    factory = tmp_path / "net.py"
    factory.write_text(
        "import numpy as np, torch, torch.nn as nn\n"
        "class NumpyOp(nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.from_numpy(np.maximum(x.numpy(), 0.0))\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv, self.op, self.head = nn.Conv2d(1, 16, 3), NumpyOp(), nn.Linear(16, 10)\n"
        "    def forward(self, x):\n"
        "        return self.head(self.op(self.conv(x)).mean((2, 3)))\n"
        "def make():\n"
        "    return Net()\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", "--model", f"{factory}:make", "--input-shape", "1,8,8",
                                       "--train-epochs", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 2, (result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: nothing in this model can be pruned")
    assert "op (NumpyOp)" in lines[0] and "Traceback" not in result.output
    assert not out.exists()
