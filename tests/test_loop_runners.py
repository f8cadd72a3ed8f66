"""The build loop with the device's runner, whichever it is: what the GPU runners need beside each ONNX file
(model.pt for torch-cuda, a timing cache for TensorRT), the shipped engine, and the telemetry section of the
report, measured locally on a (stand-in) Jetson and on a host that is not one. What needs a GPU is exercised
through the runners' CPU-side code paths (loading model.pt, building options), which is what the loop feeds."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgeprune.config import BuildConfig
from edgeprune.targets.devices import resolve_device
from edgeprune.backends import get_runner
from edgeprune.errors import ConfigError
from edgeprune.backends.onnxrt.runner import OnnxRuntimeRunner
from edgeprune.backends.torch_cuda.runner import TorchCudaRunner
from edgeprune.backends.jetson.telemetry import MonitoredRunner
from edgeprune.pipeline import stages

from test_telemetry import fake_jetson  # noqa: F401  (fixture)

SHAPE = (1, 16, 16)


@pytest.fixture(scope="module")
def prepared():
    from edgeprune.data import load_data
    from edgeprune.models import load_model

    torch.manual_seed(0)
    data = load_data("digits", SHAPE, seed=0)
    return stages.Prepared(load_model("resnet20", input_shape=SHAPE, num_classes=10), data, None)


class TorchCudaOnCpu(OnnxRuntimeRunner):
    """Named torch-cuda: it loads the module exactly as the torch-cuda runner does (its CPU side), and runs the
    ONNX on the CPU for the parity check."""

    beside_onnx = TorchCudaRunner.beside_onnx

    def __init__(self):
        super().__init__()
        self.name = "torch-cuda"
        self.loaded = None

    def prepare(self, onnx_path, workdir):
        self.loaded = TorchCudaRunner()._load_module(Path(onnx_path))
        return super().prepare(onnx_path, workdir)


def test_each_export_for_torch_cuda_has_the_model_pt_it_loads(prepared, tmp_path):
    model = prepared.model.module.eval()
    runner = TorchCudaOnCpu()
    (tmp_path / "iter03").mkdir()
    exported = stages.export_stage(model, prepared, 1, tmp_path / "iter03" / "model.onnx", runner)
    assert exported.parity.ok
    module, source, saved_shape = runner.loaded
    assert source == tmp_path / "iter03" / "model.pt" and saved_shape == SHAPE
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(module(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    saved = torch.load(source, weights_only=True)  # no pickled code: spec, shape and tensors
    assert saved["name"] == "resnet20" and saved["spec"] == "resnet20" and saved["num_classes"] == 10


def test_exports_for_other_runners_write_no_model_pt(prepared, tmp_path):
    stages.export_stage(prepared.model.module.eval(), prepared, 1, tmp_path / "model.onnx", OnnxRuntimeRunner())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


@pytest.mark.parametrize("device", ["jetson-orin-nano", "x86-cuda"])
def test_tensorrt_runners_build_what_the_onnx_carries_with_a_timing_cache_for_the_whole_build(device, tmp_path):
    spec = resolve_device(device)
    context = stages.run_context(BuildConfig(device=device), None, spec, tmp_path)
    for name in ("tensorrt", "trtexec"):  # both take them; the loop builds them with get_runner
        built = get_runner(name, context=context, require_available=False)
        assert built.options.timing_cache == str(tmp_path / "tensorrt.timing-cache")
        # the device's fp16 is made by the precision stage (an fp16 ONNX), not asked of the builder
        assert spec.default_precision == "fp16" and built.options.precision == "fp32"


def test_the_device_default_precision_is_what_the_build_searches():
    from edgeprune.pipeline import precision

    trt = get_runner("tensorrt", require_available=False)
    assert precision.requested(None, resolve_device("jetson-orin-nano"), trt) == (["fp16"], {})
    assert precision.requested("auto", resolve_device("jetson-orin-nano"), trt)[0] == ["fp32", "fp16", "int8"]
    with pytest.raises(ConfigError, match="lists precisions fp32, fp16, int8, not fp8|unknown"):
        precision.requested("fp8", resolve_device("jetson-orin-nano"), trt)


def test_torch_cuda_times_fp32_and_says_why_reduced_precision_is_left_out(tmp_path):
    from dataclasses import replace

    from edgeprune.errors import RuntimeUnavailable
    from edgeprune.pipeline import precision

    spec = replace(resolve_device("x86-cuda"), runner="torch-cuda")
    context = stages.run_context(BuildConfig(device="x86-cuda"), None, spec, tmp_path)
    runner = get_runner("torch-cuda", context=context, require_available=False)
    assert runner.fp16 is False
    searched, left_out = precision.requested(None, spec, runner)  # the device's fp16 default
    assert searched == ["fp32"] and "times the PyTorch module" in left_out["fp16"]
    with pytest.raises(RuntimeUnavailable, match="precision int8: runner torch-cuda"):
        precision.requested("int8", spec, runner)


def test_the_cpu_runner_takes_threads_and_seed_from_the_build(tmp_path):
    context = stages.run_context(BuildConfig(seed=3), 1, resolve_device("cpu"), tmp_path)
    runner = get_runner("onnxruntime", context=context)
    assert (runner.threads, runner.seed) == (1, 3)


def test_get_runner_refuses_an_option_the_runner_does_not_take():
    with pytest.raises(ConfigError, match="runner tensorrt takes no option threads"):
        get_runner("tensorrt", require_available=False, threads=1)
    with pytest.raises(ConfigError, match="takes no option thread:"):
        get_runner("onnxruntime", thread=1)  # a misspelt option is an error, not silently the default


@pytest.mark.parametrize("name", ["tensorrt", "trtexec"])
def test_the_shipped_engine_and_its_sidecar_go_to_the_output(name, tmp_path):
    from edgeprune.backends import Deployed, runner_class

    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"serialized engine")
    (tmp_path / "model.fp16.engine.json").write_text('{"precision": "fp16"}')
    shipped = runner_class(name).shipped(Deployed(name, engine, "input", (1, 3, 8, 8)))
    assert shipped == {"model.engine": engine, "model.engine.json": tmp_path / "model.fp16.engine.json"}
    onnx = Deployed("onnxruntime", tmp_path / "model.onnx", "input", (1, 3, 8, 8))
    assert OnnxRuntimeRunner.shipped(onnx) == {}  # ONNX Runtime builds no engine
    assert runner_class(name).shipped(Deployed(name, tmp_path / "missing.engine", "input", (1,))) == {}


def test_on_this_host_the_monitor_records_nothing_and_says_why(monkeypatch):
    from edgeprune.backends.jetson import telemetry

    monkeypatch.setattr(telemetry, "unavailable_reason", lambda: "not a Jetson: test")
    prof = stages.profile_stage(BuildConfig())
    assert isinstance(prof.runner, MonitoredRunner) and not prof.runner.monitor.available
    assert prof.runner.telemetry() == {"available": False, "reason": "not a Jetson: test"}


@pytest.mark.slow
@pytest.mark.usefixtures("edgeprune_cache")
def test_a_build_on_a_jetson_reports_its_telemetry(fake_jetson, tmp_path):  # noqa: F811
    import edgeprune
    from edgeprune.errors import BudgetNotMet

    prof = stages.profile_stage(BuildConfig())
    assert isinstance(prof.runner, MonitoredRunner)
    out = tmp_path / "out"
    try:
        edgeprune.build(BuildConfig(model="resnet20", input_shape=SHAPE, train_epochs=1, finetune_epochs=0,
                                    max_iterations=1, measure_blocks=2, measure_iters=20, latency_budget="0.9x",
                                    out=str(out)))
    except BudgetNotMet:  # timing on a shared machine; the report is written all the same
        pass
    t = json.loads((out / "report.json").read_text())["telemetry"]
    assert t["available"] is True and t["source"] == "tegrastats"
    assert t["windows"] >= 3  # baseline, the attempt, the shipped artifact's confirmation
    assert t["clocks_locked"] is False and "sudo jetson_clocks" in t["warning"]
    assert t["power_mode"]["name"] == "15W" and t["power_mw"]["VDD_IN"]["max"] == 7412.0
    assert "- Jetson telemetry (tegrastats" in (out / "report.md").read_text()


@pytest.mark.parametrize("name, options, expected", [
    ("onnxruntime", {}, (1e-3, 1e-3)),
    ("onnxruntime-cuda", {}, (1e-2, 1e-2)),
    ("tensorrt", {}, (1e-2, 1e-2)),
    ("tensorrt", {"precision": "fp16"}, (5e-2, 5e-2)),
    ("trtexec", {"precision": "int8"}, (0.5, 0.25)),
    ("torch-cuda", {}, (1e-2, 1e-2)),
    ("torch-cuda", {"fp16": True}, (5e-2, 5e-2)),
])
def test_parity_tolerance_follows_the_runtimes_arithmetic(name, options, expected):
    assert get_runner(name, require_available=False, **options).parity_tolerance() == expected


class NoisyRuntime(OnnxRuntimeRunner):
    """ONNX Runtime with outputs off by 0.3% (as TF32 convolutions are), declaring a tolerance or not."""

    def __init__(self, tolerance=None):
        super().__init__()
        self.tolerance = tolerance

    def infer(self, deployed, batch):
        out = super().infer(deployed, batch)
        return out * 1.003 + 3e-3

    def parity_tolerance(self):
        return self.tolerance or super().parity_tolerance()


def test_the_parity_gate_uses_the_runners_tolerance(prepared, tmp_path):
    from edgeprune.errors import ParityError

    model = prepared.model.module.eval()
    with pytest.raises(ParityError, match="differs from PyTorch"):
        stages.export_stage(model, prepared, 1, tmp_path / "a.onnx", NoisyRuntime())
    exported = stages.export_stage(model, prepared, 1, tmp_path / "b.onnx", NoisyRuntime((1e-2, 1e-2)))
    assert exported.parity.ok and exported.parity.atol == 1e-2


def test_a_runner_that_cannot_run_gives_way_to_the_devices_fallback(caplog):
    from dataclasses import replace

    from edgeprune.errors import RuntimeUnavailable

    spec = replace(resolve_device("jetson-orin-nano"), fallback_runners=("trtexec", "onnxruntime"))

    def make(name):
        if name != "onnxruntime":
            raise RuntimeUnavailable(f"runner {name} cannot run here: not in this test")
        return OnnxRuntimeRunner()

    runner, fallback = stages.choose_runner(spec, make)
    assert isinstance(runner, OnnxRuntimeRunner)
    assert fallback == {"named": "tensorrt", "skipped": {"tensorrt": "runner tensorrt cannot run here: not in this test",
                                                         "trtexec": "runner trtexec cannot run here: not in this test"}}
    assert any("measuring with onnxruntime, its fallback" in r.getMessage() for r in caplog.records)
    assert stages.choose_runner(spec, lambda name: OnnxRuntimeRunner())[1] is None  # the named one ran
    with pytest.raises(RuntimeUnavailable, match="^no runner of device jetson-orin-nano can measure: runner "
                                                 "tensorrt cannot .*; runner trtexec cannot .*; runner onnxruntime"):
        stages.choose_runner(spec, lambda name: make(name + " ") if name == "onnxruntime" else make(name))


def test_a_jetson_with_trtexec_but_no_tensorrt_python_measures_with_its_fallback(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "trtexec").write_text("#!/bin/sh\nexit 1\n")  # JetPack's trtexec is there ...
    (bindir / "trtexec").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    device = tmp_path / "edge.yaml"  # ... but this device's own runner, TensorRT's Python API, is not
    device.write_text("name: edge\ndescription: test\nkind: host\nrunner: tensorrt\nfallback_runners: [onnxruntime]\n"
                      "precisions: [fp32]\ndefault_precision: fp32\nchannel_multiple: 8\nthreads: 1\n")
    prof = stages.profile_stage(BuildConfig(device=str(device)))
    assert prof.runner.name == "onnxruntime"
    assert prof.fallback["named"] == "tensorrt" and "TensorRT is not installed" in prof.fallback["skipped"]["tensorrt"]
