"""benchmarks/policies.py's bookkeeping: merging runs (a cell measured again replaces the old one), the mean over
seeds that only counts builds that met the budget, and the issue's activation-vs-l1 comparison with its paired
per-seed differences. Pure logic on hand-made rows; the builds themselves are the benchmark's."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("policies_bench", ROOT / "benchmarks" / "policies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(seed, budget, crit, alloc, acc, met=True, recovery=True, ratio=None):
    return {"seed": seed, "budget": budget, "criterion": crit, "allocation": alloc, "recovery": recovery,
            "budget_met": met, "accuracy": acc, "latency_ratio": ratio if ratio is not None else budget - 0.05}


def test_mean_counts_only_builds_that_met_the_budget(bench):
    rows = [row(0, 0.5, "l1", "uniform", 98.0), row(1, 0.5, "l1", "uniform", 10.0, met=False),
            row(2, 0.5, "l1", "uniform", 96.0)]
    (cell,) = bench.summarize(rows)
    assert (cell["runs"], cell["met"]) == (3, 2)
    assert cell["accuracy_mean"] == pytest.approx(97.0) and cell["accuracy_std"] == pytest.approx(1.0)


def test_comparison_picks_activations_best_allocation_and_pairs_by_seed(bench):
    rows = [row(s, 0.35, "l1", "uniform", a) for s, a in enumerate([97.0, 98.0, 99.0])]
    rows += [row(s, 0.35, "activation", "uniform", a) for s, a in enumerate([96.0, 96.0, 96.0])]
    rows += [row(s, 0.35, "activation", "global", a) for s, a in enumerate([98.0, 98.5, 99.0])]
    rows += [row(s, 0.35, "activation", "latency", a) for s, a in enumerate([99.9, 99.9, 99.9])]
    rows[-1]["budget_met"] = False  # the most accurate cell, but one build missed: no mean to compare
    rows += [row(s, 0.35, "activation", "global", 50.0, recovery=False) for s in range(3)]
    (c,) = bench.analyse(rows)["comparison"]
    assert c["activation_allocation"] == "global"
    assert c["difference"] == pytest.approx(0.5) and c["at_least_as_accurate"] and not c["one_point_better"]
    assert c["per_seed"] == pytest.approx({0: 1.0, 1: 0.5, 2: 0.0})


def test_one_point_is_asked_only_at_the_smallest_budget_and_a_missed_reference_has_no_difference(bench):
    rows = [row(s, b, "l1", "uniform", 97.0, met=(b != 0.7)) for s in range(2) for b in (0.7, 0.5)]
    rows += [row(s, b, "activation", "uniform", 99.0) for s in range(2) for b in (0.7, 0.5)]
    high, low = bench.analyse(rows)["comparison"]
    assert high["budget"] == 0.7 and high["difference"] is None and high["l1_uniform_met"] == "0/2"
    assert high["one_point_better"] is None and high["per_seed"] == {}
    assert low["budget"] == 0.5 and low["one_point_better"] is True


def test_report_merge_replaces_a_remeasured_build_adds_new_seeds_and_tags_distilled_policies(bench, tmp_path, capsys):
    old = {"grid": [row(s, 0.5, "l1", "uniform", 90.0) for s in range(3)] + [row(0, 0.5, "activation", "uniform", 95.0)],
           "policies": []}
    new = {"args": {"distill": True}, "grid": [row(s, 0.5, "l1", "uniform", 98.0) for s in range(3)]
           + [row(s, 0.5, "activation", "uniform", 97.0) for s in (1, 2)],  # more seeds of a cell: added
           "policies": [{"case": "accuracy-critical P=0.5", "seed": 0, "budget_met": True, "accuracy": 99.0,
                         "baseline_accuracy": 99.0, "macs_reduction": 4.0, "params_reduction": 4.0,
                         "weights_mb": 1.0}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    out = tmp_path / "merged.json"
    bench.report([str(tmp_path / "old.json"), str(tmp_path / "new.json")], out)
    merged = json.loads(out.read_text())
    l1 = [r for r in merged["grid"] if r["criterion"] == "l1"]
    assert len(l1) == 3 and {r["accuracy"] for r in l1} == {98.0} and {r["source"] for r in l1} == {"new.json"}
    act = sorted((r["seed"], r["accuracy"], r["source"]) for r in merged["grid"] if r["criterion"] == "activation")
    assert act == [(0, 95.0, "old.json"), (1, 97.0, "new.json"), (2, 97.0, "new.json")]
    assert merged["policies"][0]["case"] == "accuracy-critical P=0.5 (distill)"
    assert out.with_suffix(".png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


def test_markdown_table_has_a_row_per_cell_kind_and_says_when_builds_missed(bench):
    rows = [row(s, b, "l1", "uniform", 98.0 + s, ratio=b - 0.1) for s in range(3) for b in (0.7, 0.35)]
    rows += [row(s, 0.35, "activation", "global", 97.0, met=s != 2) for s in range(3)]
    rows += [row(0, 0.35, "l1", "uniform", 10.0, recovery=False)]
    lines = bench.markdown_table(bench.summarize(rows)).splitlines()
    assert lines[0] == "| criterion / allocation | 0.7x | 0.35x |"
    assert lines[2] == "| l1 / uniform | 99.00 +- 0.82 (0.60x) | 99.00 +- 0.82 (0.25x) |"
    assert lines[3] == "| activation / global | - | 97.00 +- 0.00 (0.30x, 2 of 3 met) |"
    assert lines[4] == "| l1 / uniform, no recovery | - | 10.00 (0.30x, 1 of 1 met) |"


def test_a_run_merges_into_the_one_result_file_replacing_what_it_measured_again(bench):
    old = {"grid": [row(0, 0.5, "l1", "uniform", 90.0), row(1, 0.5, "l1", "uniform", 91.0)],
           "policies": [{"seed": 0, "case": "memory-constrained 50%", "accuracy": 90.0},
                        {"seed": 1, "case": "memory-constrained 50%", "accuracy": 91.0}]}
    new = {"grid": [row(0, 0.5, "l1", "uniform", 98.0), row(0, 0.35, "l1", "uniform", 97.0)],
           "policies": [{"seed": 0, "case": "memory-constrained 50%", "accuracy": 99.0}]}
    merged = bench.merge(old, new, "abc1234")
    grid = sorted((r["seed"], r["budget"], r["accuracy"], r.get("source")) for r in merged["grid"])
    assert grid == [(0, 0.35, 97.0, "abc1234"), (0, 0.5, 98.0, "abc1234"), (1, 0.5, 91.0, None)]
    assert sorted((p["seed"], p["accuracy"]) for p in merged["policies"]) == [(0, 99.0), (1, 91.0)]
