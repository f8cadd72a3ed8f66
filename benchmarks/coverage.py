"""Does every torchvision classification model prune, export and match? (issue 6) And a sample of timm's? (issue 16)

For each classification model torchvision lists (random weights, eval mode), at a small input where the model
allows one: prune 30% of the channels of every prunable group with the default criterion (l1) at the channel
multiple given (default 8), export both models to ONNX, check the pruned ONNX against the pruned PyTorch model in
ONNX Runtime (edgeprune's parity gate: |onnx - torch| <= 1e-3 + 1e-3 |torch| on every output), and time both in
ONNX Runtime (interleaved blocks in edgeprune's isolated worker; speed-up = median of paired block ratios).

Random weights make degenerate outputs: torchvision zero-initialises ViT's head (every logit 0) and deep stacks
without residuals shrink activations to ~1e-20, where any parity check passes. So before pruning, layers whose
weights are all zero get N(0, 0.02) weights and BatchNorm statistics are re-estimated on random images; parity is
then checked on logits of ordinary size (their scale is recorded as logit_std).

Each model runs in its own process (a crash or a time-out is that model's failure, with the reason).

--timm runs a sample of 12 timm families instead (timm:NAME through timm.create_model, random init, 64 px) and
writes them under "timm" in the same file, leaving the torchvision results as they are (and the other way round).

    .venv/bin/python benchmarks/coverage.py                          # all models (about an hour on 2 cores)
    .venv/bin/python benchmarks/coverage.py --models resnet18,swin_t # some
    .venv/bin/python benchmarks/coverage.py --no-latency             # prune/export/parity only
    .venv/bin/python benchmarks/coverage.py --timm                   # the timm sample (a few minutes)
Writes benchmarks/results/coverage.json (and prints a table and a per-family summary).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Inputs: small where the architecture allows (global pooling makes any size >= 32 work); ViT and MaxViT are
# built for the size (edgeprune's torchvision loader passes it); Inception v3 needs >= 75 px; MaxViT's
# partitions need 224 at its default partition size.
DEFAULT_SIZE = 64
SIZES = {"inception_v3": 96, "vit_h_14": 56, "maxvit_t": 224}
FAMILIES = ("resnet", "resnext", "wide_resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet_v2", "efficientnet",
            "regnet_x", "regnet_y", "convnext", "vit", "swin_v2", "swin", "maxvit", "shufflenet", "densenet",
            "vgg", "squeezenet", "mnasnet", "googlenet", "inception", "alexnet")
# One model of each of 12 timm families, small variants so the sample runs in minutes.
TIMM_SAMPLE = {"resnet18d": "resnet", "efficientnet_b0": "efficientnet", "mobilenetv3_small_100": "mobilenetv3",
               "convnext_atto": "convnext", "regnetx_002": "regnet", "densenet121": "densenet",
               "ghostnet_100": "ghostnet", "mixnet_s": "mixnet", "rexnet_100": "rexnet", "dla34": "dla",
               "cspresnet50": "cspnet", "vgg11": "vgg"}


def family(name: str) -> str:
    if name.startswith("timm:"):
        return "timm:" + TIMM_SAMPLE.get(name[5:], name[5:])
    return next((f for f in FAMILIES if name.startswith(f)), name)


def spec_for(name: str) -> str:
    """edgeprune's --model spec: timm:NAME as given, torchvision's names bare."""
    return name if name.startswith("timm:") else f"torchvision:{name}"


def list_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def size_for(name: str) -> int:
    return SIZES.get(name, DEFAULT_SIZE)


def meaningful_init(model, size: int, seed: int = 0) -> None:
    """Random weights with outputs of ordinary size (see the module docstring)."""
    import torch
    from torch import nn

    from edgeprune.pruning.recover import recalibrate_bn

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and not m.weight.any():
                m.weight.normal_(0.0, 0.02, generator=gen)
    batches = [torch.randn(8, 3, size, size, generator=gen) for _ in range(4)]
    with torch.no_grad():
        recalibrate_bn(model, batches)
    model.eval()


def run_one(name: str, size: int, ratio: float, multiple: int, latency: bool, iters: int, blocks: int) -> dict:
    """Prune, export, check and time one model; every failure becomes a reason in the result."""
    import torch

    from edgeprune.export.onnx import check_parity, export_onnx
    from edgeprune.models import load_model
    from edgeprune.pruning.cost import model_cost
    from edgeprune.backends import get_runner
    from edgeprune.backends.base.stats import paired_ratio
    from edgeprune.pruning.prune import prune_model

    torch.manual_seed(0)
    res: dict = {"model": name, "family": family(name), "input": [3, size, size], "ratio": ratio,
                 "channel_multiple": multiple, "ok": False}
    stage, t0 = "load", time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"coverage-{name}-"))
    try:
        model = load_model(spec_for(name), input_shape=(3, size, size)).module
        meaningful_init(model, size)
        x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
        stage = "prune"
        t = time.perf_counter()
        pruned = prune_model(model, x[:1], ratio=ratio, multiple=multiple, criterion="l1")
        res["prune_s"] = round(time.perf_counter() - t, 1)
        res["groups"] = len(pruned.widths_before)
        res["groups_pruned"] = pruned.changed
        before, after = model_cost(model, (3, size, size)), model_cost(pruned.model, (3, size, size))
        res.update(params_before=before.params, params_after=after.params, macs_before=before.macs,
                   macs_after=after.macs)
        stage = "forward"
        with torch.no_grad():
            ref = pruned.model(x).numpy()
        res["logit_std"] = float(ref.std())
        stage = "export"
        t = time.perf_counter()
        export_onnx(pruned.model, (3, size, size), 1, work / "pruned.onnx")
        res["export_s"] = round(time.perf_counter() - t, 1)
        stage = "parity"
        runner = get_runner("onnxruntime", threads=None)
        dep_p = runner.prepare(work / "pruned.onnx", work)
        parity = check_parity(ref, runner.infer(dep_p, x.numpy()))
        res["parity"] = parity.to_dict()
        problems = []
        if not parity.ok:
            problems.append(f"parity: max |diff| {parity.max_abs:.2e} (max rel {parity.max_rel:.2e})")
        if not (after.params < before.params and after.macs < before.macs):
            problems.append("pruning removed nothing (params and MACs unchanged)")
        if latency:
            stage = "latency"
            export_onnx(model, (3, size, size), 1, work / "base.onnx")
            dep_b = runner.prepare(work / "base.onnx", work)
            runner.release()
            cand, base = runner.measure_interleaved([dep_p, dep_b], warmup=max(3, iters // 10), iters=iters,
                                                    blocks=blocks)
            r = paired_ratio(cand, base)
            res["latency_ms"] = {"before": base.p50, "after": cand.p50}
            res["speedup"] = 1.0 / r.ratio
            res["speedup_ci"] = [1.0 / r.high, 1.0 / r.low]
        stage = "done"
        res["ok"] = not problems
        if problems:
            res["reason"] = "; ".join(problems)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        res["reason"] = f"{stage}: {type(exc).__name__}: {msg[:300]}"
        res["traceback"] = traceback.format_exc()[-2000:]
    res["stage"] = stage
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="", help="comma-separated names or family prefixes (default: all)")
    ap.add_argument("--timm", action="store_true", help="the timm sample (TIMM_SAMPLE) instead of torchvision")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--channel-multiple", type=int, default=8)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--iters", type=int, default=20, help="timed runs per block")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--timeout", type=int, default=1500, help="seconds per model")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "coverage.json")
    ap.add_argument("--resume", action="store_true", help="keep the models already in --out, run the rest")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # the child process
        import logging
        import warnings

        warnings.simplefilter("ignore")
        logging.basicConfig(level=logging.WARNING)
        print("RESULT " + json.dumps(run_one(args.one, size_for(args.one), args.ratio, args.channel_multiple,
                                            not args.no_latency, args.iters, args.blocks)), flush=True)
        return
    names = [f"timm:{n}" for n in TIMM_SAMPLE] if args.timm else list_models()
    if args.models:
        wanted = [w.strip().removeprefix("timm:") for w in args.models.split(",") if w.strip()]
        names = [n for n in names if any(n.removeprefix("timm:").startswith(w) for w in wanted)]
    done = {}
    if args.resume and args.out.exists():
        doc = json.loads(args.out.read_text())
        done = {r["model"]: r for r in (doc.get("timm", {}) if args.timm else doc).get("models", [])}
    results = [done[n] for n in names if n in done]
    for i, name in enumerate(names, 1):
        if name in done:
            continue
        cmd = [sys.executable, __file__, "--one", name, "--ratio", str(args.ratio), "--channel-multiple",
               str(args.channel_multiple), "--iters", str(args.iters), "--blocks", str(args.blocks)]
        if args.no_latency:
            cmd.append("--no-latency")
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            res = json.loads(line[7:]) if line else {
                "model": name, "family": family(name), "ok": False, "stage": "crash",
                "reason": f"worker exited {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:300]}"}
        except subprocess.TimeoutExpired:
            res = {"model": name, "family": family(name), "ok": False, "stage": "timeout",
                   "reason": f"over {args.timeout} s"}
        res.setdefault("seconds", round(time.perf_counter() - t, 1))
        results.append(res)
        print(f"[{i}/{len(names)}] {row(res)}", flush=True)
        write(args, results, quiet=True)  # after every model: an interrupted sweep keeps what it measured
    write(args, results)


def row(r: dict) -> str:
    def m(v):
        return f"{v / 1e6:8.1f}" if isinstance(v, (int, float)) else "       -"

    sp = f"{r['speedup']:5.2f}x" if "speedup" in r else "    - "
    par = f"{r['parity']['max_abs']:.1e}" if "parity" in r else "   -   "
    status = "pass" if r.get("ok") else f"FAIL ({r.get('reason', '')[:90]})"
    return (f"{r['model']:26s} params {m(r.get('params_before'))} -> {m(r.get('params_after'))} M  "
            f"MACs {m(r.get('macs_before'))} -> {m(r.get('macs_after'))} M  speed-up {sp}  parity {par}  "
            f"{r.get('seconds', 0):6.1f} s  {status}")


def write(args, results: list[dict], quiet: bool = False) -> None:
    fams: dict[str, list[dict]] = {}
    for r in results:
        fams.setdefault(r["family"], []).append(r)
    summary = {}
    for f, rs in fams.items():
        sps = [r["speedup"] for r in rs if "speedup" in r]
        macs = [r["macs_before"] / r["macs_after"] for r in rs if r.get("macs_after")]
        summary[f] = {"models": len(rs), "passed": sum(r["ok"] for r in rs),
                      "median_speedup": statistics.median(sps) if sps else None,
                      "min_speedup": min(sps) if sps else None,
                      "median_macs_reduction": statistics.median(macs) if macs else None}
    passed = sum(r["ok"] for r in results)
    if not quiet:
        print(f"\n{passed}/{len(results)} models pass (prune, export, parity, fewer params and MACs)\n")
        print(f"{'family':16s} {'models':>6s} {'pass':>5s} {'median speed-up':>16s} {'min':>6s} {'MACs /':>7s}")
        for f, s in sorted(summary.items()):
            med = f"{s['median_speedup']:.2f}x" if s["median_speedup"] else "-"
            mn = f"{s['min_speedup']:.2f}x" if s["min_speedup"] else "-"
            mac = f"{s['median_macs_reduction']:.2f}x" if s["median_macs_reduction"] else "-"
            print(f"{f:16s} {s['models']:6d} {s['passed']:5d} {med:>16s} {mn:>6s} {mac:>7s}")
    from edgeprune.targets.devices import _cpu_model as cpu_model
    from edgeprune.pipeline.artifacts import versions

    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host": {"cpu": cpu_model(), "machine": platform.machine(), "python": platform.python_version()},
            "versions": versions(),
            "settings": {"ratio": args.ratio, "channel_multiple": args.channel_multiple, "criterion": "l1",
                         "latency": not args.no_latency, "iters": args.iters, "blocks": args.blocks},
            "passed": passed, "total": len(results), "families": summary,
            "models": [{k: v for k, v in r.items() if k != "traceback"} for r in results],
            "failures": {r["model"]: r.get("traceback", r.get("reason")) for r in results if not r["ok"]}}
    # One file for the benchmark: a torchvision sweep keeps the timm section and a timm run keeps the rest.
    old = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.timm:
        import timm

        part["versions"] = {**part["versions"], "timm": timm.__version__}
        doc = {**old, "benchmark": "coverage", "timm": part}
    else:
        doc = {"benchmark": "coverage", **part, **({"timm": old["timm"]} if "timm" in old else {})}
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    if not quiet:
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
