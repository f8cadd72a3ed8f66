"""Issue-3 policies: accuracy-critical (adaptive steps, revert-and-retry), memory-constrained, auto and combined
budgets; per-layer allocation; distillation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import RESNET_SHAPE
from edgeprune.config import BuildConfig
from edgeprune.errors import BudgetNotMet, ConfigError
from edgeprune.pipeline.policies import AccuracyCriticalPolicy, Attempt, Step, Stop, choose_fastest
from edgeprune.pruning.allocation import Allocator
from edgeprune.pruning.prune import prunable_widths, round_width

EXAMPLE = torch.zeros(1, *RESNET_SHAPE)


def fine(r: float):
    return round(r * 100)


def acc_attempt(ratio, accuracy, baseline=99.0, tol=0.5, latency=None):
    return Attempt(ratio, latency if latency is not None else 1 - ratio, baseline - accuracy <= tol, fine(ratio),
                   accuracy)


# -- config: which policy the budgets ask for -------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, policy", [
    ({}, "latency-sensitive"),
    ({"max_accuracy_drop": 0.5}, "accuracy-critical"),
    ({"memory_budget_mb": 1.0}, "memory-constrained"),
    ({"latency_budget": "0.5x", "memory_budget_mb": 1.0}, "latency-sensitive"),
    ({"latency_budget": "0.5x", "max_accuracy_drop": 1.0}, "latency-sensitive"),
    ({"policy": "accuracy-critical"}, "accuracy-critical"),
])
def test_auto_policy_from_budgets(kwargs, policy):
    assert BuildConfig(**kwargs).effective_policy == policy


def test_policy_defaults_and_refusals():
    assert BuildConfig().latency_budget == "0.5x"
    assert BuildConfig(max_accuracy_drop=1.0).latency_budget is None  # accuracy alone is no latency build
    assert BuildConfig(policy="accuracy-critical").max_accuracy_drop == 0.5
    with pytest.raises(ConfigError, match="memory-budget-mb"):
        BuildConfig(policy="memory-constrained")
    for bad in ({"max_accuracy_drop": -1}, {"memory_budget_mb": 0}, {"memory_budget_mb": "lots"},
                {"allocation": "magic"}, {"policy": "fastest"}, {"memory_metric": "disk"}):
        with pytest.raises(ConfigError):
            BuildConfig(**bad)


# -- accuracy-critical: adaptive steps -------------------------------------------------------------------------

def test_accuracy_critical_steps_grow_with_margin_and_revert_on_failure():
    p = AccuracyCriticalPolicy(0.5, 99.0, 10, fine, first=0.2)
    first = p.first_step()
    assert isinstance(first, Step) and first.ratio == pytest.approx(0.2, abs=0.01)
    # no accuracy lost: the next step is larger than the first
    h = [acc_attempt(0.2, 99.0)]
    s = p.next_step(h)
    assert isinstance(s, Step) and s.ratio - 0.2 > 0.2
    # that step breaks the tolerance: back to 0.2, half the failed step
    h.append(acc_attempt(s.ratio, 97.0))
    s2 = p.next_step(h)
    assert isinstance(s2, Step) and 0.2 < s2.ratio < h[-1].ratio
    assert s2.ratio == pytest.approx(0.2 + (h[-1].ratio - 0.2) / 2, abs=0.02)
    assert "back to" in s2.reason


def test_accuracy_critical_small_margin_gives_small_step():
    p = AccuracyCriticalPolicy(0.5, 99.0, 10, fine, first=0.2)
    wide = p.next_step([acc_attempt(0.2, 99.0)])
    narrow = p.next_step([acc_attempt(0.2, 98.6)])  # 0.4 of 0.5 points used
    assert narrow.ratio - 0.2 < wide.ratio - 0.2


def test_accuracy_critical_stops_when_the_boundary_is_located():
    p = AccuracyCriticalPolicy(0.5, 99.0, 10, fine, min_step=0.02)
    stop = p.next_step([acc_attempt(0.40, 99.0), acc_attempt(0.41, 90.0)])
    assert isinstance(stop, Stop) and stop.budget_met and "boundary" in stop.reason


def test_accuracy_critical_never_met_and_cap():
    p = AccuracyCriticalPolicy(0.5, 99.0, 2, fine)
    stop = p.next_step([acc_attempt(0.3, 50.0), acc_attempt(0.15, 60.0)])
    assert isinstance(stop, Stop) and not stop.budget_met


def test_choose_fastest_ignores_attempts_beyond_tolerance():
    h = [acc_attempt(0.2, 99.0, latency=0.8), acc_attempt(0.5, 98.8, latency=0.5), acc_attempt(0.7, 90.0, latency=0.3)]
    assert choose_fastest(h) == 1


# -- allocation ------------------------------------------------------------------------------------------------

def test_uniform_allocation_is_round_width(resnet20_base):
    a = Allocator(resnet20_base, EXAMPLE, 8, "uniform")
    full = prunable_widths(resnet20_base, EXAMPLE)
    assert a.widths(0.5) == {n: round_width(c, 0.5, 8) for n, c in full.items()}
    assert a.widths(0.0) == full


def test_global_allocation_prunes_unevenly_and_monotonically(resnet20_base):
    a = Allocator(resnet20_base, EXAMPLE, 4, "global")
    full = prunable_widths(resnet20_base, EXAMPLE)
    totals = [sum(a.widths(r).values()) for r in (0.0, 0.2, 0.4, 0.6)]
    assert totals[0] == sum(full.values())
    assert all(x >= y for x, y in zip(totals, totals[1:])) and totals[-1] < totals[0]
    w = a.widths(0.5)
    fractions = {n: w[n] / full[n] for n in full}
    assert len(set(round(f, 2) for f in fractions.values())) > 1  # not one ratio for all
    assert all(v % 4 == 0 and v >= 4 for v in w.values())


def test_sensitivity_allocation_spares_sensitive_groups(resnet20_base):
    # a fake accuracy: damaging conv1's group (the stem, coupled to layer1's residual stream) costs 30 points,
    # anything else nothing; the allocation must prune that group less than the others.
    full = prunable_widths(resnet20_base, EXAMPLE)

    def evaluate(model):
        return 99.0 - (30.0 if model.conv1.out_channels < full["conv1"] else 0.0)

    a = Allocator(resnet20_base, EXAMPLE, 4, "sensitivity", evaluate=evaluate)
    assert a.sensitivity["conv1"] == pytest.approx(30.0)
    w = a.widths(0.5)
    others = [w[n] / full[n] for n in full if n != "conv1"]
    assert w["conv1"] / full["conv1"] > max(others)


def test_sensitivity_allocation_needs_data(resnet20_base):
    with pytest.raises(ConfigError, match="sensitivity"):
        Allocator(resnet20_base, EXAMPLE, 4, "sensitivity")


def test_latency_allocation_prunes_harder_where_the_measured_time_goes(resnet20_base):
    # a fake runtime: narrowing layer3's groups saves 20% each, anything else 1%; the allocation must cut
    # layer3 deeper than the rest, from the measurements alone.
    full = prunable_widths(resnet20_base, EXAMPLE)
    probed = []

    def measure(widths):
        (name,) = [n for n in full if widths[n] != full[n]]  # one group narrowed per probe
        probed.append(name)
        return 0.80 if name.startswith("layer3") else 0.99

    a = Allocator(resnet20_base, EXAMPLE, 4, "latency", measure=measure)
    assert sorted(probed) == sorted(full)
    assert a.latency_saving[probed[0]] == pytest.approx(0.20 if probed[0].startswith("layer3") else 0.01)
    w = a.widths(0.4)
    l3 = [w[n] / full[n] for n in full if n.startswith("layer3")]
    rest = [w[n] / full[n] for n in full if not n.startswith("layer3")]
    assert l3 and rest and max(l3) < min(rest)
    assert a.describe()["latency_saving"] == a.latency_saving


def test_latency_scales_treat_noise_as_the_floor_and_stay_bounded():
    from edgeprune.pruning.allocation import latency_scales

    full = {"a": 64, "b": 64, "c": 64, "tiny": 4}
    scales = latency_scales(full, 8, {"a": 0.30, "b": -0.02, "c": 0.003, "tiny": 0.0})
    assert scales["tiny"] == 1.0  # cannot be narrowed at multiple 8: not probed, not scaled
    assert scales["b"] == scales["c"]  # a negative saving (noise) and one under the floor are the same
    assert scales["a"] == 2.5 and scales["b"] == 0.25  # bounded


def test_latency_allocation_needs_a_runtime(resnet20_base):
    with pytest.raises(ConfigError, match="latency allocation"):
        Allocator(resnet20_base, EXAMPLE, 4, "latency")


# -- end to end (small, fast builds) ---------------------------------------------------------------------------

FAST = dict(model="resnet20", input_shape=(1, 16, 16), train_epochs=1, finetune_epochs=1, measure_blocks=2,
            measure_iters=20)


@pytest.fixture
def fast(tmp_path, edgeprune_cache):
    return lambda **kw: BuildConfig(**{**FAST, "out": str(tmp_path / "out"), **kw})


@pytest.mark.slow
def test_memory_constrained_build_meets_half_the_weights(fast):
    import edgeprune

    probe = edgeprune.build(fast(latency_budget="10x", out=fast().out + "-probe"))
    base_mb = probe.report["iterations"][0]["memory"]["weights_bytes"] / 2**20
    result = edgeprune.build(fast(memory_budget_mb=round(base_mb * 0.5, 4), max_iterations=4))
    r = result.report
    assert r["policy"] == "memory-constrained" and r["budget_met"]
    assert r["constraints"]["memory"]["final_mb"] <= base_mb * 0.5
    assert r["final"]["accuracy"] is not None
    assert all(set(it["checks"]) == {"memory"} for it in r["iterations"])


@pytest.mark.slow
def test_accuracy_critical_build_reports_its_policy_and_tolerance(fast):
    import edgeprune

    result = edgeprune.build(fast(max_accuracy_drop=100.0, max_iterations=2))  # any accuracy is within 100
    r = result.report
    assert r["policy"] == "accuracy-critical" and r["budget"] is None and r["budget_met"]
    assert r["constraints"]["accuracy"]["max_drop"] == 100.0
    assert r["final"]["macs"] < r["iterations"][0]["macs"]


@pytest.mark.slow
def test_unmeetable_combination_keeps_the_best_attempt_marked(fast):
    import edgeprune

    cfg = fast(latency_budget="0.3x", max_accuracy_drop=0.0, finetune_epochs=0, max_iterations=2)
    with pytest.raises(BudgetNotMet) as info:
        edgeprune.build(cfg)
    report = json.loads((info.value.result.out / "report.json").read_text())
    assert report["budget_met"] is False
    assert set(report["constraints"]) == {"latency", "accuracy"}
    assert "no attempt meets every constraint" in report["stop_reason"]


def test_accuracy_tolerance_without_scorable_data_is_refused(fast, tmp_path):
    import edgeprune

    factory = tmp_path / "net.py"
    factory.write_text("import torch.nn as nn\n"
                       "def make():\n"
                       "    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),\n"
                       "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))\n")
    with pytest.raises(ConfigError, match="accuracy tolerance"):
        edgeprune.build(fast(model=f"{factory}:make", max_accuracy_drop=0.5))
    assert not (tmp_path / "out").exists()


def test_accuracy_tolerance_the_unpruned_artifact_already_fails_is_a_broken_export(fast, tmp_path, monkeypatch):
    # the unpruned model scores 10 points more in PyTorch than its ONNX artifact does in the runtime: no pruning
    # can meet a 0.5-point tolerance, and the build must say the export is at fault, not search
    import edgeprune
    from edgeprune.errors import ParityError
    from edgeprune.training import Trainer

    real = Trainer.accuracy_torch
    monkeypatch.setattr(Trainer, "accuracy_torch", lambda self, model, data: real(self, model, data) + 10.0)
    with pytest.raises(ParityError, match="export is broken"):
        edgeprune.build(fast(max_accuracy_drop=0.5))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_latency_allocation_build_times_each_group_on_the_runtime(fast):
    import edgeprune

    result = edgeprune.build(fast(allocation="latency", latency_budget="10x", max_iterations=1))
    alloc = result.report["allocation"]
    widths = result.report["iterations"][0]["widths"]
    assert alloc["allocation"] == "latency"
    assert set(alloc["latency_saving"]) == set(widths)
    assert all(-1.0 < v < 1.0 for v in alloc["latency_saving"].values())
    assert len({round(v, 3) for v in alloc["scales"].values()}) > 1  # measured, so not all alike


@pytest.mark.parametrize("scale", [0.25, 1.0, 2.5])
def test_scaled_ratio_is_monotonic_and_reaches_deep_for_any_scale(scale):
    from edgeprune.pruning.prune import DEEPEST_RATIO
    from edgeprune.pruning.allocation import scaled_ratio

    rs = [scaled_ratio(r, scale) for r in (0.0, 0.3, 0.6, 0.9, 0.97)]
    assert rs[0] == 0.0 and all(a < b or a == b == max(rs) for a, b in zip(rs, rs[1:]))
    assert max(rs) < DEEPEST_RATIO  # the deepest step itself stays the allocation's own (every group narrowest)
    assert scaled_ratio(0.5, 1.0) == pytest.approx(0.5)
    assert scaled_ratio(0.97, scale) > 0.58  # even a quarter scale keeps well under half at the edge of the search


def test_scaled_allocations_reach_every_groups_narrowest_width_at_the_deepest_step(resnet20_base):
    from edgeprune.pruning.prune import DEEPEST_RATIO

    full = prunable_widths(resnet20_base, EXAMPLE)
    a = Allocator(resnet20_base, EXAMPLE, 8, "latency",
                  measure=lambda w: 0.8 if w["conv1"] != full["conv1"] else 1.0)
    assert min(a.scales.values()) < 1.0 < max(a.scales.values())
    assert a.widths(DEEPEST_RATIO) == {n: round_width(c, DEEPEST_RATIO, 8) for n, c in full.items()}


def test_global_allocation_reaches_every_groups_narrowest_width_at_the_deepest_step(resnet20_base):
    # ranked by a quantile, a group whose scores are spread keeps its strongest channels past where the others
    # have reached their narrowest; the deepest step must still be every group at its narrowest
    from edgeprune.pruning.prune import DEEPEST_RATIO

    full = prunable_widths(resnet20_base, EXAMPLE)
    a = Allocator(resnet20_base, EXAMPLE, 8, "global")
    widest = max(full, key=full.get)
    a.scores[widest] = 1e3 + np.arange(len(a.scores[widest]))  # its channels all outrank every other group's
    narrowest = {n: round_width(c, DEEPEST_RATIO, 8) for n, c in full.items()}
    assert a._global(DEEPEST_RATIO)[widest] > narrowest[widest]  # what the quantile alone gives
    assert a.widths(DEEPEST_RATIO) == narrowest
