"""Every status TensorRT returns on the running side is checked and said in one line (issue 15 item 2): runtime
creation without a GPU (8.x/10.x raise, 11.x logs then would crash), a refused input shape or buffer address, a
context that could not be made, and engine I/O types edgeprune cannot feed. Stand-ins for the tensorrt objects
answer the way the documented API does (False, None, -1, a logged error); no GPU or TensorRT is needed."""
from __future__ import annotations

import types

import pytest

from edgeprune.errors import EdgepruneError, RuntimeUnavailable
from edgeprune.backends.trt import api
from edgeprune.backends.trt.api import (NO_CUDA, REFUSED_DTYPES, TORCH_DTYPES, create, create_execution_context,
                                        creation_error, io_dtype)
from edgeprune.backends.trt.runner import bind_io


class Logger:
    def __init__(self):
        self.errors: list[str] = []

    def log(self, _severity, msg):
        self.errors.append(msg)


def test_runtime_factory_returning_nullptr_is_no_cuda():
    def runtime(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    with pytest.raises(RuntimeUnavailable) as err:
        create(Logger(), runtime, "Runtime")
    assert err.value.message.startswith(f"{NO_CUDA}: TypeError: pybind11::init(): factory function returned nullptr")


def test_runtime_that_logged_a_cuda_failure_is_never_used():
    used = []

    class Broken:
        def __getattr__(self, name):
            used.append(name)

    def runtime(logger):
        logger.log(1, "CUDA initialization failure with error: 100")
        return Broken()

    logger = Logger()
    logger.errors.append("an error from an earlier build")  # cleared: it is not this creation's
    with pytest.raises(RuntimeUnavailable, match="^TensorRT found no usable CUDA device: CUDA initialization "
                                                 "failure with error: 100 \\(creating the Runtime"):
        create(logger, runtime, "Runtime")
    assert used == []


def test_other_creation_errors_are_not_called_a_missing_gpu():
    def builder(logger):
        logger.log(1, "Cannot find plugin library")
        return object()

    exc = creation_error("Builder", ["Cannot find plugin library"], None)
    assert type(exc) is EdgepruneError and "could not create its Builder: Cannot find plugin library" in exc.message
    with pytest.raises(EdgepruneError, match="could not create its Builder"):
        create(Logger(), builder, "Builder")
    assert "returned nothing and logged no error" in creation_error("Runtime", [], None).message


def test_execution_context_none_is_an_error():
    engine = types.SimpleNamespace(create_execution_context=lambda: None)
    logger = Logger()
    logger.errors.append("Requested amount of GPU memory (1073741824 bytes) could not be allocated")
    with pytest.raises(EdgepruneError, match="could not create an execution context for m.engine .*could not be "
                                             "allocated"):
        create_execution_context(engine, logger, "m.engine")


class Buffer:
    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def data_ptr(self):
        return 4096


def fake_engine(io: dict, *, shape_ok=True, address_ok=True, profile=((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))):
    """An engine and context with named I/O tensors {name: (mode, shape, TensorRT dtype name)}."""
    trt = types.SimpleNamespace(TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"))
    names = list(io)
    set_shapes = {}

    engine = types.SimpleNamespace(
        num_io_tensors=len(names), get_tensor_name=names.__getitem__,
        get_tensor_mode=lambda n: io[n][0], get_tensor_shape=lambda n: io[n][1],
        get_tensor_dtype=lambda n: types.SimpleNamespace(name=io[n][2]),
        get_tensor_profile_shape=lambda n, i: profile)

    def get_tensor_shape(n):
        if n in set_shapes:
            return set_shapes[n]
        if io[n][0] == "OUTPUT" and set_shapes:  # the batch follows the input's
            return (next(iter(set_shapes.values()))[0], *io[n][1][1:])
        return io[n][1]

    def set_input_shape(n, shape):
        set_shapes[n] = shape
        return shape_ok

    bound = {}
    context = types.SimpleNamespace(get_tensor_shape=get_tensor_shape, set_input_shape=set_input_shape,
                                    set_tensor_address=lambda n, p: bound.setdefault(n, p) and address_ok)
    return trt, engine, context, bound


def test_bind_io_sets_the_opt_shape_and_binds_every_tensor():
    trt, engine, context, bound = fake_engine({"input": ("INPUT", (-1, 3, 8, 8), "BF16"),
                                               "logits": ("OUTPUT", (-1, 10), "FLOAT")})
    inp, out, buffers = bind_io(trt, engine, context, Buffer, Logger(), "m.engine")
    assert (inp, out) == ("input", "logits")
    assert buffers["input"].shape == (4, 3, 8, 8) and buffers["input"].dtype == "bfloat16"
    assert buffers["logits"].shape == (4, 10) and buffers["logits"].dtype == "float32"
    assert bound == {"input": 4096, "logits": 4096}


def test_bind_io_refused_shape_and_address():
    io = {"input": ("INPUT", (-1, 3, 8, 8), "FLOAT"), "logits": ("OUTPUT", (-1, 10), "FLOAT")}
    logger = Logger()
    logger.errors.append("IExecutionContext::setInputShape: Error Code 3: API Usage Error")
    with pytest.raises(EdgepruneError, match=r"refused input shape \(4, 3, 8, 8\) for 'input'.*Error Code 3"):
        bind_io(*fake_engine(io, shape_ok=False)[:3], Buffer, logger, "m.engine")
    with pytest.raises(EdgepruneError, match="refused the device buffer for tensor 'input'"):
        bind_io(*fake_engine(io, address_ok=False)[:3], Buffer, Logger(), "m.engine")


def test_bind_io_refuses_an_engine_type_before_binding_anything():
    trt, engine, context, bound = fake_engine({"input": ("INPUT", (1, 3, 8, 8), "FLOAT"),
                                               "logits": ("OUTPUT", (1, 10), "FP4")})
    with pytest.raises(EdgepruneError, match="TensorRT type FP4 .packed 4-bit floats"):
        bind_io(trt, engine, context, Buffer, Logger(), "m.engine")
    assert bound == {}


@pytest.mark.parametrize("name,torch_name", [("FLOAT", "float32"), ("HALF", "float16"), ("BF16", "bfloat16"),
                                             ("INT8", "int8"), ("UINT8", "uint8"), ("INT32", "int32"),
                                             ("INT64", "int64"), ("BOOL", "bool"), ("FP8", "float8_e4m3fn")])
def test_io_dtype_maps_each_type_to_a_torch_dtype_that_exists(name, torch_name):
    torch = pytest.importorskip("torch")
    assert io_dtype(types.SimpleNamespace(name=name)) == torch_name
    assert isinstance(getattr(torch, torch_name), torch.dtype)


def test_io_dtype_refuses_packed_and_unknown_types():
    for name in REFUSED_DTYPES:
        with pytest.raises(EdgepruneError, match=f"type {name} "):
            io_dtype(types.SimpleNamespace(name=name))
    with pytest.raises(EdgepruneError, match="type FP2, which this edgeprune does not know"):
        io_dtype("DataType.FP2")  # the enum's str() form works too
    assert not set(TORCH_DTYPES) & set(REFUSED_DTYPES)


def test_parser_errors_carry_node_and_operator():
    err = types.SimpleNamespace(node=lambda: 7, desc=lambda: "Unsupported ONNX data type: UINT16",
                                node_name=lambda: "/backbone/Cast_3", node_operator=lambda: "Cast")
    parser = types.SimpleNamespace(num_errors=1, get_error=lambda i: err)
    assert api.parser_errors(parser) == ["node 7 /backbone/Cast_3 Cast: Unsupported ONNX data type: UINT16"]
