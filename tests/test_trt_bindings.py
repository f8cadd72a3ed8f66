"""Every `tensorrt` name edgeprune's TensorRT code uses on a version's path exists in that version's real Python
bindings (issue 15 item 3): what catches the next removed API before a user does.

The names are read from edgeprune/backends/trt/*.py with `ast`: module attributes (trt.X, trt.X.Y), and members
used on TensorRT objects held in variables named as below (builder.create_network -> Builder.create_network).
Which builder/network flags a version uses comes from plan_build itself, and names used only on the INT8
entropy-calibration path are required only where plan_build can choose that path (not on 11.x, which removed it).
The wheels (8.6, 10.x, 11.x) are fetched by .ci/run into $EDGEPRUNE_TRT_WHEELS; each is imported in a child
process through tests/fixtures/trt/probe_bindings.py (which says why stub native libraries are the way to do it).
"""
from __future__ import annotations

import ast
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgeprune.backends.trt as trt_package
from edgeprune.backends.trt.api import REFUSED_DTYPES, TORCH_DTYPES
from edgeprune.backends.trt.plan import PRECISIONS, BuildOptions, plan_build

PROBE = Path(__file__).parent / "fixtures" / "trt" / "probe_bindings.py"
SOURCES = sorted(Path(trt_package.__file__).parent.glob("*.py"))
WHEELS = os.environ.get("EDGEPRUNE_TRT_WHEELS")
# One wheel per TensorRT generation edgeprune supports (JetPack 5's 8.6, JetPack 6's 10.3, a late 10.x, 11.x).
VERSIONS = {"8.6": "tensorrt_bindings-8.6.1-", "10.3": "tensorrt_cu12_bindings-10.3.0-",
            "10.13": "tensorrt_cu12_bindings-10.13.3.9-", "11.4": "tensorrt_cu12_bindings-11.4.0.106-"}
# The variable names edgeprune gives TensorRT objects, and their class in the bindings.
CLASS_OF = {"builder": "Builder", "network": "INetworkDefinition", "config": "IBuilderConfig",
            "parser": "OnnxParser", "profile": "IOptimizationProfile", "engine": "ICudaEngine",
            "context": "IExecutionContext", "runtime": "Runtime", "severity": "ILogger.Severity",
            "err": "ParserError"}
ENTROPY2_ONLY = {"_make_calibrator", "_set_calibrator"}  # functions on the IInt8EntropyCalibrator2 path
# The modules that hold TensorRT objects in those variables (elsewhere `engine` is a Path, `context` a RunContext).
OBJECT_MODULES = {"api", "engine", "runner"}


def used_names() -> dict[str, set[str]]:
    """{name: the outermost function or class of each use ("" at module level)} for every tensorrt name the trt
    backend uses."""
    out: dict[str, set[str]] = {}

    def visit(node, outer: str, objects: bool) -> None:
        name = _name_of(node, objects)
        if name:
            out.setdefault(name, set()).add(outer)
        for child in ast.iter_child_nodes(node):
            top = child.name if not outer and isinstance(child, (ast.FunctionDef, ast.ClassDef)) else outer
            visit(child, top, objects)

    for path in SOURCES:
        visit(ast.parse(path.read_text()), "", path.stem in OBJECT_MODULES)
    return out


def _name_of(node, objects: bool) -> str | None:
    if not isinstance(node, ast.Attribute):
        return None
    chain = [node.attr]
    base = node.value
    while isinstance(base, ast.Attribute):
        chain.insert(0, base.attr)
        base = base.value
    root = base.id if isinstance(base, ast.Name) else None
    if root == "trt":
        return ".".join(chain[:2])
    if not objects:
        return None
    if root == "self" and len(chain) >= 2 and chain[0] in CLASS_OF:
        return f"{CLASS_OF[chain[0]]}.{chain[1]}"
    if root in CLASS_OF:
        return f"{CLASS_OF[root]}.{chain[0]}"
    return None


def plans(version: tuple[int, int, int]):
    """Every plan plan_build makes on `version` over the options and ONNX kinds edgeprune can be given."""
    for prec, strong, dla, has_dla, dyn, calib, qdq, fp16 in itertools.product(
            PRECISIONS, (False, True), (None, 0), (False, True), (False, True), (False, True), (False, True),
            (False, True)):
        try:
            yield plan_build(BuildOptions(precision=prec, strongly_typed=strong, dla_core=dla,
                                          max_batch=2 if dyn else 1), version, has_dla, dyn,
                             has_calibration_data=calib, onnx_has_qdq=qdq, onnx_has_fp16=fp16)
        except Exception:  # combinations plan_build refuses never reach the API
            continue


def required_names(version: tuple[int, int, int]) -> set[str]:
    made = list(plans(version))
    entropy2 = any(p.calibration == "entropy2" for p in made)
    names = {n for n, where in used_names().items() if entropy2 or not where <= ENTROPY2_ONLY}
    names |= {f"NetworkDefinitionCreationFlag.{f}" for p in made for f in p.network_flags}
    names |= {f"BuilderFlag.{f}" for p in made for f in p.builder_flags}
    return names


def test_the_collector_sees_the_api_edgeprune_uses():
    names = used_names()
    for expected in ("Builder", "OnnxParser", "MemoryPoolType.WORKSPACE", "TensorIOMode.INPUT",
                     "IBuilderConfig.set_memory_pool_limit", "IExecutionContext.execute_async_v3",
                     "IExecutionContext.set_tensor_address", "ICudaEngine.get_tensor_dtype",
                     "Runtime.deserialize_cuda_engine", "IInt8EntropyCalibrator2"):
        assert expected in names, expected
    assert names["IInt8EntropyCalibrator2"] <= ENTROPY2_ONLY
    assert "IBuilderConfig.int8_calibrator" in required_names((10, 3, 0))
    assert not {"IInt8EntropyCalibrator2", "BuilderFlag.FP16", "BuilderFlag.INT8",
                "IBuilderConfig.int8_calibrator"} & required_names((11, 4, 0))
    assert "NetworkDefinitionCreationFlag.EXPLICIT_BATCH" in required_names((8, 6, 1))


def _wheel(key: str) -> Path:
    if not WHEELS:
        pytest.skip("EDGEPRUNE_TRT_WHEELS is not set: .ci/run downloads the TensorRT bindings wheels there "
                    "(pip download --no-deps); without PyPI the real-bindings check cannot run")
    found = sorted(Path(WHEELS).glob(VERSIONS[key] + "*.whl"))
    if not found:
        pytest.skip(f"no TensorRT {key} bindings wheel ({VERSIONS[key]}*.whl) in {WHEELS}: the download failed")
    for tool in ("cc", "readelf", "nm"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is missing: the probe builds stub TensorRT libraries to import the bindings")
    return found[0]


@pytest.mark.parametrize("key", sorted(VERSIONS))
def test_real_bindings_have_every_name_used_on_their_path(key):
    wheel = _wheel(key)
    version = tuple(int(x) for x in re.match(r"[a-z_\d]+?-(\d+)\.(\d+)\.(\d+)", wheel.name).groups())
    names = sorted(required_names(version))
    proc = subprocess.run([sys.executable, str(PROBE), str(wheel)], input=json.dumps(names), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["version"].startswith(".".join(map(str, version)))
    missing = [n for n, ok in got["present"].items() if not ok]
    assert missing == [], f"TensorRT {got['version']} bindings lack {missing}"
    unmapped = set(got["datatypes"]) - set(TORCH_DTYPES) - set(REFUSED_DTYPES)
    assert not unmapped, f"TensorRT {got['version']} has I/O types edgeprune neither maps nor refuses: {unmapped}"
