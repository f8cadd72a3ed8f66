"""Bad input on the TensorRT running side (issue 15, "Bad input"): an engine built for another TensorRT version
or GPU, a truncated or replaced engine file. Each is one line (an EdgepruneError: exit 2) said before TensorRT
deserializes anything; the build side reuses none of them. Stand-ins for tensorrt; no GPU needed.
trtexec missing / killed half way: tests/test_gpu_runners.py and tests/test_tensorrt_logic.py."""
from __future__ import annotations

import types

import pytest

from edgeprune.backends.trt.plan import BuildOptions
from edgeprune.backends.trt.runner import _EngineSession
from edgeprune.backends.trt.sidecar import (EngineMetadata, check_engine_file, read_metadata, rebuild_reason,
                                            write_metadata)
from edgeprune.errors import EdgepruneError

ENGINE = b"PLAN" * 64


def _meta(version="10.3.0", cc="8.7", **changes) -> EngineMetadata:
    base = dict(tensorrt_version=version, gpu_name="Orin", compute_capability=cc, precision="fp16",
                input_shapes={"input": [1, 3, 8, 8]}, onnx_sha256="ab" * 32,
                build_options=BuildOptions(precision="fp16").to_dict())
    return EngineMetadata(**{**base, **changes})


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "model.fp16.engine"
    path.write_bytes(ENGINE)
    write_metadata(path, _meta())
    return path


def fake_trt(version: str, deserialized=None):
    """A tensorrt whose Runtime records that it was made; deserialize_cuda_engine logs an error, answers None."""
    made = []

    severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

    class ILogger:
        Severity = severity

        def __init__(self):
            pass

    class Runtime:
        def __init__(self, logger):
            made.append(self)
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            self.logger.log(severity.ERROR, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                            "(Serialization assertion plan->header.magicTag failed)")
            return deserialized

    return types.SimpleNamespace(__version__=version, ILogger=ILogger, Runtime=Runtime), made


def test_the_sidecar_records_the_engine_it_describes(engine):
    meta = read_metadata(engine)
    assert meta.engine_bytes == len(ENGINE) and len(meta.engine_sha256) == 64
    check_engine_file(engine, meta)  # whole: no error


def test_a_truncated_engine_is_one_line(engine):
    engine.write_bytes(ENGINE[:100])
    with pytest.raises(EdgepruneError) as err:
        check_engine_file(engine, read_metadata(engine))
    assert err.value.exit_code == 2 and "\n" not in err.value.message
    assert f"is truncated: 100 bytes where its sidecar says {len(ENGINE)}" in err.value.message


def test_a_replaced_engine_of_the_same_size_is_one_line(engine):
    engine.write_bytes(ENGINE[::-1])
    with pytest.raises(EdgepruneError, match="not the one its sidecar describes"):
        check_engine_file(engine, read_metadata(engine))


def test_a_sidecar_of_an_older_edgeprune_skips_the_file_check(engine):
    engine.write_bytes(b"short")
    check_engine_file(engine, _meta())  # no engine_bytes: nothing to compare with


def test_a_truncated_engine_is_rebuilt_not_reused(engine):
    engine.write_bytes(ENGINE[:10])
    _, reason = rebuild_reason(engine, "ab" * 32, BuildOptions(precision="fp16"), "10.3.0", lambda: ("Orin", "8.7"))
    assert reason and "truncated" in reason
    engine.write_bytes(ENGINE)
    assert rebuild_reason(engine, "ab" * 32, BuildOptions(precision="fp16"), "10.3.0",
                          lambda: ("Orin", "8.7"))[1] is None


@pytest.mark.parametrize("trt_version, fragment", [
    ("8.6.2", "built with TensorRT 10.3 for Orin but this host has TensorRT 8.6: rebuild the engine on this device"),
    ("11.4.0", "but this host has TensorRT 11.4"),
])
def test_loading_an_engine_of_another_tensorrt_is_one_line_before_deserializing(engine, trt_version, fragment):
    trt, made = fake_trt(trt_version)
    with pytest.raises(EdgepruneError) as err:
        _EngineSession(trt, engine, 0, cuda_graph=False)
    assert fragment in err.value.message and "\n" not in err.value.message
    assert made == []  # TensorRT was never asked to deserialize it


def test_loading_an_engine_for_another_gpu_is_one_line(engine, monkeypatch):
    from edgeprune.backends.trt import runner

    monkeypatch.setattr(runner, "cuda_device_identity", lambda device=0: ("NVIDIA H100", "9.0"))
    trt, made = fake_trt("10.3.0")
    with pytest.raises(EdgepruneError, match=r"built for compute capability 8\.7 for Orin but this GPU "
                                             r"\(NVIDIA H100\) is 9\.0: rebuild"):
        _EngineSession(trt, engine, 0, cuda_graph=False)
    assert made == []


def test_loading_a_truncated_engine_is_one_line_before_deserializing(engine):
    engine.write_bytes(ENGINE[:7])
    trt, made = fake_trt("10.3.0")
    with pytest.raises(EdgepruneError, match="is truncated: 7 bytes"):
        _EngineSession(trt, engine, 0, cuda_graph=False)
    assert made == []


def test_an_engine_without_a_sidecar_that_tensorrt_refuses_is_one_line(engine):
    engine.with_name(engine.name + ".json").unlink()
    engine.write_bytes(ENGINE[:7])
    trt, made = fake_trt("10.3.0")
    with pytest.raises(EdgepruneError) as err:
        _EngineSession(trt, engine, 0, cuda_graph=False)
    msg = err.value.message
    assert len(made) == 1 and "\n" not in msg
    assert msg.startswith(f"TensorRT 10.3.0 cannot load {engine} (truncated, or built by another TensorRT")
    assert msg.endswith("Serialization (Serialization assertion plan->header.magicTag failed)")
