from __future__ import annotations

import textwrap
import uuid

import pytest
import torch
from torch import nn

from edgeprune.errors import ModelLoadError
from edgeprune.models import load_model
from edgeprune.models.zoo import ZOO

SMALL = (1, 16, 16)

FACTORY_SOURCE = textwrap.dedent("""
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    def tiny():
        torch.manual_seed(0)
        return Tiny()

    def flat():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

    def spatial():
        return nn.Conv2d(3, 2, 1)

    def not_a_module():
        return 42

    def broken():
        raise RuntimeError("factory exploded")
""")


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY_SOURCE)
    return path


def _run(loaded, seed=1):
    torch.manual_seed(seed)
    x = torch.randn(2, *loaded.input_shape)
    with torch.no_grad():
        return loaded.module(x)


# -- zoo ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_models_load_and_run(name):
    loaded = load_model(name, input_shape=SMALL, num_classes=7)
    assert loaded.source == "zoo" and loaded.name == name
    assert loaded.input_shape == SMALL
    assert loaded.num_classes == 7
    assert not loaded.pretrained
    assert not loaded.module.training
    assert _run(loaded).shape == (2, 7)


def test_zoo_default_shape_follows_in_channels():
    loaded = load_model("resnet20", in_channels=1)
    assert loaded.input_shape == (1, 32, 32)
    assert loaded.num_classes == 10
    assert loaded.module.conv1.in_channels == 1


def test_zoo_depth_differs():
    n20 = sum(p.numel() for p in load_model("resnet20", input_shape=SMALL).module.parameters())
    n56 = sum(p.numel() for p in load_model("resnet56", input_shape=SMALL).module.parameters())
    assert n56 > 2 * n20


def test_unknown_name():
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet999", input_shape=SMALL)
    assert "resnet999" in info.value.message
    assert "torchvision:NAME" in info.value.message  # tells the user what sources exist


# -- torchvision ----------------------------------------------------------------------------------------------
def test_torchvision_resnet18_small_input():
    loaded = load_model("torchvision:resnet18", input_shape=(3, 64, 64), num_classes=10)
    assert loaded.source == "torchvision"
    assert loaded.num_classes == 10
    assert _run(loaded).shape == (2, 10)


def test_torchvision_unknown():
    with pytest.raises(ModelLoadError, match="nosuchnet"):
        load_model("torchvision:nosuchnet", input_shape=(3, 32, 32))


# -- factories ------------------------------------------------------------------------------------------------
def test_file_factory(factory_file):
    loaded = load_model(f"{factory_file}:tiny", input_shape=(3, 8, 8))
    assert loaded.source == "factory"
    assert loaded.pretrained  # the factory's own weights are kept
    assert loaded.num_classes == 5
    assert _run(loaded).shape == (2, 5)


def test_importable_factory(tmp_path, monkeypatch):
    pkg = f"edgeprune_test_pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "nets.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model(f"{pkg}.nets:tiny", input_shape=(3, 8, 8))
    assert loaded.source == "factory"
    assert _run(loaded).shape == (2, 5)


def test_importable_factory_missing_module():
    with pytest.raises(ModelLoadError, match="cannot build model"):
        load_model("edgeprune_no_such_pkg.nets:tiny", input_shape=(3, 8, 8))


def test_factory_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(f"{tmp_path / 'absent.py'}:tiny", input_shape=(3, 8, 8))


def test_factory_missing_attribute(factory_file):
    with pytest.raises(ModelLoadError, match="nosuch"):
        load_model(f"{factory_file}:nosuch", input_shape=(3, 8, 8))


def test_factory_raising(factory_file):
    with pytest.raises(ModelLoadError, match="factory exploded"):
        load_model(f"{factory_file}:broken", input_shape=(3, 8, 8))


def test_factory_not_a_module(factory_file):
    with pytest.raises(ModelLoadError, match="not a torch.nn.Module"):
        load_model(f"{factory_file}:not_a_module", input_shape=(3, 8, 8))


def test_factory_without_input_shape(factory_file):
    with pytest.raises(ModelLoadError, match="--input-shape"):
        load_model(f"{factory_file}:tiny")


def test_model_failing_on_input_shape(factory_file):
    # Flatten + Linear(12) accepts 3*2*2 inputs only
    assert load_model(f"{factory_file}:flat", input_shape=(3, 2, 2)).num_classes == 3
    with pytest.raises(ModelLoadError) as info:
        load_model(f"{factory_file}:flat", input_shape=(3, 8, 8))
    msg = info.value.message
    assert "--input-shape" in msg
    assert "[3, 8, 8]" in msg
    assert "\n" not in msg


def test_model_not_returning_logits(factory_file):
    with pytest.raises(ModelLoadError, match=r"\(batch, classes\)"):
        load_model(f"{factory_file}:spatial", input_shape=(3, 4, 4))


# -- whole-module .pt -----------------------------------------------------------------------------------------
def test_whole_module_pt(tmp_path, tiny_model):
    path = tmp_path / "whole.pt"
    torch.save(tiny_model, path)
    loaded = load_model(str(path), input_shape=(3, 8, 8), trust_pickle=True)
    assert loaded.source == "file" and loaded.name == "whole"
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), tiny_model(x))


def test_whole_module_pt_needs_shape(tmp_path, tiny_model):
    path = tmp_path / "whole.pth"
    torch.save(tiny_model, path)
    with pytest.raises(ModelLoadError, match="--input-shape"):
        load_model(str(path), trust_pickle=True)


def test_edgeprune_model_pt_carries_its_shape(tmp_path, tiny_model):
    path = tmp_path / "model.pt"
    torch.save({"model": tiny_model, "input_shape": [3, 8, 8], "name": "mine", "num_classes": 4}, path)
    loaded = load_model(str(path), trust_pickle=True)  # edgeprune's former, pickled model.pt
    assert loaded.input_shape == (3, 8, 8)
    assert loaded.name == "mine"
    assert loaded.num_classes == 4


def test_pt_holding_state_dict_is_rejected(tmp_path, tiny_model):
    path = tmp_path / "sd.pt"
    torch.save(tiny_model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="--weights"):
        load_model(str(path), input_shape=(3, 8, 8))


def test_missing_pt(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "gone.pt"), input_shape=(3, 8, 8))


def test_corrupt_pt(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path), input_shape=(3, 8, 8))
    assert str(path) in info.value.message


# -- --weights ------------------------------------------------------------------------------------------------
def _saved_resnet20_weights(tmp_path, wrap=None, prefix=""):
    torch.manual_seed(123)
    src = load_model("resnet20", input_shape=SMALL).module
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.bias.uniform_(-0.2, 0.2)
    state = {prefix + k: v for k, v in src.state_dict().items()}
    if wrap:
        state = {wrap: state, "epoch": 3}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    return src, path


@pytest.mark.parametrize("wrap, prefix", [(None, ""), ("state_dict", ""), ("model_state_dict", ""),
                                          ("model", ""), (None, "module.")])
def test_state_dict_weights_load_and_change_outputs(tmp_path, wrap, prefix):
    src, path = _saved_resnet20_weights(tmp_path, wrap, prefix)
    torch.manual_seed(999)  # a different random init
    fresh = load_model("resnet20", input_shape=SMALL)
    torch.manual_seed(999)
    loaded = load_model("resnet20", weights=str(path), input_shape=SMALL)
    assert loaded.pretrained and not fresh.pretrained
    x = torch.randn(3, *SMALL)
    with torch.no_grad():
        want = src.eval()(x)
        torch.testing.assert_close(loaded.module(x), want)
        assert not torch.allclose(fresh.module(x), want)


def test_corrupt_weights_message_names_file(tmp_path):
    path = tmp_path / "broken-weights.pth"
    path.write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet20", weights=str(path), input_shape=SMALL)
    assert str(path) in info.value.message
    assert "corrupt" in info.value.message
    assert "\n" not in info.value.message


def test_truncated_weights(tmp_path):
    _, path = _saved_resnet20_weights(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=str(path.name)):
        load_model("resnet20", weights=str(path), input_shape=SMALL)


def test_weights_for_another_architecture(tmp_path):
    _, path = _saved_resnet20_weights(tmp_path)
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet56", weights=str(path), input_shape=SMALL)
    assert "does not fit" in info.value.message and str(path) in info.value.message


def test_weights_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ModelLoadError, match="no state dict"):
        load_model("resnet20", weights=str(path), input_shape=SMALL)


def test_missing_weights(tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model("resnet20", weights=str(path), input_shape=SMALL)


def test_weights_into_file_factory(tmp_path, factory_file):
    base = load_model(f"{factory_file}:tiny", input_shape=(3, 8, 8)).module
    with torch.no_grad():
        for p in base.parameters():
            p.mul_(-2.0)
    path = tmp_path / "tiny.pth"
    torch.save(base.state_dict(), path)
    loaded = load_model(f"{factory_file}:tiny", weights=str(path), input_shape=(3, 8, 8))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), base(x))
