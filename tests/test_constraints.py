"""The build's decisions as pure functions (edgeprune/pipeline/constraints.py), on hand-made records."""
from __future__ import annotations

import pytest

from edgeprune.errors import ConfigError
from edgeprune.pipeline import constraints
from edgeprune.pipeline.constraints import Budgets
from edgeprune.pipeline.policies import AccuracyCriticalPolicy, LatencySensitivePolicy, Measured


def rec(latency_ms=1.0, ratio=None, weights_mb=1.0, peak_mb=None, accuracy=95.0, kind="attempt", checks=None):
    return {"kind": kind, "ratio": 0.3, "macs": 2e6, "latency_ms": latency_ms, "latency": {"p50": latency_ms},
            "latency_ratio": None if ratio is None else {"ratio": ratio},
            "memory": {"weights_bytes": weights_mb * 2**20, "peak_mb": peak_mb}, "accuracy": accuracy,
            **({"checks": checks} if checks is not None else {})}


def test_a_relative_budget_is_judged_on_the_paired_ratio_not_the_attempts_own_latency():
    b = Budgets(latency_kind="relative", target_ms=1.0, target_ratio=0.5)
    # 0.9 ms alone would pass a 1.0 ms target; the paired ratio says it is 0.6x of the baseline: over
    assert constraints.checks(rec(latency_ms=0.9), b, paired_ratio=0.6) == {"latency": False}
    assert constraints.checks(rec(latency_ms=1.9), b, paired_ratio=0.49) == {"latency": True}


def test_an_absolute_budget_is_judged_on_the_percentile_in_ms():
    b = Budgets(latency_kind="absolute", target_ms=1.0, target_ratio=0.5, percentile="p50")
    assert constraints.checks(rec(latency_ms=0.99), b, paired_ratio=0.9) == {"latency": True}
    assert constraints.checks(rec(latency_ms=1.01), b, paired_ratio=0.1) == {"latency": False}


def test_memory_and_accuracy_checks_and_the_peak_metric_needs_a_measurement():
    b = Budgets(memory_budget_mb=0.5, max_accuracy_drop=1.0, base_accuracy=96.0, base_memory_mb=1.0)
    assert constraints.checks(rec(weights_mb=0.5, accuracy=95.0), b, 0.5) == {"memory": True, "accuracy": True}
    assert constraints.checks(rec(weights_mb=0.6, accuracy=94.9), b, 0.5) == {"memory": False, "accuracy": False}
    assert constraints.checks(rec(accuracy=None), b, 0.5)["accuracy"] is False
    with pytest.raises(ConfigError, match="--memory-metric weights"):
        constraints.memory_mb(rec(peak_mb=None), "peak", "trtexec")


def test_cost_scales_every_bound_to_the_tightest_target():
    b = Budgets(latency_kind="relative", target_ratio=0.5, memory_budget_mb=0.25, base_memory_mb=1.0)
    assert b.bound_targets() == {"latency": 0.5, "memory": 0.25}
    # memory at its budget and latency under: cost exactly the tightest target (0.25)
    assert constraints.cost(rec(ratio=0.4, weights_mb=0.25), b) == pytest.approx(0.25)
    # latency at 0.6 (1.2x its budget) dominates: 1.2 x 0.25
    assert constraints.cost(rec(ratio=0.6, weights_mb=0.2), b) == pytest.approx(0.3)
    assert constraints.cost(rec(ratio=0.6), Budgets()) == 0.0


def test_only_an_attempt_within_its_latency_and_memory_bounds_is_worth_fine_tuning():
    assert constraints.worth_finetuning({"latency": True, "accuracy": False})
    assert not constraints.worth_finetuning({"latency": True, "memory": False, "accuracy": True})


def test_each_policy_reads_a_measured_attempt_through_its_own_objective():
    m = Measured(ratio=0.4, latency_ratio=0.7, cost=0.45, bounds_met=True, all_met=False, accuracy=90.0)
    lat = LatencySensitivePolicy(0.5, 6, signature=lambda r: r).observe(m)
    acc = AccuracyCriticalPolicy(0.5, 99.0, 6, signature=lambda r: r).observe(m)
    assert (lat.latency_ratio, lat.met) == (0.45, True)     # the constrained cost; accuracy is its objective
    assert (acc.latency_ratio, acc.met) == (0.7, False)     # the latency; accuracy is its constraint


def test_when_nothing_meets_every_constraint_each_policy_ships_its_closest():
    history = [Measured(0.2, 0.8, 0.9, False, False, 97.0), Measured(0.5, 0.5, 0.6, False, False, 90.0),
               Measured(0.3, 0.7, 0.8, False, False, 97.0)]
    assert LatencySensitivePolicy(0.5, 6, signature=lambda r: r).closest(history) == 1   # lowest cost
    assert AccuracyCriticalPolicy(0.5, 99.0, 6, signature=lambda r: r).closest(history) == 0  # most accurate, least pruned
    assert LatencySensitivePolicy(0.5, 6, signature=lambda r: r).choose(history) is None


def test_the_summary_names_what_failed():
    text = constraints.summary(rec(ratio=0.6, checks={"latency": False, "memory": True}))
    assert text.endswith("fails latency") and "0.600x of baseline" in text


def test_a_reduced_precision_graph_off_in_parity_cannot_ship_but_is_still_worth_fine_tuning():
    b = Budgets(latency_kind="relative", target_ms=1.0, target_ratio=0.5)
    r = {**rec(ratio=0.4), "precision_parity": {"ok": False}}
    checks = constraints.checks(r, b, 0.4)
    assert checks == {"latency": True, "precision_parity": False}
    assert constraints.worth_finetuning(checks)  # fine-tuning changes the weights the parity is read on
    assert constraints.failed_names([{"checks": checks}]) == ["reduced-precision parity with fp32"]
    assert "precision_parity" not in constraints.checks(rec(ratio=0.4), b, 0.4)  # fp32: no such gate


def test_a_precision_search_starts_from_its_own_unpruned_model():
    b = Budgets(latency_kind="relative", target_ms=1.0, target_ratio=0.5, memory_budget_mb=0.5,
                base_memory_mb=1.0)
    int8 = {"latency": 0.55, "memory": 0.26}  # the unpruned model in int8, against fp32
    # its unpruned model costs 1.0 of its own search; the target is where every bound meets its budget
    assert constraints.cost(rec(ratio=0.55, weights_mb=0.26), b, int8) == pytest.approx(1.0)
    assert 1.0 / constraints.scale(b, int8) == pytest.approx(0.5 / 0.55)
    met = rec(ratio=0.5, weights_mb=0.2)
    assert constraints.cost(met, b, int8) == pytest.approx(1.0 / constraints.scale(b, int8))
    # without a start (fp32) the cost is what it always was: the tightest bound, scaled to it
    assert constraints.cost(rec(ratio=0.5, weights_mb=1.0), b) == pytest.approx(1.0)
