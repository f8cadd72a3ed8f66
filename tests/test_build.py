"""End to end: edgeprune.build() with a fast config (resnet20 at 16x16 on digits, one training epoch, short
timing), its artifacts, its report, its errors and the atomicity of the output directory.

One successful build is shared by the tests that only read it (module fixture `built`)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeprune
from edgeprune import BuildConfig
from edgeprune.errors import BudgetNotMet, ConfigError, EdgepruneError, ModelLoadError
from edgeprune.files import verify_manifest
from edgeprune.targets.devices import DEVICES_DIR, read_jetson_model

pytestmark = pytest.mark.usefixtures("edgeprune_cache")

FAST = dict(model="resnet20", input_shape=(1, 16, 16), train_epochs=1, finetune_epochs=0, max_iterations=3,
            measure_blocks=2, measure_iters=20)
ARTIFACTS = {"model.onnx", "model.pt", "report.json", "report.md", "manifest.json"}

REPORT_KEYS = {"schema_version", "tool", "created", "budget_met", "stop_reason", "policy", "budget", "config",
               "device", "host", "runner", "versions", "model", "data", "iterations", "final", "elapsed_s",
               "precision"}
ITERATION_KEYS = {"index", "kind", "ratio", "step_reason", "widths", "params", "macs", "param_bytes", "latency_ms",
                  "latency", "latency_ratio", "baseline_latency_paired", "budget_met", "memory", "accuracy",
                  "accuracy_source", "parity", "export", "recovery", "selected", "elapsed_s", "precision",
                  "quantization", "precision_parity"}
FINAL_KEYS = {"index", "budget_met", "ratio", "params", "macs", "latency_ms", "percentile", "baseline_latency_ms",
              "latency_ratio", "target_ms", "target_ratio", "speedup", "macs_reduction", "params_reduction",
              "speedup_per_macs_reduction", "accuracy", "baseline_accuracy", "accuracy_drop", "memory", "parity",
              "precision", "quantization", "precision_parity"}
STATS_KEYS = {"n", "warmup", "blocks", "mean", "p50", "p90", "p99", "min", "mad", "block_medians", "spread",
              "batch_size", "runtime", "threads", "versions", "extra"}
VERSION_KEYS = {"python", "torch", "torchvision", "torch_pruning", "onnx", "onnxruntime", "numpy"}


def fast(out: Path, **changes) -> BuildConfig:
    return BuildConfig(**{**FAST, "out": str(out), **changes})


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(parent: Path, name: str) -> list[str]:
    """Staging (.NAME.partial-*) and swap (.NAME.old-*) directories a build left beside its output."""
    return sorted(p.name for p in Path(parent).iterdir() if p.name.startswith(f".{name}."))


def snapshot(directory: Path) -> dict[str, str]:
    return {p.name: sha256(p) for p in sorted(Path(directory).iterdir())}


def ort_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else len(x)
    outs = [sess.run(None, {inp.name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def digits_val(shape=(1, 16, 16)) -> tuple[np.ndarray, np.ndarray]:
    from edgeprune.data import load_data

    data = load_data("digits", shape, seed=0)
    xs, ys = zip(*[(x, y) for x, y in data.loader("val", 128)])
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


# -- one successful build, shared ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(edgeprune_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "out"
    result = edgeprune.build(fast(out, latency_budget="0.9x"))
    report = json.loads((out / "report.json").read_text())
    return result, out, report


def attempts(report):
    return [it for it in report["iterations"] if it["index"] > 0]


@pytest.mark.slow
def test_build_result_points_at_the_output(built):
    result, out, report = built
    assert result.budget_met is True
    assert Path(result.out) == out.resolve()
    assert result.stop_reason == report["stop_reason"]
    assert {n: Path(p).name for n, p in result.artifacts.items()} == {n: n for n in ARTIFACTS - {"manifest.json"}}


@pytest.mark.slow
def test_output_holds_exactly_the_artifacts_and_no_staging_leftovers(built):
    _, out, _ = built
    assert {p.name for p in out.iterdir()} == ARTIFACTS
    assert leftovers(out.parent, out.name) == []
    assert (out / "report.md").read_text().startswith("# edgeprune build: resnet20 on cpu")


@pytest.mark.slow
def test_manifest_hashes_every_other_file_and_verifies(built):
    _, out, report = built
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == ARTIFACTS - {"manifest.json"}
    for name, info in manifest["files"].items():
        assert info["sha256"] == sha256(out / name)
        assert info["bytes"] == (out / name).stat().st_size
    assert verify_manifest(out) == []
    assert manifest["schema_version"] == 2
    assert manifest["budget_met"] is True
    assert manifest["device"] == "cpu"
    assert manifest["created"] == report["created"]
    assert manifest["versions"] == report["versions"]


@pytest.mark.slow
def test_verify_manifest_flags_changed_and_missing_files(built, tmp_path):
    _, out, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "report.md", "a") as fh:
        fh.write("edited\n")
    (copy / "model.pt").unlink()
    assert sorted(verify_manifest(copy)) == ["model.pt", "report.md"]


@pytest.mark.slow
def test_report_has_the_documented_schema(built):
    _, out, report = built
    assert REPORT_KEYS <= set(report)
    assert report["schema_version"] == 2
    assert report["budget_met"] is True
    assert isinstance(report["stop_reason"], str) and report["stop_reason"]
    assert report["policy"] == "latency-sensitive"
    assert report["tool"]["name"] == "edgeprune"
    assert report["budget"]["spec"] == "0.9x" and report["budget"]["kind"] == "relative"
    assert report["budget"]["target_ratio"] == pytest.approx(0.9)
    assert report["config"] == fast(out, latency_budget="0.9x").to_dict()
    assert report["device"]["name"] == "cpu"
    assert report["device"]["channel_multiple"] >= 1  # "auto" resolved
    assert {"cpu_model", "cpu_cores", "onnxruntime", "ort_providers", "torch", "jetson_model"} <= set(report["host"])
    assert VERSION_KEYS <= set(report["versions"])
    assert report["model"]["name"] == "resnet20" and report["model"]["source"] == "zoo"
    assert report["model"]["input_shape"] == [1, 16, 16] and report["model"]["num_classes"] == 10
    assert report["data"]["name"] == "digits" and report["data"]["classes"] == 10
    assert FINAL_KEYS <= set(report["final"])
    for it in report["iterations"]:
        assert ITERATION_KEYS <= set(it)
    assert [it["index"] for it in report["iterations"]] == list(range(len(report["iterations"])))


@pytest.mark.slow
def test_iteration_zero_is_the_measured_baseline(built):
    _, _, report = built
    base = report["iterations"][0]
    assert base["kind"] == "baseline" and base["ratio"] == 0
    assert base["accuracy"] is not None and 10.0 < base["accuracy"] <= 100.0  # trained: better than chance
    assert base["latency_ratio"] is None and base["baseline_latency_paired"] is None
    assert STATS_KEYS <= set(base["latency"])
    assert base["latency_ms"] == base["latency"]["p50"] > 0
    assert base["parity"]["ok"] is True
    assert report["final"]["baseline_accuracy"] == base["accuracy"]


@pytest.mark.slow
def test_every_attempt_is_measured_against_the_baseline_and_exports_faithfully(built):
    _, _, report = built
    base = report["iterations"][0]
    tried = attempts(report)
    assert 1 <= len(tried) <= FAST["max_iterations"]
    for it in tried:
        assert it["kind"] == "attempt"
        assert 0 < it["ratio"] < 1
        assert STATS_KEYS <= set(it["latency"]) and STATS_KEYS <= set(it["baseline_latency_paired"])
        assert it["latency"]["n"] > 0 and it["latency"]["p50"] > 0
        assert {"ratio", "low", "high", "pairs"} <= set(it["latency_ratio"])
        assert it["latency_ratio"]["low"] <= it["latency_ratio"]["ratio"] <= it["latency_ratio"]["high"]
        assert it["params"] <= base["params"] and it["macs"] <= base["macs"]
        assert set(it["widths"]) == set(base["widths"])
        assert all(it["widths"][k] <= base["widths"][k] for k in base["widths"])
        assert it["parity"]["ok"] is True and it["parity"]["samples"] > 0
        assert it["accuracy"] is not None
        assert it["recovery"]["bn_recalibration"] is True
        # a relative budget is judged on the paired ratio
        assert it["budget_met"] == (it["latency_ratio"]["ratio"] <= report["budget"]["target_ratio"])
    # the policy never builds the same widths twice
    widths = [tuple(sorted(it["widths"].items())) for it in tried]
    assert len(set(widths)) == len(widths)


@pytest.mark.slow
def test_the_shipped_attempt_is_pruned_selected_and_meets_the_budget(built):
    _, _, report = built
    base, final = report["iterations"][0], report["final"]
    selected = [it["index"] for it in report["iterations"] if it["selected"]]
    assert selected == [final["index"]]
    shipped = report["iterations"][final["index"]]
    assert final["index"] >= 1 and shipped["budget_met"] is True
    assert shipped["params"] < base["params"] and shipped["macs"] < base["macs"]
    assert final["latency_ratio"] == pytest.approx(shipped["latency_ratio"]["ratio"])
    assert final["latency_ratio"] <= final["target_ratio"]
    assert final["macs_reduction"] == pytest.approx(base["macs"] / shipped["macs"])
    assert final["accuracy"] == shipped["accuracy"]
    assert final["accuracy_drop"] == pytest.approx(base["accuracy"] - shipped["accuracy"])
    # the most accurate attempt that meets the budget (one validation image = resolution)
    resolution = 100.0 / report["data"]["val"]
    met = [it for it in attempts(report) if it["budget_met"]]
    assert shipped["accuracy"] >= max(it["accuracy"] for it in met) - resolution - 1e-9


@pytest.mark.slow
def test_model_pt_loads_back_and_matches_the_onnx(built):
    from edgeprune.models import load_model

    _, out, report = built
    loaded = load_model(str(out / "model.pt"))
    assert loaded.input_shape == (1, 16, 16) and loaded.num_classes == 10
    convs = {n: m.out_channels for n, m in loaded.module.named_modules() if isinstance(m, torch.nn.Conv2d)}
    shipped = report["iterations"][report["final"]["index"]]
    assert {k: convs[k] for k in shipped["widths"]} == shipped["widths"]

    x, y = digits_val()
    with torch.no_grad():
        torch_out = loaded.module.eval()(torch.from_numpy(x)).numpy()
    onnx_out = ort_logits(out / "model.onnx", x)
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4, rtol=1e-3)
    # the accuracy in the report is the shipped ONNX artifact's on the validation split
    assert 100.0 * float((onnx_out.argmax(1) == y).mean()) == pytest.approx(report["final"]["accuracy"])


# -- determinism ---------------------------------------------------------------------------------------------

# One attempt whose verdict involves no timing: under the accuracy-critical policy every attempt is fine-tuned,
# whereas under a latency budget whether it is (only attempts under budget are) would depend on the clock.
DETERMINISTIC = dict(max_accuracy_drop=100.0, max_iterations=1, finetune_epochs=1)


def _build_anyway(config: BuildConfig) -> dict:
    """Build; an unmet budget still writes the single attempt (marked budget_met: false)."""
    try:
        edgeprune.build(config)
    except BudgetNotMet:
        pass
    return json.loads((Path(config.out) / "report.json").read_text())


@pytest.fixture(scope="module")
def warm_pair(built, tmp_path_factory):
    """The same config and seed built twice, the trained weights coming from the session's cache both times."""
    root = tmp_path_factory.mktemp("deterministic")
    return [(root / n, _build_anyway(fast(root / n, **DETERMINISTIC))) for n in ("a", "b")]


@pytest.mark.slow
def test_same_config_and_seed_give_a_byte_identical_onnx(warm_pair):
    """Pruning, seeded fine-tuning, export and cleanup are deterministic."""
    (a_dir, a), (b_dir, b) = warm_pair
    assert a["model"]["training"]["cache"] == b["model"]["training"]["cache"]
    first, second = a["iterations"][1], b["iterations"][1]
    assert first["params"] < a["iterations"][0]["params"]
    assert first["recovery"]["finetune_epochs"] == 1
    assert first["widths"] == second["widths"] and first["accuracy"] == second["accuracy"]
    assert sha256(a_dir / "model.onnx") == sha256(b_dir / "model.onnx")


@pytest.mark.slow
def test_same_config_and_seed_give_a_byte_identical_onnx_with_a_cold_cache(warm_pair, tmp_path, monkeypatch):
    (a_dir, a), _ = warm_pair
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "empty-cache"))
    cold = _build_anyway(fast(tmp_path / "out", **DETERMINISTIC))
    assert cold["model"]["training"]["cached"] is False
    assert cold["iterations"][0]["accuracy"] == a["iterations"][0]["accuracy"]
    assert sha256(tmp_path / "out" / "model.onnx") == sha256(a_dir / "model.onnx")


# -- budget not met -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_unreachable_budget_keeps_the_best_attempt_and_raises_budget_not_met(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(BudgetNotMet) as info:
        edgeprune.build(fast(out, latency_budget="0.01x", max_iterations=2))
    err = info.value
    assert err.exit_code == 3
    assert err.result.budget_met is False
    assert "\n" not in err.message and str(out.resolve()) in err.message
    assert {p.name for p in out.iterdir()} == ARTIFACTS
    assert verify_manifest(out) == [] and leftovers(tmp_path, "out") == []
    report = json.loads((out / "report.json").read_text())
    assert json.loads((out / "manifest.json").read_text())["budget_met"] is False
    assert report["budget_met"] is False and report["final"]["budget_met"] is False
    tried = attempts(report)
    assert tried and not any(it["budget_met"] for it in tried)
    selected = [it for it in report["iterations"] if it["selected"]]
    assert len(selected) == 1 and selected[0]["index"] == report["final"]["index"] >= 1
    # the fastest attempt is kept
    assert selected[0]["latency_ratio"]["ratio"] == min(it["latency_ratio"]["ratio"] for it in tried)


# -- the output directory is replaced only by a build that finishes --------------------------------------------

@pytest.fixture
def previous_out(built, tmp_path):
    """A copy of a finished build's output directory, as a previous run would have left it."""
    _, out, _ = built
    target = tmp_path / "out"
    shutil.copytree(out, target)
    return target


@pytest.mark.slow
def test_a_finished_build_replaces_the_previous_output(previous_out):
    (previous_out / "stale.txt").write_text("from an older build")  # listed in its manifest: edgeprune's own
    manifest = json.loads((previous_out / "manifest.json").read_text())
    manifest["files"]["stale.txt"] = {"sha256": sha256(previous_out / "stale.txt")}
    (previous_out / "manifest.json").write_text(json.dumps(manifest))
    result = edgeprune.build(fast(previous_out, latency_budget="2x"))  # the unpruned model meets it: no attempts
    assert result.budget_met is True
    assert {p.name for p in previous_out.iterdir()} == ARTIFACTS
    assert verify_manifest(previous_out) == []
    report = json.loads((previous_out / "report.json").read_text())
    assert report["budget"]["spec"] == "2x"
    assert len(report["iterations"]) == 1 and report["final"]["index"] == 0 and report["iterations"][0]["selected"]
    assert leftovers(previous_out.parent, "out") == []


@pytest.mark.slow
def test_a_build_failing_while_writing_leaves_the_previous_output_intact(previous_out, monkeypatch):
    import edgeprune.report.markdown as markdown

    before = snapshot(previous_out)

    def broken(report):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(markdown, "render_report", broken)  # fails after model.onnx, model.pt, report.json
    with pytest.raises(OSError):
        edgeprune.build(fast(previous_out, latency_budget="2x"))
    assert snapshot(previous_out) == before
    assert verify_manifest(previous_out) == []
    assert leftovers(previous_out.parent, "out") == []


def test_a_build_failing_on_input_leaves_the_previous_output_intact(previous_out):
    before = snapshot(previous_out)
    with pytest.raises(ModelLoadError):
        edgeprune.build(fast(previous_out, model="no-such-model"))
    assert snapshot(previous_out) == before
    assert leftovers(previous_out.parent, "out") == []


# -- bad inputs: an EdgepruneError, exit code 2, and nothing written --------------------------------------------

FACTORIES = '''
import torch
from torch import nn


class Raises(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)

    def forward(self, x):
        raise RuntimeError("forward is broken")


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.fc(self.conv(x).mean((2, 3)))
        return y, y


class NoLayers(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]


def raises():
    return Raises()


def pair():
    return Pair()


def no_layers():
    return NoLayers()


def not_a_module():
    return 42
'''


def _factories(tmp: Path) -> Path:
    path = tmp / "factories.py"
    path.write_text(FACTORIES)
    return path


def _garbage_weights(tmp: Path) -> str:
    path = tmp / "weights.pt"
    path.write_bytes(b"\x80\x02this is not a checkpoint" * 10)
    return str(path)


def _mismatched_weights(tmp: Path) -> str:
    path = tmp / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    return str(path)


def _state_dict_as_model(tmp: Path) -> str:
    path = tmp / "state.pt"
    torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    return str(path)


def _dict_as_model(tmp: Path) -> str:
    path = tmp / "config.pt"
    torch.save({"lr": 0.1, "epochs": 3}, path)
    return str(path)


BAD_INPUTS = {
    "unknown model": (ModelLoadError, lambda tmp: {"model": "no-such-model"}),
    "unknown torchvision model": (ModelLoadError, lambda tmp: {"model": "torchvision:no_such_net"}),
    "missing model file": (ModelLoadError, lambda tmp: {"model": str(tmp / "missing.pt")}),
    "unknown device": (ConfigError, lambda tmp: {"device": "no-such-device"}),
    "jetson on a non-Jetson host": (ConfigError, lambda tmp: {"device": "jetson"}),
    "jetson device not measurable here": (EdgepruneError, lambda tmp: {"device": "jetson-orin-nano"}),
    "malformed budget": (ConfigError, lambda tmp: {"latency_budget": "fast"}),
    "zero budget": (ConfigError, lambda tmp: {"latency_budget": "0x"}),
    "negative budget": (ConfigError, lambda tmp: {"latency_budget": "-1ms"}),
    "memory policy without a memory budget": (ConfigError, lambda tmp: {"policy": "memory-constrained"}),
    "unknown data": (ConfigError, lambda tmp: {"data": "mnist"}),
    "corrupt weights": (ModelLoadError, lambda tmp: {"weights": _garbage_weights(tmp)}),
    "weights of another model": (ModelLoadError, lambda tmp: {"weights": _mismatched_weights(tmp)}),
    "missing weights": (ModelLoadError, lambda tmp: {"weights": str(tmp / "nowhere.pt")}),
    "factory forward raises": (ModelLoadError, lambda tmp: {"model": f"{_factories(tmp)}:raises"}),
    "factory returns a tuple": (ModelLoadError, lambda tmp: {"model": f"{_factories(tmp)}:pair"}),
    "factory returns no module": (ModelLoadError, lambda tmp: {"model": f"{_factories(tmp)}:not_a_module"}),
    "factory name missing": (ModelLoadError, lambda tmp: {"model": f"{_factories(tmp)}:nope"}),
    "factory without prunable layers": (ModelLoadError, lambda tmp: {"model": f"{_factories(tmp)}:no_layers"}),
    ".pt holding a state dict": (ModelLoadError, lambda tmp: {"model": _state_dict_as_model(tmp)}),
    ".pt holding a plain dict": (ModelLoadError, lambda tmp: {"model": _dict_as_model(tmp)}),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_and_writes_nothing(case, tmp_path):
    expected, changes = BAD_INPUTS[case]
    if case.startswith("jetson") and read_jetson_model():
        pytest.skip("this host is a Jetson")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out = tmp_path / "out"
    with pytest.raises(EdgepruneError) as info:
        edgeprune.build(fast(out), **changes(inputs))  # overrides go through build(), as the CLI's do
    err = info.value
    assert isinstance(err, expected) and not isinstance(err, BudgetNotMet)
    assert err.exit_code == 2
    assert err.message and "\n" not in err.message
    assert not out.exists()
    assert leftovers(tmp_path, "out") == []


def test_output_under_a_regular_file_is_refused(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    out = blocker / "out"
    with pytest.raises(ConfigError) as info:
        edgeprune.build(fast(out))
    assert "not writable" in info.value.message
    assert blocker.read_text() == "a file, not a directory"
    assert leftovers(tmp_path, "blocker") == []


def test_output_that_is_a_file_is_refused_and_left_alone(tmp_path):
    out = tmp_path / "out"
    out.write_text("keep me")
    with pytest.raises(ConfigError):
        edgeprune.build(fast(out))
    assert out.read_text() == "keep me"
    assert leftovers(tmp_path, "out") == []


def test_invalid_device_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nno_such_key: 1\n")
    with pytest.raises(ConfigError):
        edgeprune.build(fast(tmp_path / "out", device=str(bad)))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path, "out") == []


# -- a known defect -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_attempt_is_smaller_than_the_baseline_at_channel_multiple_16(tmp_path):
    spec = (DEVICES_DIR / "cpu.yaml").read_text().replace("channel_multiple: auto", "channel_multiple: 16")
    device = tmp_path / "cpu16.yaml"
    device.write_text(spec.replace("name: cpu", "name: cpu16"))
    out = tmp_path / "out"
    try:
        edgeprune.build(fast(out, device=str(device), latency_budget="0.9x", max_iterations=1))
    except BudgetNotMet:
        pass
    report = json.loads((out / "report.json").read_text())
    assert report["device"]["channel_multiple"] == 16
    base = report["iterations"][0]
    for it in attempts(report):
        assert it["widths"] != base["widths"]
        assert it["params"] < base["params"] and it["macs"] < base["macs"]
