"""Why a pruned RegNetX can be no faster: ONNX Runtime's grouped convolution against channels per group.

One 3x3 convolution with 4 groups on an 8x8 input (RegNetX's last stages at 64 px), exported to ONNX and timed in
ONNX Runtime (one thread, 200 runs after 20 warm-up, median) for several widths per group. Throughput falls when
the width per group is not a multiple of the host's SIMD block (16 floats with AVX-512), so narrowing 128 -> 88
per group saves MACs but little time, and 96 or 80 saves more time than 88.

    .venv/bin/python benchmarks/grouped_conv.py
Writes benchmarks/results/grouped_conv.json.
"""
from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIDTHS = (128, 96, 88, 80, 64, 24, 16, 12, 8)
GROUPS, SIZE = 4, 8


def main() -> None:
    import onnxruntime as ort
    import torch

    from edgeprune.targets.devices import _cpu_model as cpu_model

    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for per in WIDTHS:
            conv = torch.nn.Conv2d(per * GROUPS, per * GROUPS, 3, padding=1, groups=GROUPS).eval()
            x = torch.randn(1, per * GROUPS, SIZE, SIZE)
            path = f"{tmp}/conv{per}.onnx"
            torch.onnx.export(conv, (x,), path, dynamo=False, input_names=["x"])
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            feed = {"x": x.numpy()}
            for _ in range(20):
                sess.run(None, feed)
            times = []
            for _ in range(200):
                t = time.perf_counter()
                sess.run(None, feed)
                times.append(time.perf_counter() - t)
            us = float(np.median(times) * 1e6)
            macs = per * per * 9 * GROUPS * SIZE * SIZE
            rows.append({"channels_per_group": per, "median_us": us, "gmac_per_s": macs / us / 1e3})
    print(f"{'per group':>9} {'median us':>10} {'GMAC/s':>7}")
    for r in rows:
        print(f"{r['channels_per_group']:>9} {r['median_us']:>10.1f} {r['gmac_per_s']:>7.1f}")
    out = ROOT / "benchmarks" / "results" / "grouped_conv.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "grouped_conv", "date": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "host": {"cpu": cpu_model(), "machine": platform.machine()},
        "onnxruntime": ort.__version__, "groups": GROUPS, "spatial": SIZE, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
