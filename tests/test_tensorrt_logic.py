"""TensorRT logic that needs no GPU: build plans per TensorRT version, engine sidecars, trtexec command lines and
output parsing, the timing schedule, and build_engine / TrtexecRunner driven through stand-ins for the tensorrt
module and the trtexec binary (so the API calls and the subprocess plumbing are checked on every host)."""
from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeprune.errors import ConfigError, EdgepruneError, RuntimeUnavailable
from edgeprune.backends.base.schedule import block_order, interleave, interleave_blocks
from edgeprune.backends.trt.api import import_tensorrt
from edgeprune.backends.trt.engine import build_engine
from edgeprune.backends.trt.onnx_info import OnnxInfo, inspect_onnx, rechunk
from edgeprune.backends.trt.plan import BuildOptions, parse_trt_version, plan_build, profile_shapes
from edgeprune.backends.trt.sidecar import (EngineMetadata, check_engine_compatible, metadata_path, read_metadata,
                                            stale_reason, write_metadata)
from edgeprune.backends.trt.trtexec import TrtexecRunner
from edgeprune.backends.trt.trtexec_cli import runtime_setting_flags, trtexec_command, verify_settings
from edgeprune.backends.trt.trtexec_output import (parse_export_times, parse_help_flags, parse_trtexec_device,
                                                   parse_trtexec_settings, parse_trtexec_summary,
                                                   parse_trtexec_version)

TRT86, TRT85, TRT10, TRT1012, TRT11 = (8, 6, 2), (8, 5, 2), (10, 3, 0), (10, 12, 0), (11, 0, 0)


# ---------------------------------------------------------------------------------------------------------
# versions and options
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("8.6.2.3", (8, 6, 2)), ("10.3.0.30", (10, 3, 0)), ("10.3", (10, 3, 0)), ("11.0.0", (11, 0, 0)),
    ("v8601", (8, 6, 1)), ("v8502", (8, 5, 2)), ("v100600", (10, 6, 0)), ("TensorRT v110100", (11, 1, 0)),
    ("v101200", (10, 12, 0)),
])
def test_parse_trt_version(text, expected):
    assert parse_trt_version(text) == expected


def test_parse_trt_version_rejects_garbage():
    with pytest.raises(ValueError):
        parse_trt_version("tensorrt")


@pytest.mark.parametrize("kwargs,fragment", [
    ({"precision": "int4"}, "unknown TensorRT precision"),
    ({"optimization_level": 6}, "0-5"),
    ({"min_batch": 4, "opt_batch": 2, "max_batch": 8}, "min <= opt <= max"),
    ({"workspace_mb": 0}, "workspace_mb"),
    ({"dla_core": -1}, "dla_core"),
])
def test_build_options_reject_bad_values(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        BuildOptions(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# plan_build per version and precision
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision,flags", [("fp32", ()), ("fp16", ("FP16",))])
def test_plan_trt86_uses_explicit_batch_and_precision_flags(precision, flags):
    plan = plan_build(BuildOptions(precision=precision, optimization_level=4, workspace_mb=512), TRT86, False, False)
    assert plan.network_flags == ("EXPLICIT_BATCH",)
    assert plan.builder_flags == flags
    assert plan.workspace_bytes == 512 << 20
    assert plan.optimization_level == 4
    assert plan.strongly_typed is False and plan.calibration is None and plan.profile is None


def test_plan_trt86_int8_needs_scales():
    with pytest.raises(ConfigError, match="calibration batches"):
        plan_build(BuildOptions(precision="int8"), TRT86, False, False)
    calibrated = plan_build(BuildOptions(precision="int8"), TRT86, False, False, has_calibration_data=True)
    assert calibrated.builder_flags == ("INT8",) and calibrated.calibration == "entropy2"
    qdq = plan_build(BuildOptions(precision="int8"), TRT86, False, False, onnx_has_qdq=True)
    assert qdq.builder_flags == ("INT8",) and qdq.calibration == "qdq"
    best = plan_build(BuildOptions(precision="best"), TRT86, False, False, has_calibration_data=True)
    assert best.builder_flags == ("FP16", "INT8")


def test_plan_trt85_drops_optimization_level_with_a_note():
    plan = plan_build(BuildOptions(optimization_level=5), TRT85, False, False)
    assert plan.optimization_level is None
    assert any("8.6" in n for n in plan.notes)


def test_plan_refuses_tensorrt_older_than_85():
    with pytest.raises(RuntimeUnavailable, match="too old"):
        plan_build(BuildOptions(), (8, 4, 3), False, False)


def test_plan_trt10_has_no_explicit_batch_and_keeps_weak_typing():
    plan = plan_build(BuildOptions(precision="fp16"), TRT10, False, False)
    assert plan.network_flags == ()
    assert plan.builder_flags == ("FP16",)
    assert not any("deprecated" in n for n in plan.notes)
    late = plan_build(BuildOptions(precision="fp16"), TRT1012, False, False)
    assert any("10.12" in n for n in late.notes)
    calib = plan_build(BuildOptions(precision="int8"), TRT10, False, False, has_calibration_data=True)
    assert calib.calibration == "entropy2" and any("10.1" in n for n in calib.notes)


def test_plan_trt10_strongly_typed_takes_precision_from_the_onnx():
    with pytest.raises(RuntimeUnavailable, match="autocast"):
        plan_build(BuildOptions(precision="fp16", strongly_typed=True), TRT10, False, False)
    plan = plan_build(BuildOptions(precision="fp16", strongly_typed=True), TRT10, False, False, onnx_has_fp16=True)
    assert plan.network_flags == ("STRONGLY_TYPED",) and plan.builder_flags == ()
    with pytest.raises(RuntimeUnavailable, match="TensorRT 10 or newer"):
        plan_build(BuildOptions(strongly_typed=True), TRT86, False, False)


def test_plan_trt11_is_strongly_typed_without_precision_flags():
    plan = plan_build(BuildOptions(precision="fp32"), TRT11, False, False)
    assert plan.strongly_typed and plan.network_flags == ("STRONGLY_TYPED",)
    assert plan.builder_flags == ()
    qdq = plan_build(BuildOptions(precision="int8"), TRT11, False, False, onnx_has_qdq=True)
    assert qdq.builder_flags == () and qdq.calibration == "qdq"
    half = plan_build(BuildOptions(precision="fp16"), TRT11, False, False, onnx_has_fp16=True)
    assert half.builder_flags == ()


def test_plan_trt11_int8_without_qdq_says_what_to_do():
    # Calibration data does not help: TensorRT 11 removed int8_calibrator along with BuilderFlag.INT8.
    with pytest.raises(RuntimeUnavailable) as err:
        plan_build(BuildOptions(precision="int8"), TRT11, False, False, has_calibration_data=True)
    assert "Q/DQ" in err.value.message and "TensorRT 11" in err.value.message


@pytest.mark.parametrize("precision,fragment", [("fp16", "autocast"), ("best", "best")])
def test_plan_trt11_refuses_weak_precisions(precision, fragment):
    with pytest.raises(RuntimeUnavailable, match=fragment):
        plan_build(BuildOptions(precision=precision), TRT11, False, False, has_calibration_data=True)


def test_plan_dla():
    plan = plan_build(BuildOptions(precision="fp16", dla_core=1), TRT86, True, False)
    assert plan.default_device == "DLA" and plan.dla_core == 1
    assert "GPU_FALLBACK" in plan.builder_flags and "FP16" in plan.builder_flags
    strict = plan_build(BuildOptions(precision="fp16", dla_core=0, gpu_fallback=False), TRT10, True, False)
    assert "GPU_FALLBACK" not in strict.builder_flags
    with pytest.raises(RuntimeUnavailable, match="no DLA"):
        plan_build(BuildOptions(precision="fp16", dla_core=0), TRT86, False, False)
    with pytest.raises(ConfigError, match="FP16 and INT8 only"):
        plan_build(BuildOptions(precision="fp32", dla_core=0), TRT86, True, False)
    with pytest.raises(RuntimeUnavailable, match="TensorRT 11 does not support DLA"):
        plan_build(BuildOptions(precision="fp32", dla_core=0), TRT11, True, False)


def test_plan_dynamic_batch_gets_a_profile():
    opts = BuildOptions(precision="int8", min_batch=1, opt_batch=4, max_batch=16)
    plan = plan_build(opts, TRT86, False, True, has_calibration_data=True)
    assert plan.profile == (1, 4, 16)
    assert plan.calibration_profile is True
    assert profile_shapes(plan, (-1, 3, 32, 32)) == ((1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))
    with pytest.raises(EdgepruneError, match="only the batch dim"):
        profile_shapes(plan, (-1, 3, -1, 32))
    static = plan_build(opts, TRT86, False, False, has_calibration_data=True)
    assert static.profile is None and static.calibration_profile is False
    assert any("static" in n for n in static.notes)


# ---------------------------------------------------------------------------------------------------------
# engine sidecar
# ---------------------------------------------------------------------------------------------------------
def _meta(**kw) -> EngineMetadata:
    base = dict(tensorrt_version="8.6.2", gpu_name="Orin", compute_capability="8.7", precision="fp16",
                input_shapes={"input": [1, 3, 32, 32]}, onnx_sha256="ab" * 32,
                build_options=BuildOptions(precision="fp16").to_dict())
    base.update(kw)
    return EngineMetadata(**base)


def test_metadata_round_trip(tmp_path):
    engine = tmp_path / "model.fp16.engine"
    meta = _meta(plan={"builder_flags": ["FP16"]}, profile_shapes={"input": [[1, 3, 8, 8]] * 3})
    path = write_metadata(engine, meta)
    assert path == metadata_path(engine) == tmp_path / "model.fp16.engine.json"
    assert read_metadata(engine) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.engine.json"]  # no temp file left
    assert read_metadata(tmp_path / "other.engine") is None
    (tmp_path / "broken.engine.json").write_text("{not json")
    with pytest.raises(EdgepruneError, match="unreadable"):
        read_metadata(tmp_path / "broken.engine")


def test_engine_compatibility():
    meta = _meta()
    check_engine_compatible(meta, "8.6.1", "Orin", "8.7")  # a patch difference is fine
    check_engine_compatible(meta, (8, 6, 2), "Jetson AGX Orin", "8.7")
    with pytest.raises(EdgepruneError) as err:
        check_engine_compatible(meta, "10.3.0", "Orin", "8.7")
    msg = err.value.message
    assert "8.6" in msg and "10.3" in msg and msg.endswith("rebuild the engine on this device") and "\n" not in msg
    with pytest.raises(EdgepruneError) as err:
        check_engine_compatible(meta, "8.6.2", "Xavier", "7.2")
    assert "8.7" in err.value.message and "7.2" in err.value.message and "rebuild" in err.value.message


def test_stale_reason():
    opts = BuildOptions(precision="fp16")
    meta = _meta(build_options=opts.to_dict())
    assert stale_reason(meta, "ab" * 32, opts) is None
    # Where the timing cache lives does not change the engine.
    assert stale_reason(meta, "ab" * 32, BuildOptions(precision="fp16", timing_cache="/tmp/x.cache")) is None
    assert "another ONNX" in stale_reason(meta, "cd" * 32, opts)
    assert "workspace_mb" in stale_reason(meta, "ab" * 32, BuildOptions(precision="fp16", workspace_mb=64))
    assert stale_reason(None, "ab" * 32, opts) == "no sidecar describes it"


# ---------------------------------------------------------------------------------------------------------
# ONNX facts, calibration chunks
# ---------------------------------------------------------------------------------------------------------
def _tiny_onnx(path: Path, batch="N", qdq=False, fp16=False) -> Path:
    dtype = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    x = helper.make_tensor_value_info("input", dtype, [batch, 3, 8, 8])
    y = helper.make_tensor_value_info("logits", dtype, [batch, 3, 8, 8])
    nodes, inits = [], []
    if qdq:
        inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1]),
                 helper.make_tensor("zp", TensorProto.INT8, [], [0])]
        nodes = [helper.make_node("QuantizeLinear", ["input", "scale", "zp"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["dq"]),
                 helper.make_node("Relu", ["dq"], ["logits"])]
    else:
        nodes = [helper.make_node("Relu", ["input"], ["logits"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_inspect_onnx(tmp_path):
    dyn = inspect_onnx(_tiny_onnx(tmp_path / "dyn.onnx"))
    assert dyn.input_name == "input" and dyn.input_shape == (-1, 3, 8, 8) and dyn.dynamic_batch
    assert not dyn.has_qdq and not dyn.has_fp16 and len(dyn.sha256) == 64
    static = inspect_onnx(_tiny_onnx(tmp_path / "static.onnx", batch=2, qdq=True))
    assert static.input_shape == (2, 3, 8, 8) and not static.dynamic_batch and static.has_qdq
    assert inspect_onnx(_tiny_onnx(tmp_path / "half.onnx", batch=1, fp16=True)).has_fp16
    assert dyn.sha256 != static.sha256


def test_rechunk_gives_full_batches_only():
    batches = [np.full((3, 2), i, np.float64) for i in range(3)]  # 9 samples
    out = list(rechunk(batches, 4))
    assert [o.shape for o in out] == [(4, 2), (4, 2)]
    assert all(o.dtype == np.float32 and o.flags.c_contiguous for o in out)
    assert out[0][:, 0].tolist() == [0, 0, 0, 1] and out[1][:, 0].tolist() == [1, 1, 2, 2]


# ---------------------------------------------------------------------------------------------------------
# trtexec command lines
# ---------------------------------------------------------------------------------------------------------
STATIC = OnnxInfo("input", (2, 3, 32, 32), False, False, "0" * 64)
DYNAMIC = OnnxInfo("input", (-1, 3, 32, 32), False, False, "0" * 64)


def test_trtexec_build_command_trt86():
    opts = BuildOptions(precision="fp16", workspace_mb=2048, optimization_level=3, timing_cache="/c/t.cache")
    cmd = trtexec_command(Path("m.onnx"), Path("m.engine"), opts, TRT86, iterations=0, onnx_info=STATIC)
    argv = list(cmd.argv)
    assert argv[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    for flag in ("--fp16", "--memPoolSize=workspace:2048", "--builderOptimizationLevel=3",
                 "--timingCacheFile=/c/t.cache", "--skipInference"):
        assert flag in argv
    assert not any(a.startswith(("--stronglyTyped", "--workspace=", "--iterations", "--useCudaGraph")) for a in argv)
    assert cmd.plan.builder_flags == ("FP16",)


def test_trtexec_build_command_trt11_has_no_precision_flags():
    cmd = trtexec_command(Path("m.onnx"), Path("m.engine"), BuildOptions(precision="fp32"), TRT11, iterations=0,
                          onnx_info=STATIC)
    assert not {"--fp16", "--int8", "--best", "--stronglyTyped"} & set(cmd.argv)
    with pytest.raises(RuntimeUnavailable, match="Q/DQ"):
        trtexec_command(Path("m.onnx"), Path("m.engine"), BuildOptions(precision="int8"), TRT11, iterations=0,
                        onnx_info=STATIC)
    typed10 = trtexec_command(Path("m.onnx"), Path("m.engine"), BuildOptions(strongly_typed=True), TRT10,
                              iterations=0, onnx_info=STATIC)
    assert "--stronglyTyped" in typed10.argv


def test_trtexec_build_command_dynamic_dla_and_calibration_cache():
    opts = BuildOptions(precision="int8", dla_core=0, min_batch=1, opt_batch=4, max_batch=8)
    cmd = trtexec_command(Path("m.onnx"), Path("m.engine"), opts, TRT86, iterations=10, onnx_info=DYNAMIC,
                          has_dla=True, calib_cache=Path("m.calib"))
    argv = set(cmd.argv)
    assert {"--int8", "--useDLACore=0", "--allowGPUFallback", "--calib=m.calib",
            "--minShapes=input:1x3x32x32", "--optShapes=input:4x3x32x32", "--maxShapes=input:8x3x32x32",
            "--shapes=input:4x3x32x32"} <= argv


def test_trtexec_run_command_trt10_states_timing_settings():
    cmd = trtexec_command(None, Path("m.engine"), None, TRT10, 250, 50, Path("t.json"), cuda_graph=False,
                          spin_wait=True, data_transfers=False)
    argv = list(cmd.argv)
    assert "--loadEngine=m.engine" in argv and "--exportTimes=t.json" in argv
    assert {"--warmUp=250", "--iterations=50", "--duration=0", "--avgRuns=1", "--useSpinWait",
            "--noDataTransfers"} <= set(argv)
    assert "--useCudaGraph" not in argv and "--noCudaGraph" not in argv  # 10.x has no flag to turn it off
    assert cmd.settings["cuda_graph"] is False and cmd.settings["data_transfers"] is False
    assert cmd.settings["defaults_relied_on"] == {"cuda_graph": False}
    assert cmd.settings["flags"] == ["--useSpinWait", "--noDataTransfers"]


def test_trtexec_run_command_trt11_turns_off_its_new_defaults():
    cmd = trtexec_command(None, Path("m.engine"), None, TRT11, 200, 10, None, cuda_graph=False, spin_wait=False,
                          data_transfers=True)
    assert {"--noCudaGraph", "--noSpinWait", "--includeDataTransfers"} <= set(cmd.argv)
    on = trtexec_command(None, Path("m.engine"), None, TRT11, 200, 10, None, cuda_graph=True, spin_wait=True,
                         data_transfers=False)
    assert {"--useCudaGraph", "--useSpinWait", "--noDataTransfers"} <= set(on.argv)
    assert on.settings["defaults_relied_on"] == {}


def test_runtime_setting_flags_against_the_installed_trtexec():
    with pytest.raises(EdgepruneError, match="no flag to disable spin-wait"):
        runtime_setting_flags(TRT11, cuda_graph=True, spin_wait=False, data_transfers=False,
                              available_flags={"--noDataTransfers", "--useCudaGraph"})
    # A flag this trtexec lacks is fine when its default is what was asked for.
    flags, assumed = runtime_setting_flags(TRT11, cuda_graph=True, spin_wait=True, data_transfers=False,
                                           available_flags={"--noDataTransfers"})
    assert flags == ["--noDataTransfers"] and assumed == {"cuda_graph": True, "spin_wait": True}
    with pytest.raises(EdgepruneError, match="enable"):
        runtime_setting_flags(TRT86, cuda_graph=True, spin_wait=True, data_transfers=False,
                              available_flags={"--useSpinWait", "--noDataTransfers"})


# ---------------------------------------------------------------------------------------------------------
# trtexec output parsing (samples in the format printed by samples/common/sampleReporting.cpp)
# ---------------------------------------------------------------------------------------------------------
TRTEXEC_86 = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v8602] # /usr/src/tensorrt/bin/trtexec --loadEngine=model.fp16.engine --warmUp=200 --iterations=100 --duration=0 --avgRuns=1 --useSpinWait --noDataTransfers --exportTimes=times.json
[03/14/2024-10:21:07] [I] === Model Options ===
[03/14/2024-10:21:07] [I] Format: *
[03/14/2024-10:21:07] [I] Model:
[03/14/2024-10:21:07] [I] === Inference Options ===
[03/14/2024-10:21:07] [I] Batch: Explicit
[03/14/2024-10:21:07] [I] Input inference shapes: model
[03/14/2024-10:21:07] [I] Iterations: 100
[03/14/2024-10:21:07] [I] Duration: 0s (+ 200ms warm up)
[03/14/2024-10:21:07] [I] Sleep time: 0ms
[03/14/2024-10:21:07] [I] Idle time: 0ms
[03/14/2024-10:21:07] [I] Inference Streams: 1
[03/14/2024-10:21:07] [I] ExposeDMA: Disabled
[03/14/2024-10:21:07] [I] Data transfers: Disabled
[03/14/2024-10:21:07] [I] Spin-wait: Enabled
[03/14/2024-10:21:07] [I] Multithreading: Disabled
[03/14/2024-10:21:07] [I] CUDA Graph: Disabled
[03/14/2024-10:21:07] [I] Separate profiling: Disabled
[03/14/2024-10:21:07] [I] Time Deserialize: Disabled
[03/14/2024-10:21:07] [I] Time Refit: Disabled
[03/14/2024-10:21:07] [I] === Device Information ===
[03/14/2024-10:21:07] [I] Selected Device: Orin
[03/14/2024-10:21:07] [I] Compute Capability: 8.7
[03/14/2024-10:21:07] [I] SMs: 8
[03/14/2024-10:21:07] [I] Device Global Memory: 7451 MiB
[03/14/2024-10:21:07] [I]
[03/14/2024-10:21:07] [I] TensorRT version: 8.6.2
[03/14/2024-10:21:08] [I] Engine loaded in 0.0112 sec.
[03/14/2024-10:21:09] [I] Starting inference
[03/14/2024-10:21:10] [I] Warmup completed 287 queries over 200 ms
[03/14/2024-10:21:10] [I] Timing trace has 100 queries over 0.0675789 s
[03/14/2024-10:21:10] [I]
[03/14/2024-10:21:10] [I] === Trace details ===
[03/14/2024-10:21:10] [I] Trace averages of 1 runs:
[03/14/2024-10:21:10] [I] Average on 1 runs - GPU latency: 0.661621 ms - Host latency: 0.661621 ms (enqueue 0.33252 ms)
[03/14/2024-10:21:10] [I]
[03/14/2024-10:21:10] [I] === Performance summary ===
[03/14/2024-10:21:10] [I] Throughput: 1479.75 qps
[03/14/2024-10:21:10] [I] Latency: min = 0.648438 ms, max = 0.76416 ms, mean = 0.672998 ms, median = 0.669678 ms, percentile(90%) = 0.688477 ms, percentile(95%) = 0.697754 ms, percentile(99%) = 0.73877 ms
[03/14/2024-10:21:10] [I] Enqueue Time: min = 0.28125 ms, max = 0.571289 ms, mean = 0.335144 ms, median = 0.328613 ms, percentile(90%) = 0.370117 ms, percentile(95%) = 0.387451 ms, percentile(99%) = 0.4646 ms
[03/14/2024-10:21:10] [I] H2D Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[03/14/2024-10:21:10] [I] GPU Compute Time: min = 0.648438 ms, max = 0.76416 ms, mean = 0.672998 ms, median = 0.669678 ms, percentile(90%) = 0.688477 ms, percentile(95%) = 0.697754 ms, percentile(99%) = 0.73877 ms
[03/14/2024-10:21:10] [I] D2H Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(90%) = 0 ms, percentile(95%) = 0 ms, percentile(99%) = 0 ms
[03/14/2024-10:21:10] [I] Total Host Walltime: 0.0675789 s
[03/14/2024-10:21:10] [I] Total GPU Compute Time: 0.0672998 s
[03/14/2024-10:21:10] [W] * GPU compute time is unstable, with coefficient of variance = 3.16%.
[03/14/2024-10:21:10] [W]   If not already in use, locking GPU clock frequency or adding --useSpinWait may improve the stability.
[03/14/2024-10:21:10] [I] Explanations of the performance metrics are printed in the verbose logs.
[03/14/2024-10:21:10] [I]
&&&& PASSED TensorRT.trtexec [TensorRT v8602] # /usr/src/tensorrt/bin/trtexec --loadEngine=model.fp16.engine
"""

TRTEXEC_10 = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v100600] [b26] # trtexec --loadEngine=resnet20.fp16.engine --warmUp=200 --iterations=200 --duration=0 --avgRuns=1 --useCudaGraph --useSpinWait
[11/02/2024-16:03:51] [I] === Inference Options ===
[11/02/2024-16:03:51] [I] Batch: Explicit
[11/02/2024-16:03:51] [I] Iterations: 200
[11/02/2024-16:03:51] [I] Duration: 0s (+ 200ms warm up)
[11/02/2024-16:03:51] [I] Inference Streams: 1
[11/02/2024-16:03:51] [I] ExposeDMA: Disabled
[11/02/2024-16:03:51] [I] Data transfers: Enabled
[11/02/2024-16:03:51] [I] Spin-wait: Enabled
[11/02/2024-16:03:51] [I] Multithreading: Disabled
[11/02/2024-16:03:51] [I] CUDA Graph: Enabled
[11/02/2024-16:03:51] [I] Separate profiling: Disabled
[11/02/2024-16:03:51] [I] === Device Information ===
[11/02/2024-16:03:51] [I] Available Devices:
[11/02/2024-16:03:51] [I]   Device 0: "NVIDIA GeForce RTX 4090" UUID: GPU-5f2b6f3c-0c33-7a2c-5b4e-0d1e2f3a4b5c
[11/02/2024-16:03:51] [I] Selected Device: NVIDIA GeForce RTX 4090
[11/02/2024-16:03:51] [I] Selected Device ID: 0
[11/02/2024-16:03:51] [I] Compute Capability: 8.9
[11/02/2024-16:03:51] [I] SMs: 128
[11/02/2024-16:03:51] [I] TensorRT version: 10.6.0
[11/02/2024-16:03:53] [I] === Performance summary ===
[11/02/2024-16:03:53] [I] Throughput: 16421.3 qps
[11/02/2024-16:03:53] [I] Latency: min = 0.0622559 ms, max = 0.112305 ms, mean = 0.0673848 ms, median = 0.0664062 ms, percentile(90%) = 0.0708008 ms, percentile(95%) = 0.072998 ms, percentile(99%) = 0.0822754 ms
[11/02/2024-16:03:53] [I] Enqueue Time: min = 0.00292969 ms, max = 0.0167236 ms, mean = 0.00382944 ms, median = 0.00366211 ms, percentile(90%) = 0.00439453 ms, percentile(95%) = 0.00476074 ms, percentile(99%) = 0.00683594 ms
[11/02/2024-16:03:53] [I] H2D Latency: min = 0.00561523 ms, max = 0.0162354 ms, mean = 0.00660645 ms, median = 0.00634766 ms, percentile(90%) = 0.00732422 ms, percentile(95%) = 0.00769043 ms, percentile(99%) = 0.0101318 ms
[11/02/2024-16:03:53] [I] GPU Compute Time: min = 0.0460205 ms, max = 0.0883789 ms, mean = 0.0508142 ms, median = 0.0500488 ms, percentile(90%) = 0.0537109 ms, percentile(95%) = 0.0550537 ms, percentile(99%) = 0.0622559 ms
[11/02/2024-16:03:53] [I] D2H Latency: min = 0.00756836 ms, max = 0.0134277 ms, mean = 0.00995638 ms, median = 0.00976562 ms, percentile(90%) = 0.0107422 ms, percentile(95%) = 0.0111084 ms, percentile(99%) = 0.0123291 ms
[11/02/2024-16:03:53] [I] Total Host Walltime: 0.012179 s
[11/02/2024-16:03:53] [I] Total GPU Compute Time: 0.0101628 s
[11/02/2024-16:03:53] [W] * Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be under-utilized.
[11/02/2024-16:03:53] [W]   If not already in use, --useCudaGraph (utilize CUDA graphs where possible) may increase the throughput.
[11/02/2024-16:03:53] [I] Explanations of the performance metrics are printed in the verbose logs.
&&&& PASSED TensorRT.trtexec [TensorRT v100600] [b26] # trtexec --loadEngine=resnet20.fp16.engine
"""


def test_parse_summary_trt86():
    s = parse_trtexec_summary(TRTEXEC_86)
    assert s["throughput_qps"] == pytest.approx(1479.75)
    assert s["latency"] == pytest.approx({"min": 0.648438, "max": 0.76416, "mean": 0.672998, "median": 0.669678,
                                          "p90": 0.688477, "p95": 0.697754, "p99": 0.73877})
    assert s["enqueue"]["median"] == pytest.approx(0.328613)
    assert s["h2d"]["max"] == 0.0 and s["d2h"]["p99"] == 0.0
    assert s["total_host_walltime_s"] == pytest.approx(0.0675789)
    assert s["total_gpu_compute_s"] == pytest.approx(0.0672998)  # the warning lines below it are not mixed in


def test_parse_summary_trt10():
    s = parse_trtexec_summary(TRTEXEC_10)
    assert s["throughput_qps"] == pytest.approx(16421.3)
    assert s["gpu_compute"]["median"] == pytest.approx(0.0500488)
    assert s["gpu_compute"]["p99"] == pytest.approx(0.0622559)
    assert s["latency"]["p95"] == pytest.approx(0.072998)
    assert s["h2d"]["mean"] == pytest.approx(0.00660645)
    assert set(s["latency"]) == {"min", "max", "mean", "median", "p90", "p95", "p99"}


def test_parse_summary_joins_wrapped_lines_and_odd_percentiles():
    text = textwrap.dedent("""\
        [I] === Performance summary ===
        [I] Throughput: 1133.1 qps
        [I] Latency: min = 0.877441 ms, max = 0.886963 ms, mean = 0.881485 ms,
        median = 0.881592 ms, percentile(90%) = 0.883606 ms,
        percentile(99.9%) = 0.885010 ms
        [I] GPU Compute Time: min = 0.8 ms, max = 0.9 ms, mean = 0.85 ms, median = 0.84 ms, percentile(50%) = 0.84 ms
        [I] Enqueue Time: min = 0.1 ms, max = 0.2 ms, mean = 0.15 ms, median = 0.14 ms
        [I] H2D Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms
        [I] D2H Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms
        [I] Total Host Walltime: 3.01 s
        [I] Total GPU Compute Time: 2.9 s
        """)
    s = parse_trtexec_summary(text)
    assert s["latency"]["median"] == pytest.approx(0.881592)
    assert s["latency"]["p99.9"] == pytest.approx(0.88501)
    assert s["gpu_compute"]["p50"] == pytest.approx(0.84)


def test_parse_summary_without_one_is_an_error():
    with pytest.raises(EdgepruneError, match="Performance summary"):
        parse_trtexec_summary("&&&& FAILED TensorRT.trtexec [TensorRT v8602]\n[E] Engine deserialization failed")


def test_parse_settings_device_and_version():
    assert parse_trtexec_settings(TRTEXEC_86) == {"cuda_graph": False, "spin_wait": True, "data_transfers": False}
    assert parse_trtexec_settings(TRTEXEC_10) == {"cuda_graph": True, "spin_wait": True, "data_transfers": True}
    assert parse_trtexec_device(TRTEXEC_86) == {"gpu": "Orin", "compute_capability": "8.7"}
    assert parse_trtexec_device(TRTEXEC_10) == {"gpu": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}
    assert parse_trtexec_version(TRTEXEC_86) == (8, 6, 2)
    assert parse_trtexec_version(TRTEXEC_10) == (10, 6, 0)
    assert parse_trtexec_version("[I] TensorRT version: 10.3.0") == (10, 3, 0)
    assert parse_trtexec_version("no banner") is None


def test_verify_settings_catches_a_trtexec_that_ignored_a_flag():
    verify_settings({"cuda_graph": False, "spin_wait": True, "data_transfers": False},
                    parse_trtexec_settings(TRTEXEC_86))
    with pytest.raises(EdgepruneError, match="CUDA Graph enabled"):
        verify_settings({"cuda_graph": False, "spin_wait": True, "data_transfers": True},
                        parse_trtexec_settings(TRTEXEC_10))


def test_parse_help_flags():
    flags = parse_help_flags("  --useSpinWait               Actively synchronize\n  --noDataTransfers  Disable DMA "
                             "(default = enabled).\n  --memPoolSize=poolspec  Specify ... pool ::= \"workspace\"")
    assert {"--useSpinWait", "--noDataTransfers", "--memPoolSize"} <= flags
    assert "--useCudaGraph" not in flags


def _record(t0, compute, h2d=0.0, d2h=0.0, old=False):
    rec = {"startEnqMs": t0, "endEnqMs": t0 + 0.01, "startComputeMs": t0 + h2d, "endComputeMs": t0 + h2d + compute,
           "computeMs": compute, "latencyMs": h2d + compute + d2h}
    if old:
        rec.update({"startInMs": t0, "endInMs": t0 + h2d, "inMs": h2d, "outMs": d2h,
                    "startOutMs": t0 + h2d + compute, "endOutMs": t0 + h2d + compute + d2h})
    else:
        rec.update({"startH2dMs": t0, "endH2dMs": t0 + h2d, "h2dMs": h2d, "d2hMs": d2h,
                    "startD2hMs": t0 + h2d + compute, "endD2hMs": t0 + h2d + compute + d2h})
    return rec


def test_parse_export_times():
    records = [_record(200.0 + i, 0.5 + 0.1 * i, h2d=0.05, d2h=0.02) for i in range(4)]
    assert parse_export_times(records) == pytest.approx([0.57, 0.67, 0.77, 0.87])
    assert parse_export_times(json.dumps(records), "computeMs") == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert parse_export_times(records, "h2dMs") == pytest.approx([0.05] * 4)
    # Releases before 8.6 also wrote the warm-up runs: those start inside --warmUp.
    warm = [_record(10.0, 9.0), _record(150.0, 9.0)] + records
    assert len(parse_export_times(warm, skip_before_ms=200)) == 4


def test_parse_export_times_old_key_names_and_derived_intervals():
    old = [{k: v for k, v in _record(300.0, 0.4, h2d=0.1, d2h=0.2, old=True).items()
            if k not in ("latencyMs", "computeMs")}]
    assert parse_export_times(old, "d2hMs") == pytest.approx([0.2])
    assert parse_export_times(old, "computeMs") == pytest.approx([0.4])  # from start/endComputeMs
    assert parse_export_times(old) == pytest.approx([0.7])  # h2d + compute + d2h
    with pytest.raises(EdgepruneError, match="enqMsX"):
        parse_export_times(old, "enqMsX")
    with pytest.raises(EdgepruneError, match="no timed runs"):
        parse_export_times([_record(1.0, 1.0)], skip_before_ms=200)
    with pytest.raises(EdgepruneError, match="not a JSON list"):
        parse_export_times('{"latencyMs": 1}')


# ---------------------------------------------------------------------------------------------------------
# the interleaved timing schedule shared by the CUDA runners
# ---------------------------------------------------------------------------------------------------------
def test_interleave_blocks_rotates_and_warms_up():
    calls = []

    def timer(name, value):
        def run():
            calls.append(name)
            return value
        return run

    times = interleave_blocks([timer("a", 1.0), timer("b", 2.0)], warmup=2, iters=3, blocks=2)
    assert calls[:4] == ["a", "a", "b", "b"]
    assert calls[4:] == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3  # block 1 starts with b
    assert times == [[[1.0] * 3] * 2, [[2.0] * 3] * 2]
    with pytest.raises(ValueError):
        interleave_blocks([timer("a", 1.0)], 0, 0, 1)


def test_interleave_blocks_honours_min_block_seconds():
    times = interleave_blocks([lambda: 0.1], warmup=0, iters=1, blocks=1, min_block_s=0.02)
    assert len(times[0][0]) > 1


def test_interleave_rotates_whole_blocks_as_trtexec_runs_them():
    calls = []

    def block(name):
        def run():
            calls.append(name)
            return [float(len(calls))]
        return run

    times = interleave([block("a"), block("b"), block("c")], blocks=3)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == [[[1.0], [6.0], [8.0]], [[2.0], [4.0], [9.0]], [[3.0], [5.0], [7.0]]]
    assert block_order(4, 3) == [1, 2, 0]


def test_the_schedule_imports_nothing_heavy():
    """The ONNX Runtime worker runs it in a process that must not import torch."""
    code = ("import sys, edgeprune.backends.base.schedule, edgeprune.backends.onnxrt.worker; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------
# build_engine against a stand-in tensorrt module that has only the documented API of each version
# ---------------------------------------------------------------------------------------------------------
def _fake_tensorrt(version: str, *, parse_ok=True, build_ok=True, dla_cores=0, cache_ok=True, cuda=None,
                   profile_index=0):
    """`cuda`: None (a GPU), "nullptr" (8.x/10.x without one: Builder() raises), "log" (11.x without one: Builder()
    logs the CUDA failure and returns an object whose next use would crash the process)."""
    major = int(version.split(".")[0])
    rec: dict = {"flags": [], "pools": [], "parsed": None}
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.recorded = rec

    class Severity:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger
    trt.Logger = lambda *a: ILogger()
    creation = {"EXPLICIT_BATCH": 0} if major < 10 else {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
    if major >= 11:
        creation = {"STRONGLY_TYPED": 1}
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**creation)
    builder_flags = ["GPU_FALLBACK", "DEBUG", "REFIT"] + (["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
                                                          if major < 11 else [])
    trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in builder_flags})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")

    class Cache:
        def __init__(self, blob):
            self.blob = blob

        def serialize(self):
            return b"TIMING" + self.blob

    class Config:
        builder_optimization_level = 3
        default_device_type = "GPU"
        DLA_core = -1

        def set_flag(self, flag):
            rec["flags"].append(flag)

        def set_memory_pool_limit(self, pool, size):
            rec["pools"].append((pool, size))

        def add_optimization_profile(self, profile):
            rec["profile"] = profile.shapes
            return profile_index

        def create_timing_cache(self, blob):
            return Cache(bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch):
            rec.setdefault("timing_caches", []).append((cache.blob, ignore_mismatch))
            self._cache = cache
            return cache_ok or cache.blob == b""

        def get_timing_cache(self):
            return self._cache

        def __setattr__(self, name, value):
            if name == "int8_calibrator" and major >= 11:  # removed in 11 along with BuilderFlag.INT8
                raise AttributeError(name)
            object.__setattr__(self, name, value)

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            self.shapes = (name, lo, opt, hi)

    class Network:
        num_inputs = 1

        def __init__(self, flags):
            rec["network_flags"] = flags

        def get_input(self, i):
            return types.SimpleNamespace(name="input", shape=(-1, 3, 8, 8))

    class Crashing:
        def __getattr__(self, name):
            raise AssertionError(f"used {name} on a Builder made without CUDA: the real one would crash here")

    class Builder:
        num_DLA_cores = dla_cores

        def __new__(cls, logger):
            if cuda == "nullptr":
                raise TypeError("pybind11::init(): factory function returned nullptr")
            if cuda == "log":
                logger.log(Severity.ERROR, "CUDA initialization failure with error: 35. Please check your CUDA "
                                           "installation: http://docs.nvidia.com/cuda/cuda-installation-guide-linux")
                return Crashing()
            return super().__new__(cls)

        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            rec["config"] = Config()
            return rec["config"]

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            if not build_ok:
                self.logger.log(Severity.ERROR, "[optimizer] no implementation for layer /conv1/Conv")
                return None
            return b"ENGINE-" + version.encode()

    class ParserError:
        def __init__(self, i):
            self.i = i

        def node(self):
            return 3

        def desc(self):
            return "Assertion failed: unsupported attribute"

        if major >= 10:
            def node_name(self):
                return "/features/conv1/Conv"

            def node_operator(self):
                return "Conv"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1

        def parse_from_file(self, path):
            rec["parsed"] = path
            return parse_ok

        def get_error(self, i):
            return ParserError(i)

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


def test_import_tensorrt_says_it_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(RuntimeUnavailable, match="TensorRT is not installed here"):
        import_tensorrt()


@pytest.mark.parametrize("version,network_flags,precision,expected_flags", [
    ("8.6.2", 1 << 0, "fp16", ["FP16"]),
    ("10.3.0", 0, "fp16", ["FP16"]),
    ("11.0.0", 1 << 1, "fp32", []),
])
def test_build_engine_applies_the_plan(monkeypatch, tmp_path, version, network_flags, precision, expected_flags):
    trt = _fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    onnx_path = _tiny_onnx(tmp_path / "m.onnx")
    engine = tmp_path / "out" / "m.engine"
    cache = tmp_path / "timing.cache"
    opts = BuildOptions(precision=precision, workspace_mb=256, optimization_level=4, timing_cache=str(cache),
                        min_batch=1, opt_batch=2, max_batch=4)
    meta = build_engine(onnx_path, engine, opts)
    rec = trt.recorded
    assert rec["network_flags"] == network_flags
    assert rec["flags"] == expected_flags
    assert rec["pools"] == [("WORKSPACE", 256 << 20)]
    assert rec["config"].builder_optimization_level == 4
    assert rec["parsed"] == str(onnx_path)  # parse_from_file: external weight files resolve
    assert rec["profile"] == ("input", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    assert rec["timing_caches"] == [(b"", False)]
    assert engine.read_bytes() == b"ENGINE-" + version.encode()
    assert cache.read_bytes() == b"TIMING"
    assert read_metadata(engine) == meta
    assert meta.tensorrt_version == version and meta.precision == precision
    assert meta.onnx_sha256 == inspect_onnx(onnx_path).sha256
    assert meta.profile_shapes == {"input": [[1, 3, 8, 8], [2, 3, 8, 8], [4, 3, 8, 8]]}
    assert [p.name for p in engine.parent.iterdir() if p.name.startswith(".")] == []


def test_build_engine_reports_parser_errors_per_node(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0", parse_ok=False))
    with pytest.raises(EdgepruneError) as err:
        build_engine(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", BuildOptions())
    assert "node 3 /features/conv1/Conv Conv: Assertion failed" in err.value.message
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("8.6.2", parse_ok=False))
    with pytest.raises(EdgepruneError, match=r"node 3: Assertion failed"):  # 8.x errors carry no node name
        build_engine(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", BuildOptions())


def test_build_engine_failure_leaves_no_engine(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0", build_ok=False))
    engine = tmp_path / "m.engine"
    with pytest.raises(EdgepruneError, match="no implementation for layer"):
        build_engine(_tiny_onnx(tmp_path / "m.onnx"), engine, BuildOptions())
    assert not engine.exists() and not metadata_path(engine).exists()


def test_build_engine_refuses_int8_on_trt11_before_touching_the_builder_config(monkeypatch, tmp_path):
    trt = _fake_tensorrt("11.0.0")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(RuntimeUnavailable, match="Q/DQ"):
        build_engine(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", BuildOptions(precision="int8"),
                     calibration_batches=[np.zeros((2, 3, 8, 8), np.float32)])
    assert "config" not in trt.recorded
    # A Q/DQ model builds on 11 with no precision flags at all.
    build_engine(_tiny_onnx(tmp_path / "q.onnx", qdq=True), tmp_path / "q.engine", BuildOptions(precision="int8"))
    assert trt.recorded["flags"] == []


def test_build_engine_dla_settings_and_missing_core(monkeypatch, tmp_path):
    trt = _fake_tensorrt("8.6.2", dla_cores=2)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    build_engine(_tiny_onnx(tmp_path / "m.onnx", batch=1), tmp_path / "m.engine",
                 BuildOptions(precision="fp16", dla_core=1))
    config = trt.recorded["config"]
    assert config.default_device_type == "DLA" and config.DLA_core == 1
    assert trt.recorded["flags"] == ["FP16", "GPU_FALLBACK"]
    with pytest.raises(ConfigError, match="has 2"):
        build_engine(_tiny_onnx(tmp_path / "m.onnx", batch=1), tmp_path / "m.engine",
                     BuildOptions(precision="fp16", dla_core=2))
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("8.6.2", dla_cores=0))
    with pytest.raises(RuntimeUnavailable, match="no DLA"):
        build_engine(_tiny_onnx(tmp_path / "m.onnx", batch=1), tmp_path / "m.engine",
                     BuildOptions(precision="fp16", dla_core=0))


def test_build_engine_replaces_a_timing_cache_from_another_device(monkeypatch, tmp_path):
    trt = _fake_tensorrt("10.3.0", cache_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OTHER-GPU")
    build_engine(_tiny_onnx(tmp_path / "m.onnx", batch=1), tmp_path / "m.engine",
                 BuildOptions(timing_cache=str(cache)))
    assert trt.recorded["timing_caches"] == [(b"OTHER-GPU", False), (b"", False)]
    assert cache.read_bytes() == b"TIMING"


# ---------------------------------------------------------------------------------------------------------
# TrtexecRunner end to end against a stand-in trtexec (a script printing trtexec's formats)
# ---------------------------------------------------------------------------------------------------------
FAKE_TRTEXEC = r'''
import json, os, sys
import numpy as np
args = sys.argv[1:]
with open(os.environ["FAKE_TRTEXEC_LOG"], "a") as fh:
    fh.write(json.dumps(args) + "\n")
banner = "&&&& RUNNING TensorRT.trtexec [TensorRT v100600] [b26] # trtexec " + " ".join(args)
print(banner)
if "--help" in args:
    for flag in ("--onnx", "--saveEngine", "--loadEngine", "--skipInference", "--fp16", "--int8", "--memPoolSize",
                 "--builderOptimizationLevel", "--timingCacheFile", "--shapes", "--minShapes", "--optShapes",
                 "--maxShapes", "--warmUp", "--iterations", "--duration", "--avgRuns", "--useSpinWait",
                 "--noDataTransfers", "--useCudaGraph", "--exportTimes", "--loadInputs", "--exportOutput"):
        print("  " + flag + "=<x>       help text")
    sys.exit(0)
opts = dict(a.split("=", 1) if "=" in a else (a, "") for a in args)
if os.environ.get("FAKE_TRTEXEC_FAIL") and "--saveEngine" in opts:
    print("[01/01/2025-00:00:00] [E] Error[4]: [network.cpp::validate::3100] unsupported layer /conv1/Conv")
    print("&&&& FAILED TensorRT.trtexec [TensorRT v100600] [b26] # trtexec")
    sys.exit(1)
kill = os.environ.get("FAKE_TRTEXEC_KILL")  # "build" / "run": killed half way, as by the OOM killer or Ctrl-C
if (kill == "build" and "--saveEngine" in opts) or (kill == "run" and "--exportTimes" in opts):
    import signal
    if "--saveEngine" in opts:
        open(opts["--saveEngine"], "wb").write(b"FAKE-EN")  # half an engine
    print("[I] === Performance summary ===", flush=True)
    print("[I] Throughput: 19", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
graph = "--useCudaGraph" in opts
if os.environ.get("FAKE_TRTEXEC_LIE"):
    graph = not graph
print("[I] === Inference Options ===")
print("[I] Data transfers: " + ("Disabled" if "--noDataTransfers" in opts else "Enabled"))
print("[I] Spin-wait: " + ("Enabled" if "--useSpinWait" in opts else "Disabled"))
print("[I] CUDA Graph: " + ("Enabled" if graph else "Disabled"))
print("[I] === Device Information ===")
print("[I] Selected Device: NVIDIA Fake GPU")
print("[I] Compute Capability: 8.9")
if "--saveEngine" in opts:
    open(opts["--saveEngine"], "wb").write(b"FAKE-ENGINE")
if "--skipInference" in opts:
    print("&&&& PASSED TensorRT.trtexec [TensorRT v100600] [b26]")
    sys.exit(0)
warm, n = float(opts["--warmUp"]), int(opts["--iterations"])
if "--exportTimes" in opts:
    recs = [dict(startComputeMs=w, endComputeMs=w + 5.0, computeMs=5.0, latencyMs=5.0) for w in (0.0, 1.0)]
    recs += [dict(startComputeMs=warm + i, endComputeMs=warm + i + 0.5, computeMs=0.5, latencyMs=0.5 + 0.001 * i)
             for i in range(n)]
    json.dump(recs, open(opts["--exportTimes"], "w"))
if "--exportOutput" in opts:
    name, path = opts["--loadInputs"].split(":", 1)
    x = np.fromfile(path, dtype=np.float32).reshape(int(os.environ["FAKE_TRTEXEC_BATCH"]), -1)
    out = [{"name": "logits", "dimensions": "%dx1" % len(x), "values": x.sum(1).tolist()}]
    json.dump(out, open(opts["--exportOutput"], "w"))
print("[I] === Performance summary ===")
print("[I] Throughput: 1900 qps")
print("[I] Latency: min = 0.5 ms, max = 0.6 ms, mean = 0.52 ms, median = 0.51 ms, percentile(90%) = 0.55 ms, "
      "percentile(95%) = 0.57 ms, percentile(99%) = 0.59 ms")
print("&&&& PASSED TensorRT.trtexec [TensorRT v100600] [b26]")
'''


@pytest.fixture
def fake_trtexec(tmp_path, monkeypatch):
    script = tmp_path / "bin" / "trtexec"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\n" + FAKE_TRTEXEC)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_TRTEXEC_LOG", str(log))
    monkeypatch.setenv("FAKE_TRTEXEC_BATCH", "2")
    calls = lambda: [json.loads(line) for line in log.read_text().splitlines()]  # noqa: E731
    return script, calls


def test_trtexec_runner_builds_reuses_and_measures(fake_trtexec, tmp_path):
    script, calls = fake_trtexec
    onnx_path = _tiny_onnx(tmp_path / "model.onnx", batch=2)
    runner = TrtexecRunner(precision="fp16", executable=str(script), warmup_ms=100)
    assert runner.available() is None
    dep = runner.prepare(onnx_path, tmp_path / "work")
    assert dep.path.read_bytes() == b"FAKE-ENGINE" and dep.input_shape == (2, 3, 8, 8)
    meta = read_metadata(dep.path)
    assert meta.built_with == "trtexec" and meta.tensorrt_version == "10.6.0"
    assert meta.gpu_name == "NVIDIA Fake GPU" and meta.compute_capability == "8.9"
    build = [c for c in calls() if any(a.startswith("--saveEngine") for a in c)]
    assert len(build) == 1 and "--fp16" in build[0] and "--skipInference" in build[0]

    again = TrtexecRunner(precision="fp16", executable=str(script)).prepare(onnx_path, tmp_path / "work")
    assert again.path == dep.path
    assert len([c for c in calls() if any(a.startswith("--saveEngine") for a in c)]) == 1  # reused

    stats = runner.measure(dep, warmup=5, iters=7, blocks=3)
    assert stats.n == 21 and stats.blocks == 3  # the two warm-up records per run are dropped
    assert stats.min == pytest.approx(0.5) and stats.runtime == "trtexec"
    assert stats.versions["tensorrt"] == "10.6.0" and stats.versions["gpu"] == "NVIDIA Fake GPU"
    assert stats.extra["cuda_graph"] is False and stats.extra["data_transfers"] is False
    assert stats.extra["flags"] == ["--useSpinWait", "--noDataTransfers"]
    assert stats.extra["trtexec_summary"]["latency"]["median"] == pytest.approx(0.51)
    # The stand-in prints only two summary lines: kept, and said to be incomplete rather than passed off as whole.
    assert "no Enqueue Time" in stats.extra["trtexec_summary"]["incomplete"][0]
    timed = [c for c in calls() if any(a.startswith("--exportTimes") for a in c)]
    assert len(timed) == 3 and all({"--duration=0", "--iterations=7", "--warmUp=100"} <= set(c) for c in timed)


def test_trtexec_runner_infer_round_trips_data(fake_trtexec, tmp_path):
    script, _ = fake_trtexec
    runner = TrtexecRunner(executable=str(script))
    dep = runner.prepare(_tiny_onnx(tmp_path / "model.onnx", batch=2), tmp_path / "work")
    batch = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    out = runner.infer(dep, batch)  # 3 samples through a batch-2 engine: two runs, the last one padded
    assert out.shape == (3, 1)
    assert out[:, 0] == pytest.approx(batch.reshape(3, -1).sum(1), rel=1e-5)


def test_trtexec_runner_refuses_a_run_whose_settings_differ(fake_trtexec, tmp_path, monkeypatch):
    script, _ = fake_trtexec
    runner = TrtexecRunner(executable=str(script))
    dep = runner.prepare(_tiny_onnx(tmp_path / "model.onnx", batch=2), tmp_path / "work")
    monkeypatch.setenv("FAKE_TRTEXEC_LIE", "1")
    with pytest.raises(EdgepruneError, match="CUDA Graph enabled although disabled"):
        runner.measure(dep, warmup=1, iters=2, blocks=1)


def test_trtexec_killed_half_way_is_one_line_and_leaves_no_engine(fake_trtexec, tmp_path, monkeypatch):
    script, _ = fake_trtexec
    onnx_path = _tiny_onnx(tmp_path / "model.onnx", batch=2)
    work = tmp_path / "work"
    dep = TrtexecRunner(precision="fp16", executable=str(script)).prepare(onnx_path, work)
    monkeypatch.setenv("FAKE_TRTEXEC_KILL", "build")
    with pytest.raises(EdgepruneError) as err:  # a rebuild (another precision) killed half way
        TrtexecRunner(precision="fp32", executable=str(script)).prepare(onnx_path, work)
    msg = err.value.message
    assert msg.startswith("trtexec was killed by SIGKILL before it finished") and "\n" not in msg
    assert sorted(p.name for p in work.iterdir()) == sorted([dep.path.name, dep.path.name + ".json"])
    monkeypatch.setenv("FAKE_TRTEXEC_KILL", "run")
    with pytest.raises(EdgepruneError, match="^trtexec was killed by SIGKILL"):
        TrtexecRunner(precision="fp16", executable=str(script)).measure(dep, warmup=1, iters=2, blocks=1)


def test_trtexec_runner_build_failure_is_one_clear_line(fake_trtexec, tmp_path, monkeypatch):
    script, _ = fake_trtexec
    monkeypatch.setenv("FAKE_TRTEXEC_FAIL", "1")
    with pytest.raises(EdgepruneError) as err:
        TrtexecRunner(executable=str(script)).prepare(_tiny_onnx(tmp_path / "model.onnx"), tmp_path / "work")
    assert "exit 1" in err.value.message and "unsupported layer /conv1/Conv" in err.value.message
    assert not list((tmp_path / "work").glob("*.json"))


# ---------------------------------------------------------------------------------------------------------
# TensorRT errors surfaced by build_engine (issue 15 item 2)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version,cuda", [("8.6.2", "nullptr"), ("10.3.0", "nullptr"), ("11.0.0", "log")])
def test_build_engine_without_a_gpu_is_one_line_before_any_crash(monkeypatch, tmp_path, version, cuda):
    trt = _fake_tensorrt(version, cuda=cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(RuntimeUnavailable) as err:
        build_engine(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine", BuildOptions())
    msg = err.value.message
    assert msg.startswith("TensorRT found no usable CUDA device: ") and "\n" not in msg
    assert ("factory function returned nullptr" if cuda == "nullptr" else "CUDA initialization failure") in msg
    assert not (tmp_path / "m.engine").exists()


def test_build_engine_refused_profile_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("10.3.0", profile_index=-1))
    with pytest.raises(EdgepruneError, match=r"refused the optimization profile for input \(1, 3, 8, 8\)"):
        build_engine(_tiny_onnx(tmp_path / "m.onnx"), tmp_path / "m.engine",
                     BuildOptions(min_batch=1, opt_batch=2, max_batch=4))


@pytest.mark.parametrize("version,typed,flags", [((8, 6, 1), False, ("INT8",)), ((10, 3, 0), True, ()),
                                                 ((11, 4, 0), True, ())])
def test_an_onnx_carrying_qdq_is_built_as_int8_strongly_typed_where_tensorrt_has_it(version, typed, flags):
    plan = plan_build(BuildOptions(), version, False, False, onnx_has_qdq=True)
    assert plan.precision == "int8" and plan.calibration == "qdq"
    assert plan.strongly_typed is typed and plan.builder_flags == flags


@pytest.mark.parametrize("version,flags", [((8, 6, 1), ("FP16",)), ((10, 3, 0), ()), ((11, 4, 0), ())])
def test_an_onnx_carrying_fp16_is_built_as_fp16(version, flags):
    plan = plan_build(BuildOptions(), version, False, False, onnx_has_fp16=True)
    assert plan.precision == "fp16" and plan.builder_flags == flags
    assert any("carries fp16" in note for note in plan.notes)


def test_a_plain_fp32_onnx_stays_fp32_and_weakly_typed_on_10():
    plan = plan_build(BuildOptions(), (10, 3, 0), False, False)
    assert plan.precision == "fp32" and not plan.strongly_typed and plan.builder_flags == ()
