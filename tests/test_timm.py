"""Issue 16 item 1: timm:NAME and factory models that say their input size build without --input-shape."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeprune.errors import ModelLoadError
from edgeprune.models import load_model
from edgeprune.pipeline.stages import save_model_pt
from edgeprune.pruning.prune import prune_model

ENTRY_POINT = Path(sys.executable).with_name("edgeprune")
timm = pytest.importorskip("timm")


def test_timm_model_takes_its_input_shape_from_its_pretrained_cfg():
    loaded = load_model("timm:test_efficientnet")  # no input shape given
    assert loaded.source == "timm" and loaded.spec == "timm:test_efficientnet"
    assert loaded.input_shape == tuple(timm.create_model("test_efficientnet").pretrained_cfg["input_size"])
    assert loaded.input_shape == (3, 160, 160) and loaded.num_classes == 1000
    assert not loaded.pretrained  # random init: nothing downloaded


def test_timm_model_with_input_shape_and_classes():
    loaded = load_model("timm:test_efficientnet", input_shape=(1, 32, 32), num_classes=7)
    assert loaded.input_shape == (1, 32, 32) and loaded.num_classes == 7
    with torch.no_grad():
        assert loaded.module(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def test_timm_vit_is_built_for_the_size_asked_for():
    loaded = load_model("timm:test_vit", input_shape=(3, 64, 64), num_classes=10)
    with torch.no_grad():
        assert loaded.module(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


def test_pruned_timm_model_pt_loads_back_without_opt_in(tmp_path):
    torch.manual_seed(0)
    loaded = load_model("timm:test_efficientnet", input_shape=(3, 32, 32), num_classes=10)
    pruned = prune_model(loaded.module, torch.zeros(1, 3, 32, 32), 0.5, 8)
    path = save_model_pt(tmp_path / "model.pt", pruned.model, loaded, pruned.widths_after)
    back = load_model(str(path))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.module(x), pruned.model.eval()(x))
    assert sum(p.numel() for p in back.module.parameters()) < sum(p.numel() for p in loaded.module.parameters())


def test_unknown_timm_name_suggests_close_names():
    with pytest.raises(ModelLoadError) as err:
        load_model("timm:resnet18x")
    assert "unknown timm model 'resnet18x'" in err.value.message and "resnet18d" in err.value.message


def test_unknown_timm_name_on_the_command_line_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([str(ENTRY_POINT), "build", "--model", "timm:resnet18x", "--out", str(tmp_path / "out"),
                           "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown timm model 'resnet18x'" in lines[0], proc.stderr


def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(ModelLoadError, match=r"pip install edgeprune\[timm\]"):
        load_model("timm:resnet18d")


FACTORIES = '''
from torch import nn

class CifarNet(nn.Module):  # as pytorchcv's models carry their input size
    def __init__(self, in_channels=3, in_size=(24, 24), num_classes=10):
        super().__init__()
        self.in_channels, self.in_size = in_channels, in_size
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.output = nn.Linear(8, num_classes)

    def forward(self, x):
        assert tuple(x.shape[1:]) == (self.in_channels, *self.in_size), "wrong input size"
        return self.output(self.features(x).flatten(1))

def cifarnet():
    return CifarNet()

def gray():
    return CifarNet(in_channels=1, in_size=(20, 28))
'''


def test_pytorchcv_style_factory_needs_no_input_shape(tmp_path):
    src = tmp_path / "nets.py"
    src.write_text(FACTORIES)
    assert load_model(f"{src}:cifarnet").input_shape == (3, 24, 24)
    loaded = load_model(f"{src}:gray")
    assert loaded.input_shape == (1, 20, 28) and loaded.num_classes == 10


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18d", "mobilenetv3_small_100"])
def test_timm_model_prunes_exports_and_matches(name):
    """Two of benchmarks/coverage.py's timm sample (the whole sample: coverage.py --timm)."""
    import importlib.util
    import warnings

    warnings.simplefilter("ignore")
    spec = importlib.util.spec_from_file_location("coverage_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py")
    cov = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cov)
    res = cov.run_one(f"timm:{name}", 64, ratio=0.3, multiple=8, latency=False, iters=0, blocks=0)
    assert res["ok"], res.get("reason")
    assert res["params_after"] < res["params_before"] and res["groups_pruned"] > 0
    assert res["parity"]["ok"] and res["logit_std"] > 1e-3
