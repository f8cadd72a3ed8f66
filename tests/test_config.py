from __future__ import annotations

import dataclasses

import pytest

from edgeprune.config import PERCENTILES, BuildConfig, LatencyBudget, parse_budget, parse_shape
from edgeprune.errors import ConfigError, EdgepruneError


# -- latency budget -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, value", [
    ("0.5x", "relative", 0.5),
    (" 0.25 x ", "relative", 0.25),
    ("3ms", "absolute", 3.0),
    ("2.5 ms", "absolute", 2.5),
    ("3", "absolute", 3.0),
    (3, "absolute", 3.0),
    (1.5, "absolute", 1.5),
    ("1e-1x", "relative", 0.1),
    (".75x", "relative", 0.75),
])
def test_parse_budget_accepts(text, kind, value):
    b = parse_budget(text)
    assert b.kind == kind
    assert b.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "x", "ms", "fast", "0.5 y", "3 s", "3msx", "-1", "-0.5x", "1,5ms", "0.5xx",
                                  "nan", "inf"])
def test_parse_budget_rejects_malformed(text):
    with pytest.raises(ConfigError, match="malformed"):
        parse_budget(text)


@pytest.mark.parametrize("text", ["0", "0x", "0ms", "0.0x", "0e5ms", 0])
def test_parse_budget_rejects_zero(text):
    with pytest.raises(ConfigError, match="greater than zero"):
        parse_budget(text)


def test_budget_target_and_str_roundtrip():
    rel, ab = parse_budget("0.5x"), parse_budget("4ms")
    assert rel.target_ms(10.0) == pytest.approx(5.0)
    assert ab.target_ms(10.0) == pytest.approx(4.0)  # absolute ignores the baseline
    assert ab.target_ms(1.0) == pytest.approx(4.0)
    for b in (rel, ab, LatencyBudget("relative", 0.125)):
        assert parse_budget(str(b)) == b


def test_config_error_is_actionable():
    with pytest.raises(EdgepruneError) as info:
        parse_budget("soon")
    assert info.value.exit_code != 0
    assert "'soon'" in info.value.message
    assert "\n" not in info.value.message


# -- BuildConfig validation -----------------------------------------------------------------------------------
def test_defaults_are_valid():
    cfg = BuildConfig()
    assert cfg.budget == parse_budget(cfg.latency_budget)
    assert cfg.percentile in PERCENTILES


def test_budget_none_means_the_default_unless_another_budget_is_given():
    assert BuildConfig(latency_budget=None).latency_budget == "0.5x"
    assert BuildConfig(latency_budget=None, max_accuracy_drop=0.5).budget is None


@pytest.mark.parametrize("changes, fragment", [
    ({"latency_budget": "half"}, "malformed"),
    ({"latency_budget": "0x"}, "greater than zero"),
    ({"percentile": "p95"}, "percentile"),
    ({"batch_size": 0}, "batch-size"),
    ({"max_iterations": 0}, "max-iterations"),
    ({"measure_blocks": 0}, "measure-blocks"),
    ({"measure_iters": -3}, "measure-iters"),
    ({"finetune_epochs": -1}, "finetune-epochs"),
    ({"train_epochs": -1}, "train-epochs"),
    ({"threads": 0}, "threads"),
    ({"input_shape": (3, 32)}, "C,H,W"),
    ({"input_shape": (3, 0, 32)}, "C,H,W"),
    ({"input_shape": (1, 3, 32, 32)}, "C,H,W"),
])
def test_invalid_values_raise_config_error(changes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        BuildConfig(**changes)


def test_zero_epochs_allowed():
    cfg = BuildConfig(finetune_epochs=0, train_epochs=0)
    assert cfg.finetune_epochs == 0


def test_replace_revalidates():
    cfg = BuildConfig()
    assert cfg.replace(batch_size=4).batch_size == 4
    assert cfg.batch_size == 1  # frozen: replace returns a new one
    with pytest.raises(ConfigError):
        cfg.replace(percentile="p42")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 2  # type: ignore[misc]


def test_input_shape_normalized_to_int_tuple():
    cfg = BuildConfig(input_shape=[3, "32", 32.0])
    assert cfg.input_shape == (3, 32, 32)
    assert all(type(s) is int for s in cfg.input_shape)


@pytest.mark.parametrize("changes", [{"batch_size": "abc"}, {"threads": "two"}, {"input_shape": ("a", 1, 1)}])
def test_non_numeric_values_raise_config_error(changes):
    with pytest.raises(ConfigError):
        BuildConfig(**changes)


# -- shapes ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["3,224,224", "3x224x224", "3 224 224", " 3, 224 ,224 "])
def test_parse_shape(text):
    assert parse_shape(text) == (3, 224, 224)


def test_parse_shape_malformed():
    with pytest.raises(ConfigError, match="malformed"):
        parse_shape("3,a,4")


# -- from_dict / from_yaml ------------------------------------------------------------------------------------
def test_from_dict_dash_keys_and_shape_string():
    cfg = BuildConfig.from_dict({"latency-budget": "2ms", "input-shape": "1,16,16", "measure-iters": 7,
                                 "model": "resnet56"})
    assert cfg.latency_budget == "2ms"
    assert cfg.budget == LatencyBudget("absolute", 2.0)
    assert cfg.input_shape == (1, 16, 16)
    assert cfg.measure_iters == 7
    assert cfg.model == "resnet56"


def test_from_dict_unknown_keys_listed():
    with pytest.raises(ConfigError) as info:
        BuildConfig.from_dict({"modle": "resnet20", "batch-sise": 2})
    msg = info.value.message
    assert "modle" in msg and "batch_sise" in msg
    assert "model" in msg.split("known keys")[1]  # the known keys are listed for the user


def test_from_dict_extra_is_not_a_key():
    with pytest.raises(ConfigError, match="unknown"):
        BuildConfig.from_dict({"extra": {}})


def test_to_dict_roundtrip():
    cfg = BuildConfig(model="torchvision:resnet18", input_shape=(3, 64, 64), latency_budget="1.5ms", threads=2)
    d = cfg.to_dict()
    assert d["input_shape"] == [3, 64, 64]
    assert "extra" not in d
    assert BuildConfig.from_dict(d) == cfg


def test_from_yaml(tmp_path):
    p = tmp_path / "build.yaml"
    p.write_text("model: resnet56\nlatency-budget: 0.7x\ninput_shape: [1, 16, 16]\nseed: 3\n")
    cfg = BuildConfig.from_yaml(p)
    assert (cfg.model, cfg.latency_budget, cfg.input_shape, cfg.seed) == ("resnet56", "0.7x", (1, 16, 16), 3)


def test_from_yaml_overrides_win_and_none_is_ignored(tmp_path):
    p = tmp_path / "build.yaml"
    p.write_text("model: resnet56\nseed: 3\n")
    cfg = BuildConfig.from_yaml(p, seed=9, model=None)
    assert cfg.seed == 9
    assert cfg.model == "resnet56"


def test_from_yaml_empty_file_gives_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert BuildConfig.from_yaml(p) == BuildConfig()


def test_from_yaml_unknown_key(tmp_path):
    p = tmp_path / "build.yaml"
    p.write_text("model: resnet20\nlatency: 3ms\n")
    with pytest.raises(ConfigError, match="latency"):
        BuildConfig.from_yaml(p)


def test_from_yaml_malformed(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: [resnet20\nseed: 1\n")
    with pytest.raises(ConfigError) as info:
        BuildConfig.from_yaml(p)
    assert "not valid YAML" in info.value.message
    assert str(p) in info.value.message
    assert "\n" not in info.value.message


def test_from_yaml_not_a_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- model\n- resnet20\n")
    with pytest.raises(ConfigError, match="mapping"):
        BuildConfig.from_yaml(p)


def test_from_yaml_missing_file(tmp_path):
    p = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        BuildConfig.from_yaml(p)
    assert "does not exist" in info.value.message and str(p) in info.value.message


def test_from_yaml_bad_value(tmp_path):
    p = tmp_path / "build.yaml"
    p.write_text("latency_budget: 0ms\n")
    with pytest.raises(ConfigError, match="greater than zero"):
        BuildConfig.from_yaml(p)
