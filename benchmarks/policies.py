"""Issue-3 figures: accuracy at the same measured latency budgets for each criterion x allocation, with and without
recovery; accuracy-critical (P = 0.5) and memory-constrained (50% / 25% of the unpruned weights) on ResNet-56
trained on digits. Every figure is a real build (prune, recover, export, measure on ONNX Runtime, evaluate the
ONNX artifact). Prints a table, writes JSON and a plot.

One result file: benchmarks/results/policies.json (+ .png). The full grid takes hours, so it is run in parts, and
every part merges its builds into that file: a cell (seed, budget, criterion, allocation, recovery) measured again
replaces the old one, an accuracy-critical or memory-constrained build replaces the one of the same seed and case;
each build records the commit it was measured at. `--fresh` starts the file over; earlier versions live in git.

    .venv/bin/python benchmarks/policies.py --quick          # resnet20, one seed, a few cells (minutes; a temp file)
    .venv/bin/python benchmarks/policies.py                  # the full grid: hours on 2 cores
    .venv/bin/python benchmarks/policies.py --seeds 0 1 2 --budgets 0.35 --criteria l1 --allocations uniform
    .venv/bin/python benchmarks/policies.py --report         # build nothing: print the tables, redraw the plot
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "policies.json"


def run(cfg_kwargs: dict, out: Path) -> dict:
    import edgeprune
    from edgeprune.errors import BudgetNotMet

    t0 = time.perf_counter()
    try:
        report = edgeprune.build(edgeprune.BuildConfig(**cfg_kwargs, out=str(out)), progress=_Quiet()).report
    except BudgetNotMet as exc:
        report = exc.result.report
    f = report["final"]
    return {"budget_met": report["budget_met"], "policy": report["policy"], "stop_reason": report["stop_reason"],
            "accuracy": f["accuracy"], "baseline_accuracy": f["baseline_accuracy"], "latency_ratio": f["latency_ratio"],
            "macs_reduction": f["macs_reduction"], "params_reduction": f["params_reduction"],
            "weights_mb": f["memory"]["weights_bytes"] / 2**20,
            "baseline_weights_mb": report["iterations"][0]["memory"]["weights_bytes"] / 2**20,
            "iterations": len(report["iterations"]) - 1, "seconds": time.perf_counter() - t0}


class _Quiet:
    def stage(self, name, detail=""):
        pass

    def iteration(self, record):
        print(f"    {record['summary']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5, 0.35])
    ap.add_argument("--criteria", nargs="+", default=["activation", "l1", "l2", "bn-scale", "taylor", "random"])
    ap.add_argument("--allocations", nargs="+", default=["uniform", "global", "sensitivity", "latency"])
    ap.add_argument("--recovery", choices=["both", "on", "off"], default="both")
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--channel-multiple", type=int, default=None)
    ap.add_argument("--distill", action="store_true", help="fine-tune with distillation from the unpruned model")
    ap.add_argument("--max-iterations", type=int, default=5)
    ap.add_argument("--skip-policies", action="store_true", help="only the criterion x allocation grid")
    ap.add_argument("--skip-grid", action="store_true", help="only the accuracy-critical and memory-constrained builds")
    ap.add_argument("--policy-iterations", type=int, default=8,
                    help="iteration cap of the accuracy-critical and memory-constrained builds")
    ap.add_argument("--json", default=None, help="the result file to merge into (default: "
                    "benchmarks/results/policies.json; with --quick a temporary file)")
    ap.add_argument("--fresh", action="store_true", help="start --json over instead of merging into it")
    ap.add_argument("--report", nargs="*", metavar="JSON",
                    help="build nothing: merge these results (if any) into --json, print the tables and plot")
    args = ap.parse_args()
    if args.json is None:
        args.json = str(Path(tempfile.mkdtemp()) / "policies.json" if args.quick else RESULT)
    if args.report is not None:
        return report(args.report, Path(args.json))
    if args.quick:
        args.model, args.seeds, args.budgets = "resnet20", [0], [0.5]
        args.criteria, args.allocations, args.recovery = ["activation", "l1"], ["uniform", "global"], "on"
        args.finetune_epochs = 5
    recoveries = {"both": [True, False], "on": [True], "off": [False]}[args.recovery]
    prior = {} if args.fresh or not Path(args.json).is_file() else json.loads(Path(args.json).read_text())
    if prior.get("model", args.model) != args.model:
        raise SystemExit(f"{args.json} holds {prior['model']} builds, not {args.model}: give --fresh or another "
                         "--json")
    run_info = {"commit": _commit(), "args": vars(args)}
    rows, policies = [], []

    def save() -> dict:  # after every build: a stopped run keeps what it measured
        tag = " (distill)" if args.distill else ""
        new = {"grid": rows, "policies": [{**p, "case": p["case"] + tag} for p in policies]}
        merged = merge(prior, new, run_info["commit"])
        result = {"model": args.model, "runs": prior.get("runs", []) + [run_info], **merged,
                  **analyse(merged["grid"])}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return result

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["EDGEPRUNE_CACHE"] = os.environ.get("EDGEPRUNE_CACHE", str(Path(tmp) / "cache"))
        base = {"model": args.model, "max_iterations": args.max_iterations,
                "channel_multiple": args.channel_multiple, "distill": args.distill}
        grid = [] if args.skip_grid else itertools.product(args.seeds, args.budgets, args.criteria,
                                                            args.allocations, recoveries)
        for seed, budget, crit, alloc, rec in grid:
            print(f"seed {seed} budget {budget}x {crit}/{alloc} recovery {'on' if rec else 'off'}", flush=True)
            kw = {**base, "seed": seed, "latency_budget": f"{budget}x", "criterion": crit, "allocation": alloc,
                  "finetune_epochs": args.finetune_epochs if rec else 0, "bn_recalibration": rec}
            rows.append({"seed": seed, "budget": budget, "criterion": crit, "allocation": alloc, "recovery": rec,
                         **run(kw, Path(tmp) / "out")})
            save()
        if not args.skip_policies:
            for seed in args.seeds:
                kw = {**base, "seed": seed, "finetune_epochs": args.finetune_epochs, "criterion": "activation",
                      "max_iterations": args.policy_iterations}
                print(f"seed {seed} accuracy-critical P=0.5", flush=True)
                policies.append({"seed": seed, "case": "accuracy-critical P=0.5",
                                 **run({**kw, "max_accuracy_drop": 0.5}, Path(tmp) / "out")})
                save()
                base_mb = policies[-1]["baseline_weights_mb"]
                for frac in (0.5, 0.25):
                    print(f"seed {seed} memory-constrained {frac:.0%}", flush=True)
                    policies.append({"seed": seed, "case": f"memory-constrained {frac:.0%}", "budget_mb": base_mb * frac,
                                     **run({**kw, "memory_budget_mb": base_mb * frac}, Path(tmp) / "out")})
                    save()
    result = save()
    print_tables(result["grid"], result["policies"], result["summary"], result["comparison"])
    if result["grid"]:
        plot(result["grid"], Path(args.json).with_suffix(".png"))
    print(f"\nwrote {args.json}")


def _commit() -> str | None:
    import subprocess

    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or None


def merge(old: dict, new: dict, source: str | None) -> dict:
    """`new`'s builds over `old`'s: a build of the same cell (seed, budget, criterion, allocation, recovery), or
    policy build of the same seed and case, replaces the old one (a build measured again after a change is not
    averaged with the one from before it); other seeds of a cell add to it (re-measure every seed of a cell after
    a change that affects it). Each new build records `source` (a commit or a file name)."""
    cell = lambda r: (r["seed"], r["budget"], r["criterion"], r["allocation"], r["recovery"])  # noqa: E731
    case = lambda p: (p["seed"], p["case"])  # noqa: E731
    grid, policies = new.get("grid", []), new.get("policies", [])
    cells, cases = {cell(r) for r in grid}, {case(p) for p in policies}
    stamp = {"source": source} if source else {}
    return {"grid": [r for r in old.get("grid", []) if cell(r) not in cells] + [{**r, **stamp} for r in grid],
            "policies": [p for p in old.get("policies", []) if case(p) not in cases]
            + [{**p, **stamp} for p in policies]}


def report(sources: list[str], out: Path) -> None:
    """Merge the results of other files (e.g. runs written elsewhere with --json) into `out`, later ones over
    earlier ones, then print the tables and draw the plot of what `out` holds."""
    result = json.loads(out.read_text()) if out.is_file() else {}
    for src in sources:
        data = json.loads(Path(src).read_text())
        tag = " (distill)" if data.get("args", {}).get("distill") else ""
        data = {**data, "policies": [{**p, "case": p["case"] + tag} for p in data.get("policies", [])]}
        result = {**result, **merge(result, data, Path(src).name)}
    rows, policies = result.get("grid", []), result.get("policies", [])
    result = {**result, **analyse(rows)}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(rows, policies, result["summary"], result["comparison"])
    if rows:
        print("\n" + markdown_table(result["summary"]))
        plot(rows, out.with_suffix(".png"))
    print(f"\nwrote {out}")


def analyse(rows: list[dict]) -> dict:
    summary = summarize(rows)
    return {"summary": summary, "comparison": compare(summary, rows)}


def compare(summary: list[dict], rows: list[dict]) -> list[dict]:
    """Checked per budget with recovery on: is `activation` with its best allocation (the
    most accurate of those measured, chosen on these same runs) at least as accurate as `l1` + `uniform`
    (Torch-Pruning's default), and at least 1 point better at the smallest budget? A cell whose builds did not
    all meet the budget has no mean accuracy to compare. `per_seed` holds the paired differences (same seed,
    same base model and split), so a mean difference can be read against how much it varies between seeds."""
    out = []
    budgets = sorted({s["budget"] for s in summary}, reverse=True)
    for budget in budgets:
        cells = [s for s in summary if s["budget"] == budget and s["recovery"]]
        ref = next((s for s in cells if s["criterion"] == "l1" and s["allocation"] == "uniform"), None)
        act = [s for s in cells if s["criterion"] == "activation" and s["met"] == s["runs"]]
        if ref is None or not act:
            continue
        best = max(act, key=lambda s: s["accuracy_mean"])
        ref_acc = ref["accuracy_mean"] if ref["met"] == ref["runs"] else None
        diff = None if ref_acc is None else best["accuracy_mean"] - ref_acc
        out.append({"budget": budget, "runs": best["runs"], "l1_uniform": ref_acc,
                    "l1_uniform_met": f"{ref['met']}/{ref['runs']}", "activation_allocation": best["allocation"],
                    "activation": best["accuracy_mean"], "difference": diff,
                    "per_seed": _paired(rows, budget, ("activation", best["allocation"]), ("l1", "uniform")),
                    "at_least_as_accurate": None if diff is None else diff >= 0,
                    "one_point_better": None if diff is None or budget != min(budgets) else diff >= 1.0})
    return out


def _paired(rows: list[dict], budget: float, a: tuple[str, str], b: tuple[str, str]) -> dict[int, float]:
    """Accuracy of a minus b per seed, over the seeds where both builds met the budget (recovery on)."""
    def by_seed(key):
        return {r["seed"]: r["accuracy"] for r in rows if r["budget"] == budget and r["recovery"]
                and r["budget_met"] and (r["criterion"], r["allocation"]) == key}
    acc_a, acc_b = by_seed(a), by_seed(b)
    return {seed: acc_a[seed] - acc_b[seed] for seed in sorted(acc_a.keys() & acc_b.keys())}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean accuracy over seeds per budget x criterion x allocation x recovery; unmet builds count as missing."""
    import numpy as np

    out = []
    keys = sorted({(r["budget"], r["criterion"], r["allocation"], r["recovery"]) for r in rows})
    for key in keys:
        cell = [r for r in rows if (r["budget"], r["criterion"], r["allocation"], r["recovery"]) == key]
        met = [r for r in cell if r["budget_met"]]
        out.append({"budget": key[0], "criterion": key[1], "allocation": key[2], "recovery": key[3],
                    "runs": len(cell), "met": len(met),
                    "accuracy_mean": float(np.mean([r["accuracy"] for r in met])) if met else None,
                    "accuracy_std": float(np.std([r["accuracy"] for r in met])) if met else None,
                    "latency_ratio_mean": float(np.mean([r["latency_ratio"] for r in cell]))})
    return out


def print_tables(rows, policies, summary, comparison=()) -> None:
    print(f"\n{'budget':>6} {'criterion':>10} {'allocation':>11} {'recovery':>8} {'met':>5} {'accuracy':>16} {'latency':>8}")
    for s in summary:
        acc = "-" if s["accuracy_mean"] is None else f"{s['accuracy_mean']:.2f} +- {s['accuracy_std']:.2f}"
        print(f"{s['budget']:>6} {s['criterion']:>10} {s['allocation']:>11} {'on' if s['recovery'] else 'off':>8} "
              f"{s['met']}/{s['runs']:<3} {acc:>16} {s['latency_ratio_mean']:>8.3f}")
    if comparison:
        print(f"\n{'budget':>6} {'l1/uniform':>10} {'activation (best allocation)':>30} {'difference':>10}  per seed")
        for c in comparison:
            ref = "missed" if c["l1_uniform"] is None else f"{c['l1_uniform']:.2f}"
            diff = "-" if c["difference"] is None else f"{c['difference']:+.2f}"
            act = f"{c['activation']:.2f} ({c['activation_allocation']})"
            seeds = " ".join(f"{d:+.2f}" for d in c.get("per_seed", {}).values())
            print(f"{c['budget']:>6} {ref:>10} {act:>30} {diff:>10}  {seeds}")
    if policies:
        print(f"\n{'case':>26} {'seed':>4} {'met':>5} {'accuracy':>9} {'base':>6} {'MACs red.':>9} {'params red.':>11} {'weights MB':>10}")
        for p in policies:
            print(f"{p['case']:>26} {p['seed']:>4} {str(p['budget_met']):>5} {p['accuracy']:>9.2f} "
                  f"{p['baseline_accuracy']:>6.2f} {p['macs_reduction']:>8.2f}x {p['params_reduction']:>10.2f}x "
                  f"{p['weights_mb']:>10.3f}")


def markdown_table(summary: list[dict]) -> str:
    """The grid as the README shows it: one row per criterion / allocation / recovery, one column per budget;
    a cell is mean +- std accuracy over the builds that met the budget, the measured latency reached (mean over
    all its builds) in brackets, and how many met where not all did or the cell has fewer builds than others."""
    budgets = sorted({s["budget"] for s in summary}, reverse=True)
    most = max(s["runs"] for s in summary)
    order = lambda seq, x: seq.index(x) if x in seq else len(seq)  # noqa: E731
    keys = sorted({(s["criterion"], s["allocation"], s["recovery"]) for s in summary},
                  key=lambda k: (not k[2], order(CRITERIA_ORDER, k[0]), order(list(ALLOCATION_COLOURS), k[1])))
    lines = ["| criterion / allocation | " + " | ".join(f"{b:g}x" for b in budgets) + " |",
             "|---" * (len(budgets) + 1) + "|"]
    for crit, alloc, rec in keys:
        cells = []
        for b in budgets:
            s = next((s for s in summary if (s["criterion"], s["allocation"], s["recovery"], s["budget"])
                      == (crit, alloc, rec, b)), None)
            if s is None:
                cells.append("-")
                continue
            acc = "none met" if s["accuracy_mean"] is None else f"{s['accuracy_mean']:.2f}" + (
                f" +- {s['accuracy_std']:.2f}" if s["met"] > 1 else "")
            met = "" if s["met"] == s["runs"] == most else f", {s['met']} of {s['runs']} met"
            cells.append(f"{acc} ({s['latency_ratio_mean']:.2f}x{met})")
        lines.append(f"| {crit} / {alloc}{'' if rec else ', no recovery'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CRITERIA_ORDER = ["l1", "activation", "l2", "bn-scale", "taylor", "random"]
ALLOCATION_COLOURS = {"uniform": "tab:blue", "global": "tab:orange", "sensitivity": "tab:green",
                      "latency": "tab:red"}
CRITERION_MARKERS = {"l1": "o", "activation": "s", "l2": "^", "bn-scale": "v", "taylor": "D", "random": "x"}


def plot(rows, path: Path) -> None:
    """One point per build that met its budget: colour = allocation, marker = criterion; builds without
    recovery (all near chance on ResNet-56) in their own panel so they do not squash the scale."""
    from matplotlib.figure import Figure

    panels = [rec for rec in (True, False) if any(r["recovery"] == rec for r in rows)]
    fig = Figure(figsize=(7 if len(panels) == 1 else 11, 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=[2, 1][:len(panels)])[0]
    for ax, rec in zip(axes, panels):
        for crit, alloc in sorted({(r["criterion"], r["allocation"]) for r in rows if r["recovery"] == rec}):
            pts = sorted((r["latency_ratio"], r["accuracy"]) for r in rows if r["budget_met"]
                         and (r["criterion"], r["allocation"], r["recovery"]) == (crit, alloc, rec))
            if pts:
                ax.plot(*zip(*pts), marker=CRITERION_MARKERS.get(crit, "."), linestyle="none", alpha=0.8,
                        color=ALLOCATION_COLOURS.get(alloc), label=f"{crit}/{alloc}")
        ax.set_title("with recovery" if rec else "no recovery (10% is chance)", fontsize=9)
        ax.set_xlabel("measured latency / unpruned (ONNX Runtime CPU)" if rec else "latency / unpruned")
        if not rec:
            ax.set_ylim(0, 100)
        ax.set_ylabel("accuracy of the ONNX artifact (%)")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
