"""ONNX export: torch.onnx (the torch.export-based exporter), onnx-graphsurgeon cleanup, checker, parity gate."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelLoadError, ParityError

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 18
EXTERNAL_DATA_BYTES = 1536 << 20


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str
    opset: int
    nodes: int
    ops: dict[str, int]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], batch_size: int, path: Path) -> ExportResult:
    """Export with a static batch (what TensorRT and the latency budget are about), then fold and clean up."""
    import onnx

    model = model.eval()
    example = (torch.zeros(batch_size, *input_shape),)
    path = Path(path)
    exporter = "torch.onnx (dynamo)"
    # protobuf caps one file at 2 GiB: larger models keep their weights beside the graph (model.onnx.data),
    # which ONNX Runtime and TensorRT's parser (given the file path) both read.
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    try:
        _export_dynamo(model, example, path, external)
    except Exception as exc:  # the torch.export path rejects some Python control flow the tracer accepts
        log.info("torch.export-based ONNX export failed (%s); retrying with the TorchScript exporter", exc)
        exporter = "torch.onnx (torchscript)"
        try:
            _export_torchscript(model, example, path, external)
        except Exception as exc2:
            raise ModelLoadError(f"the model cannot be exported to ONNX: {type(exc2).__name__}: "
                                 f"{str(exc2).strip().splitlines()[0] if str(exc2).strip() else ''}") from None
    cleanup(path, external)
    onnx.checker.check_model(str(path), full_check=True)  # by path: a model over 2 GiB cannot be checked in memory
    model_proto = onnx.load(str(path), load_external_data=False)
    ops: dict[str, int] = {}
    for node in model_proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    opset = next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    return ExportResult(path, exporter, opset, len(model_proto.graph.node), dict(sorted(ops.items())))


def _export_dynamo(model: nn.Module, example: tuple, path: Path, external: bool = False) -> None:
    # The exporter and its optimizer log every pass at INFO; a build's log should say what edgeprune did.
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, example, dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], external_data=external, optimize=True,
                                    verbose=False)
        program.save(str(path), external_data=external)


def _export_torchscript(model: nn.Module, example: tuple, path: Path, external: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, str(path), dynamo=False, opset_version=OPSET, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], do_constant_folding=True)


def cleanup(path: Path, external: bool = False) -> None:
    """Constant folding, dead-node removal and topological sort with onnx-graphsurgeon, in place."""
    import onnx
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(onnx.load(str(path)))
    graph.fold_constants().cleanup(remove_unused_graph_inputs=True).toposort()
    model = gs.export_onnx(graph)
    model.producer_name, model.producer_version = "edgeprune", ""
    if external:
        data = Path(path).name + ".data"
        for old in Path(path).parent.glob(Path(path).name + "*.data"):
            old.unlink()  # the exporter's own data file: rewritten below as one file
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    else:
        onnx.save(model, str(path))


@dataclass(frozen=True)
class Parity:
    max_abs: float
    max_rel: float
    samples: int
    top1_agreement: float
    atol: float
    rtol: float
    ok: bool

    def to_dict(self) -> dict:
        return asdict(self)


def check_parity(torch_out: np.ndarray, onnx_out: np.ndarray, atol: float = 1e-3, rtol: float = 1e-3) -> Parity:
    """Compare outputs elementwise, |onnx - torch| <= atol + rtol*|torch| (tolerance scaled by the PyTorch
    reference), on the same real inputs."""
    a, b = np.asarray(torch_out, np.float64), np.asarray(onnx_out, np.float64)
    if a.shape != b.shape:
        raise ParityError(f"ONNX output shape {list(b.shape)} differs from PyTorch's {list(a.shape)}")
    diff = np.abs(a - b)
    max_rel = float((diff / np.maximum(np.abs(a), 1e-6)).max()) if a.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(a))) and bool(np.isfinite(b).all())
    agree = float((a.argmax(-1) == b.argmax(-1)).mean()) if a.ndim == 2 else 1.0
    return Parity(float(diff.max()) if a.size else 0.0, max_rel, int(len(a)), agree, atol, rtol, ok)
