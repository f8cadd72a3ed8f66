"""fp32 vs fp16 vs int8 ONNX artifacts on ONNX Runtime CPU, one thread: latency ratios to fp32 measured
interleaved in one run, and top-1 accuracy of each artifact on the digits validation split.

Models: the built-in ResNet-20 trained on digits (cached under EDGEPRUNE_CACHE; real accuracy), and, when
torchvision imports, resnet18 and mobilenet_v3_small with random weights at 224 px (latency only).
int8 is made in both Q/DQ profiles: "tensorrt" (symmetric int8 activations, what a TensorRT engine needs) and
"onnxruntime" (uint8 activations, ORT's fast CPU kernels). Calibration methods change scales, not the graph,
so only the trained model gets every method.

resnet18 is also pruned (ratio 0.5, channel multiple 16, l1) and quantized, all timed side by side with the
unpruned fp32 model. `--builds` runs whole `edgeprune.build()`s instead (builds.py: `--precision auto` against
fp32 only); each part rewrites its own key of the one result file.

    .venv/bin/python benchmarks/precision.py [--blocks 6] [--iters 30] [--builds] [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeprune.backends.base.stats import paired_ratio
from edgeprune.backends.onnxrt.runner import OnnxRuntimeRunner
from edgeprune.data import load_data
from edgeprune.export.onnx import export_onnx
from edgeprune.export.precision import check_precision_parity, convert_fp16, run_onnx
from edgeprune.export.quantize import CALIBRATION_METHODS, quantize_int8
from edgeprune.models import load_model
from edgeprune.pipeline.stages import train_cached

RESULT = Path(__file__).parent / "results" / "precision.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--calibration", type=int, default=64, help="calibration images (16 at 224 px)")
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--builds", action="store_true", help="whole builds: --precision auto vs fp32 (slow)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--channel-multiple", type=int, help="--builds: ResNet-56 at this multiple (default: the "
                                                            "device's), and only ResNet-56")
    ap.add_argument("--repeat-fp32", action="store_true", help="--builds: each fp32-only build twice, for the "
                                                               "run-to-run spread of the search itself")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    if args.builds:
        from precision_builds import run_builds

        return run_builds(args)
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeprune-precision-") as tmp:
        rows += bench_trained_resnet20(Path(tmp), args)
        try:
            import torchvision
        except ImportError:
            torchvision = None
        if torchvision is not None:
            for name in ("resnet18", "mobilenet_v3_small"):
                torch.manual_seed(0)
                model = getattr(torchvision.models, name)(weights=None).eval()
                rows += bench_model(name, model, (3, 224, 224), Path(tmp), args, accuracy=False,
                                    methods=("minmax",), calibration=16,
                                    pruned=0.5 if name == "resnet18" else None)
    import onnxruntime

    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    out = {"benchmark": "precision", "runtime": "onnxruntime CPUExecutionProvider", "threads": 1,
           "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "cpu": platform.processor() or
           platform.machine(), "blocks": args.blocks, "iters_per_block": args.iters,
           "seconds": round(time.time() - started, 1), "rows": rows,
           "command": "PYTHONPATH=. .venv/bin/python benchmarks/precision.py " +
                      f"--blocks {args.blocks} --iters {args.iters}",
           "builds": previous.get("builds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(table(rows))
    print(f"\n{out['seconds']} s; wrote {args.out}")


def bench_trained_resnet20(tmp: Path, args) -> list[dict]:
    data = load_data("digits", (1, 32, 32), seed=0)
    loaded = load_model("resnet20", input_shape=(1, 32, 32), num_classes=10)
    torch.manual_seed(0)
    train_cached(loaded, data, epochs=10, seed=0)
    return bench_model("resnet20 (digits, trained)", loaded.module.eval(), (1, 32, 32), tmp, args, accuracy=True,
                       methods=CALIBRATION_METHODS, calibration=args.calibration, data=data)


def bench_model(name: str, model, shape, tmp: Path, args, accuracy: bool, methods, calibration: int,
                data=None, pruned: float | None = None) -> list[dict]:
    data = data or load_data("digits", shape, seed=0)
    work = tmp / name.split()[0]
    work.mkdir()
    fp32 = work / "fp32.onnx"
    export_onnx(model, shape, 1, fp32)
    cal = [x.numpy() for x in data.calibration_batches(calibration, 16)]
    val_x, val_y = zip(*[(x.numpy(), y.numpy()) for x, y in data.loader("val", 120)])
    labels = np.concatenate(val_y)
    variants = {"fp32": (fp32, {}), "fp16": (work / "fp16.onnx", convert_fp16(fp32, work / "fp16.onnx").to_dict())}
    for target in ("tensorrt", "onnxruntime"):
        for method in methods if target == "tensorrt" else ("minmax",):
            path = work / f"int8-{target}-{method}.onnx"
            variants[f"int8 {target} {method}"] = (path, quantize_int8(fp32, path, cal, method,
                                                                       target=target).to_dict())
    if pruned is not None:  # pruning and int8 together, against the same unpruned fp32 model
        from edgeprune.pruning.prune import prune_model

        small = prune_model(model, torch.zeros(1, *shape), pruned, 16, "l1").model
        path = work / "pruned-fp32.onnx"
        export_onnx(small, shape, 1, path)
        variants[f"pruned {pruned} fp32"] = (path, {"ratio": pruned, "multiple": 16})
        q = work / "pruned-int8.onnx"
        variants[f"pruned {pruned} int8 onnxruntime"] = (q, quantize_int8(path, q, cal, "minmax",
                                                                          target="onnxruntime").to_dict())
    runner = OnnxRuntimeRunner(threads=1)
    deployed = [runner.prepare(p, work) for p, _ in variants.values()]
    runner.release()
    stats = runner.measure_interleaved(deployed, warmup=10, iters=args.iters, blocks=args.blocks)
    rows = []
    for (variant, (path, made)), st in zip(variants.items(), stats):
        ratio = paired_ratio(st, stats[0])
        row = {"model": name, "variant": variant, "p50_ms": round(st.p50, 3), "spread": round(st.spread, 3),
               "ratio_to_fp32": round(ratio.ratio, 3), "ratio_ci95": [round(ratio.low, 3), round(ratio.high, 3)],
               "latency": st.to_dict(), "artifact": made}
        if accuracy:
            logits = run_onnx(path, list(val_x))
            row["top1_accuracy"] = round(float((logits.argmax(1) == labels).mean()), 4)
            if variant != "fp32":
                row["parity"] = check_precision_parity(fp32, path, list(val_x), variant.split()[0]).to_dict()
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'model':28} {'variant':28} {'p50 ms':>8} {'x fp32':>7} {'95% CI':>14} {'spread':>7} {'top-1':>7} "
             f"{'agree':>6}"]
    for r in rows:
        acc = f"{100 * r['top1_accuracy']:.2f}%" if "top1_accuracy" in r else "-"
        agree = f"{r['parity']['top1_agreement']:.3f}" if "parity" in r else "-"
        ci = f"{r['ratio_ci95'][0]:.2f}-{r['ratio_ci95'][1]:.2f}"
        lines.append(f"{r['model']:28} {r['variant']:28} {r['p50_ms']:8.3f} {r['ratio_to_fp32']:7.3f} {ci:>14} "
                     f"{r['spread']:7.3f} {acc:>7} {agree:>6}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
