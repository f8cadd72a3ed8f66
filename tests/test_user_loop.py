"""Bring your own loop (issue 16 item 3): train_fn / eval_fn through the Python API and module paths, the
user's datasets through --data pkg.module:factory, and one-line refusals of what they get wrong."""
from __future__ import annotations

import copy
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import edgeprune
from edgeprune import BuildConfig
from edgeprune.data import load_data
from edgeprune.errors import ConfigError
from edgeprune.training.trainer import (BUILT_IN_METRIC, DeployedModel, Trainer, load_callable, run_eval_fn,
                                        run_train_fn)

USER_MODULE = textwrap.dedent('''
    import torch
    from torch.utils.data import TensorDataset

    calls = []

    def train_fn(model, epochs):
        calls.append((type(model).__name__, epochs))
        return model

    def broken_train_fn(model, epochs):
        raise RuntimeError("CUDA out of memory\\nmore detail")

    def widening_train_fn(model, epochs):
        import torch.nn as nn
        return nn.Sequential(nn.Conv2d(1, 99, 3), nn.Flatten())

    def eval_fn(model):
        return 42.5

    def digits_factory():
        from sklearn.datasets import load_digits
        d = load_digits()
        x = torch.from_numpy(d.images[:300].astype("float32") / 16).unsqueeze(1)
        y = torch.from_numpy(d.target[:300].astype("int64"))
        return TensorDataset(x[:240], y[:240]), TensorDataset(x[240:], y[240:])

    def not_a_pair():
        return [1, 2, 3]
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "edgeprune_user_hooks.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("edgeprune_user_hooks", None)
    return importlib.import_module("edgeprune_user_hooks")


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


def test_train_fn_errors_are_one_line():
    def raises(model, epochs):
        raise ValueError("bad batch\nstack")

    with pytest.raises(ConfigError, match=r"train_fn t raised ValueError: bad batch$"):
        run_train_fn(raises, "t", net(), 1)
    with pytest.raises(ConfigError, match="returned None"):
        run_train_fn(lambda m, e: None, "t", net(), 1)
    with pytest.raises(ConfigError, match="returned a dict"):
        run_train_fn(lambda m, e: {}, "t", net(), 1)


def test_a_different_model_is_refused():
    def other(model, epochs):
        return nn.Sequential(nn.Conv2d(1, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    with pytest.raises(ConfigError, match=r"different model \(0.weight is \[8, 1, 3, 3\], was \[4, 1, 3, 3\]\)"):
        run_train_fn(other, "t", net(), 1)

    def in_place_swap(model, epochs):
        model[3] = nn.Linear(4, 11)
        return model

    with pytest.raises(ConfigError, match="different model"):
        run_train_fn(in_place_swap, "t", net(), 1)


def test_a_copy_with_the_same_layers_gives_its_weights():
    def trains_a_copy(model, epochs):
        twin = copy.deepcopy(model)
        with torch.no_grad():
            for p in twin.parameters():
                p.add_(1.0)
        return twin.train()

    model = net()
    before = [p.clone() for p in model.parameters()]
    out = run_train_fn(trains_a_copy, "t", model, 2)
    assert out is model and not model.training
    assert all(torch.allclose(p, b + 1.0) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("value,match", [("high", "not a number"), (float("nan"), "finite"), (None, "not a number")])
def test_eval_fn_must_return_a_number(value, match):
    with pytest.raises(ConfigError, match=match):
        run_eval_fn(lambda m: value, "e", net())


def test_load_callable_refusals(user_module):
    assert load_callable("edgeprune_user_hooks:eval_fn", "eval-fn")(None) == 42.5
    for spec, match in [("nocolon", "malformed"), ("edgeprune_no_such_module:f", "cannot import"),
                        ("edgeprune_user_hooks:missing", "has no missing"), ("edgeprune_user_hooks:calls", "not a function")]:
        with pytest.raises(ConfigError, match=match):
            load_callable(spec, "train-fn")


def test_metric_is_labelled_as_the_users(user_module):
    assert Trainer().metric == BUILT_IN_METRIC
    cfg = BuildConfig(eval_fn="edgeprune_user_hooks:eval_fn", train_device="cpu")
    assert Trainer.from_config(cfg).metric == "user: edgeprune_user_hooks:eval_fn"
    assert Trainer.from_config(BuildConfig(), eval_fn=user_module.eval_fn).metric == \
        "user: edgeprune_user_hooks:eval_fn"


def test_deployed_model_runs_through_the_runner():
    class FakeRunner:
        def infer(self, deployed, x):
            assert deployed == "artifact" and x.dtype == np.float32
            return x.sum(axis=(1, 2, 3), keepdims=False)[:, None] * np.ones((1, 3), np.float32)

    session = DeployedModel(FakeRunner(), "artifact")
    out = session(torch.ones(2, 1, 2, 2))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3) and float(out[0, 0]) == 4.0
    assert session.eval() is session


def test_data_factory(user_module):
    data = load_data("edgeprune_user_hooks:digits_factory", None)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10 and len(data.train) == 240
    with pytest.raises(ConfigError, match="gives 1,8,8 images but the input shape is 3,8,8"):
        load_data("edgeprune_user_hooks:digits_factory", (3, 8, 8))
    with pytest.raises(ConfigError, match=r"must return \(train, val\)"):
        load_data("edgeprune_user_hooks:not_a_pair", None)
    with pytest.raises(ConfigError, match="unknown data"):
        load_data("not a spec", None)


BUILD = dict(model="resnet20", train_epochs=1, finetune_epochs=1, max_iterations=1, measure_blocks=2,
             measure_iters=20, max_accuracy_drop=50.0, train_device="cpu")


@pytest.mark.slow
def test_build_with_the_users_loop_and_metric(user_module, tmp_path):
    cfg = BuildConfig(**BUILD, data="edgeprune_user_hooks:digits_factory", out=str(tmp_path / "out"))
    result = edgeprune.build(cfg, train_fn=user_module.train_fn, eval_fn=user_module.eval_fn)
    assert user_module.calls == [("CifarResNet", 1)]  # the pruned model, once, with the epochs asked for
    it = result.report["iterations"]
    assert all(i["accuracy"] == 42.5 and i["accuracy_metric"] == "user: edgeprune_user_hooks:eval_fn" for i in it)
    assert it[1]["recovery"]["train_fn"] == "edgeprune_user_hooks:train_fn"
    assert result.report["data"]["input_shape"] == [1, 8, 8]


@pytest.mark.slow
@pytest.mark.parametrize("fn", ["broken_train_fn", "widening_train_fn"])
def test_cli_refuses_a_failing_train_fn_in_one_line(user_module, tmp_path, fn):
    from click.testing import CliRunner

    from edgeprune.cli import main

    args = ["build", "--out", str(tmp_path / "out"), "--train-fn", f"edgeprune_user_hooks:{fn}"]
    for k, v in BUILD.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    result = CliRunner().invoke(main, [*args, "--input-shape", "1,8,8", "--quiet"])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "train_fn" in result.output
    assert not (tmp_path / "out").exists()


def test_reports_label_the_users_metric_as_theirs():
    """report.md / report.html: a score from the user's eval_fn is not shown as edgeprune's top-1 percent."""
    from synthetic_reports import make_report

    from edgeprune.report.html import render_html
    from edgeprune.report.markdown import render_report
    from edgeprune.report.schema import migrate

    r = migrate(make_report())
    builtin_md = render_report(r)
    assert "accuracy (ONNX artifact, val)" in builtin_md and "user:" not in builtin_md
    for it in r["iterations"]:
        it.update(accuracy=0.8125, accuracy_metric="user: team.metrics:mean_iou")
    r["final"]["accuracy"] = 0.8125
    md, page = render_report(r), render_html(r)
    assert "| score (user: team.metrics:mean_iou, ONNX artifact) | 0.8125 | 0.8125 |" in md
    assert "team.metrics:mean_iou's score of the ONNX artifact (the user's metric" in md
    assert "0.81%" not in md and "top-1 of the ONNX artifact" not in md
    assert "score (user: team.metrics:mean_iou, ONNX artifact)" in page and "0.81%" not in page
