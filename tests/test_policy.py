"""The latency-sensitive policy and choose_final: pure functions of synthetic attempt histories (no model, no
timing), plus a simulated search over a synthetic latency curve."""
from __future__ import annotations

import math
import random

import pytest

from edgeprune.pipeline.policies import Attempt, LatencySensitivePolicy, Step, Stop, choose_final


def tenths(r: float) -> int:
    """A coarse signature: ratios that round to the same tenth give the same model."""
    return round(r * 10)


def fine(r: float) -> int:
    return round(r * 100000)


def policy(target: float, max_iterations: int = 6, signature=fine, **kw) -> LatencySensitivePolicy:
    return LatencySensitivePolicy(target, max_iterations, signature=signature, **kw)


def att(ratio: float, latency_ratio: float, target: float, signature=fine, accuracy=None, deepest=False) -> Attempt:
    return Attempt(ratio, latency_ratio, latency_ratio <= target, signature(ratio), accuracy, deepest)


# -- first_step ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [1.0, 1.5, 4.0])
def test_first_step_stops_as_met_when_the_unpruned_model_meets_the_budget(target):
    step = policy(target).first_step()
    assert isinstance(step, Stop)
    assert step.budget_met is True


@pytest.mark.parametrize("target", [0.9, 0.7, 0.5, 0.3, 0.1])
def test_first_step_aims_just_under_the_target_with_the_initial_exponent(target):
    step = policy(target).first_step()
    assert isinstance(step, Step)
    assert 0.0 < step.ratio < 0.98
    # latency ~ width^1.5: the guess predicts 95% of the target
    assert (1.0 - step.ratio) ** 1.5 == pytest.approx(0.95 * target, rel=1e-9)


def test_first_step_goes_deeper_for_tighter_budgets():
    ratios = [policy(t).first_step().ratio for t in (0.9, 0.7, 0.5, 0.3, 0.1)]
    assert ratios == sorted(ratios)
    assert len(set(ratios)) == len(ratios)


@pytest.mark.parametrize("target", [1e-3, 1e-6])
def test_first_step_is_capped_at_the_deepest_ratio(target):
    step = policy(target).first_step()
    assert isinstance(step, Step)
    assert step.ratio == pytest.approx(0.98)


# -- next_step: stopping -----------------------------------------------------------------------------------

@pytest.mark.parametrize("latency_ratio", [0.5, 0.48, 0.451])
def test_stops_as_met_when_last_attempt_lands_within_ten_percent_under(latency_ratio):
    step = policy(0.5).next_step([att(0.4, latency_ratio, 0.5)])
    assert isinstance(step, Stop)
    assert step.budget_met is True
    assert "budget met" in step.reason


def test_met_but_far_under_the_budget_does_not_stop():
    """0.3 is more than 10% under 0.5: the policy backs off towards less pruning (better accuracy)."""
    step = policy(0.5).next_step([att(0.6, 0.3, 0.5)])
    assert isinstance(step, Step)
    assert 0.0 < step.ratio < 0.6


def test_landing_check_uses_the_last_attempt_not_an_earlier_one():
    history = [att(0.45, 0.47, 0.5), att(0.2, 0.8, 0.5)]  # the last one is over budget
    step = policy(0.5).next_step(history)
    assert isinstance(step, Step)  # not "budget met" although an earlier attempt landed
    assert 0.2 < step.ratio < 0.45


def test_iteration_cap_without_a_met_attempt():
    p = policy(0.5, max_iterations=2)
    step = p.next_step([att(0.2, 0.9, 0.5), att(0.3, 0.8, 0.5)])
    assert isinstance(step, Stop)
    assert step.budget_met is False
    assert "iteration cap (2)" in step.reason


def test_iteration_cap_with_a_met_attempt_keeps_it():
    p = policy(0.5, max_iterations=2)
    step = p.next_step([att(0.2, 0.9, 0.5), att(0.8, 0.2, 0.5)])  # met, but far under: would go on
    assert isinstance(step, Stop)
    assert step.budget_met is True
    assert "iteration cap" in step.reason


def test_below_the_cap_the_search_goes_on():
    p = policy(0.5, max_iterations=3)
    assert isinstance(p.next_step([att(0.2, 0.9, 0.5), att(0.3, 0.8, 0.5)]), Step)


def test_landing_beats_the_iteration_cap():
    step = policy(0.5, max_iterations=1).next_step([att(0.4, 0.48, 0.5)])
    assert isinstance(step, Stop) and step.budget_met is True
    assert "budget met" in step.reason


def test_stops_unreachable_when_the_deepest_attempt_is_over_budget():
    history = [att(0.5, 0.8, 0.2), att(0.98, 0.6, 0.2, deepest=True)]
    step = policy(0.2).next_step(history)
    assert isinstance(step, Stop)
    assert step.budget_met is False
    assert "unreachable" in step.reason


def test_an_over_budget_attempt_that_is_not_the_deepest_does_not_stop_as_unreachable():
    step = policy(0.2).next_step([att(0.9, 0.6, 0.2)])
    assert isinstance(step, Step)
    assert step.ratio > 0.9


def test_extrapolation_past_the_deepest_ratio_proposes_the_deepest_then_stops():
    p = policy(0.01)
    first = p.next_step([att(0.5, 0.5, 0.01)])
    assert isinstance(first, Step)
    assert first.ratio == pytest.approx(p.max_ratio)
    assert "deepest" in first.reason
    history = [att(0.5, 0.5, 0.01), att(first.ratio, 0.4, 0.01, deepest=True)]
    stop = p.next_step(history)
    assert isinstance(stop, Stop) and stop.budget_met is False and "unreachable" in stop.reason


def test_deepest_ratio_already_tried_is_not_proposed_again():
    """The deepest signature is taken by an attempt not flagged deepest (e.g. coarse channel multiples):
    the policy must stop rather than propose the same model again."""
    p = policy(0.01, signature=tenths)
    history = [att(0.5, 0.5, 0.01, tenths), att(0.97, 0.45, 0.01, tenths)]  # tenths(0.97) == tenths(0.98)
    step = p.next_step(history)
    assert isinstance(step, Stop)
    assert step.budget_met is False


# -- next_step: moving ---------------------------------------------------------------------------------------

def test_over_budget_extrapolates_deeper():
    step = policy(0.5).next_step([att(0.3, 0.8, 0.5)])
    assert isinstance(step, Step)
    assert step.ratio > 0.3
    assert "extrapolated" in step.reason


def test_extrapolation_fits_the_exponent_to_the_last_attempt():
    step = policy(0.5).next_step([att(0.3, 0.8, 0.5)])
    k = math.log(0.8) / math.log(0.7)
    assert (1.0 - step.ratio) ** k == pytest.approx(0.95 * 0.5, rel=1e-6)


def test_extrapolation_moves_at_least_a_tenth_of_what_is_left():
    # 0.47 at ratio 0.4 is barely over 0.46: the fitted model asks for a tiny step; the floor makes it 0.46
    step = policy(0.46).next_step([att(0.4, 0.47, 0.46)])
    assert isinstance(step, Step)
    assert step.ratio >= 0.4 + 0.1 * 0.6 - 1e-12


def test_extrapolation_without_a_usable_fit_uses_the_initial_exponent():
    """A pruned attempt measured slower than the baseline (noise, padding) gives no exponent."""
    step = policy(0.5).next_step([att(0.1, 1.02, 0.5)])
    assert isinstance(step, Step)
    assert 1.0 - (0.95 * 0.5) ** (1 / 1.5) == pytest.approx(step.ratio, rel=1e-6)


def test_extrapolates_from_the_deepest_over_budget_attempt():
    history = [att(0.5, 0.7, 0.4), att(0.2, 0.9, 0.4)]  # the shallow one came last
    step = policy(0.4).next_step(history)
    assert isinstance(step, Step)
    assert step.ratio > 0.5


def test_a_plateau_over_budget_halves_what_is_left():
    # deeper pruning measured no faster (0.357x at 0.741, 0.360x at 0.767, budget 0.35x): the power law fitted on
    # the last attempt asks for a step to about 0.79, still on the plateau; the policy jumps halfway to the deepest
    history = [att(0.52, 0.485, 0.35), att(0.741, 0.357, 0.35), att(0.767, 0.360, 0.35)]
    step = policy(0.35).next_step(history)
    assert isinstance(step, Step)
    assert step.ratio == pytest.approx(0.5 * (0.767 + 0.98))


def test_latency_still_falling_is_no_plateau():
    history = [att(0.52, 0.485, 0.35), att(0.741, 0.40, 0.35), att(0.767, 0.37, 0.35)]
    step = policy(0.35).next_step(history)
    assert isinstance(step, Step)
    assert step.ratio < 0.5 * (0.767 + 0.98)


def test_a_stepwise_latency_curve_is_met_within_the_iteration_cap():
    # latency falls in steps: 0.36x from ratio 0.72 to 0.85, 0.26x beyond; budget 0.35x, six iterations
    def latency(r):
        return 1.0 - 0.9 * r if r < 0.72 else (0.36 if r < 0.85 else 0.26)

    p = policy(0.35, max_iterations=6)
    history, step = [], p.first_step()
    while isinstance(step, Step):
        history.append(att(step.ratio, latency(step.ratio), 0.35))
        step = p.next_step(history)
    assert step.budget_met, [(a.ratio, a.latency_ratio) for a in history]


def test_interpolates_strictly_inside_the_bracket():
    history = [att(0.2, 0.8, 0.5), att(0.6, 0.3, 0.5)]
    step = policy(0.5).next_step(history)
    assert isinstance(step, Step)
    assert 0.2 < step.ratio < 0.6
    assert "interpolated" in step.reason


@pytest.mark.parametrize("over,met", [((0.2, 0.51), (0.6, 0.1)),    # goal right next to the over end
                                      ((0.2, 0.99), (0.6, 0.42))])  # goal right next to the met end
def test_interpolation_is_kept_off_the_bracket_ends(over, met):
    history = [att(*over, 0.5), att(*met, 0.5)]
    step = policy(0.5).next_step(history)
    assert isinstance(step, Step)
    span = met[0] - over[0]
    assert over[0] + 0.1 * span < step.ratio < met[0] - 0.1 * span


def test_interpolation_uses_the_closest_attempts_over_and_under():
    history = [att(0.1, 0.95, 0.5), att(0.8, 0.2, 0.5), att(0.3, 0.75, 0.5), att(0.55, 0.35, 0.5)]
    step = policy(0.5).next_step(history)
    assert isinstance(step, Step)
    assert 0.3 < step.ratio < 0.55


def test_interpolation_without_an_over_budget_attempt_brackets_with_the_unpruned_model():
    step = policy(0.5).next_step([att(0.7, 0.2, 0.5)])
    assert isinstance(step, Step)
    assert 0.0 < step.ratio < 0.7


def test_never_proposes_an_already_tried_signature_when_interpolating():
    history_of = lambda sig: [att(0.3, 0.52, 0.5, sig), att(0.5, 0.3, 0.5, sig)]  # noqa: E731
    raw = policy(0.5).next_step(history_of(fine))
    assert tenths(raw.ratio) == 3  # unconstrained, the fit lands on the model the 0.3 attempt already built
    step = policy(0.5, signature=tenths).next_step(history_of(tenths))
    assert isinstance(step, Step)
    assert tenths(step.ratio) == 4
    assert 0.3 < step.ratio < 0.5


def fifths(r: float) -> int:
    return round(r * 5)


def test_never_proposes_an_already_tried_signature_when_extrapolating():
    raw = policy(0.5).next_step([att(0.3, 0.52, 0.5)])
    assert fifths(raw.ratio) == fifths(0.3)  # unconstrained, the step would rebuild the same model
    step = policy(0.5, signature=fifths).next_step([att(0.3, 0.52, 0.5, fifths)])
    assert isinstance(step, Step)
    assert fifths(step.ratio) != fifths(0.3)
    assert 0.5 < step.ratio < 0.6  # the nearest ratio with other widths


def test_stops_when_every_model_inside_the_bracket_was_tried():
    p = policy(0.5, signature=tenths)
    history = [att(0.3, 0.8, 0.5, tenths), att(0.5, 0.3, 0.5, tenths), att(0.4, 0.6, 0.5, tenths)]
    step = p.next_step(history)  # (0.4, 0.5) holds only signatures 4 and 5, both tried
    assert isinstance(step, Stop)
    assert step.budget_met is True  # the 0.5 attempt meets the budget and is kept
    assert "kept" in step.reason


def test_random_histories_never_repeat_a_signature_and_respect_the_bracket():
    rng = random.Random(1234)
    for _ in range(400):
        target = rng.uniform(0.15, 0.95)
        sig = (lambda m: (lambda r: round(r * m)))(rng.choice([10, 16, 32, 64, 1000]))
        p = policy(target, max_iterations=50, signature=sig)
        history = []
        for _ in range(rng.randint(1, 5)):
            r = rng.uniform(0.0, 0.97)
            lat = max(0.01, (1 - r) ** rng.uniform(0.5, 2.0) * rng.uniform(0.9, 1.1))
            history.append(att(r, lat, target, sig))
        step = p.next_step(history)
        if isinstance(step, Stop):
            continue
        assert sig(step.ratio) not in {a.signature for a in history}
        assert 0.0 < step.ratio <= p.max_ratio
        over = [a.ratio for a in history if not a.met]
        met = [a.ratio for a in history if a.met]
        if over:
            assert step.ratio > max(over)
        if met:
            assert step.ratio < min(met)


# -- choose_final ----------------------------------------------------------------------------------------------

def test_choose_final_picks_the_most_accurate_attempt_meeting_the_budget():
    history = [att(0.2, 0.7, 0.5, accuracy=97.0),   # over budget: never shipped, however accurate
               att(0.6, 0.3, 0.5, accuracy=80.0),
               att(0.45, 0.42, 0.5, accuracy=90.0),
               att(0.5, 0.38, 0.5, accuracy=85.0)]
    assert choose_final(history) == 2


def test_choose_final_ties_within_the_resolution_go_to_the_least_pruned():
    history = [att(0.6, 0.30, 0.5, accuracy=90.0), att(0.4, 0.45, 0.5, accuracy=89.5),
               att(0.5, 0.40, 0.5, accuracy=89.7)]
    assert choose_final(history, accuracy_resolution=0.5) == 1  # highest latency ratio among the tied
    assert choose_final(history, accuracy_resolution=0.35) == 2
    assert choose_final(history, accuracy_resolution=0.0) == 0


def test_choose_final_resolution_does_not_admit_clearly_worse_attempts():
    history = [att(0.6, 0.30, 0.5, accuracy=90.0), att(0.4, 0.45, 0.5, accuracy=85.0)]
    assert choose_final(history, accuracy_resolution=100.0 / 360) == 0


def test_choose_final_without_accuracy_ships_the_least_pruned_met_attempt():
    history = [att(0.6, 0.30, 0.5), att(0.4, 0.47, 0.5), att(0.2, 0.8, 0.5)]
    assert choose_final(history) == 1


@pytest.mark.parametrize("history", [[], [att(0.2, 0.8, 0.5, accuracy=99.0), att(0.3, 0.7, 0.5, accuracy=98.0)]])
def test_choose_final_is_none_when_nothing_met(history):
    assert choose_final(history) is None


# -- simulated search ----------------------------------------------------------------------------------------

def synthetic_latency(r: float) -> float:
    return (1.0 - r) ** 1.3 * 0.85 + 0.15  # a fixed overhead the width does not shrink


def grid64(r: float) -> int:
    return round(r * 64)


def simulate(target: float, max_iterations: int = 8):
    p = LatencySensitivePolicy(target, max_iterations, signature=grid64)
    history: list[Attempt] = []
    step = p.first_step()
    while isinstance(step, Step):
        # the model actually built is the one on the grid
        r = grid64(step.ratio) / 64
        lat = synthetic_latency(r)
        history.append(Attempt(step.ratio, lat, lat <= target, grid64(step.ratio), accuracy=100.0 - 60.0 * r,
                               deepest=grid64(step.ratio) == grid64(p.max_ratio)))
        step = p.next_step(history)
    return history, step


def test_simulated_search_meets_half_latency_in_few_attempts():
    history, stop = simulate(0.5)
    assert isinstance(stop, Stop) and stop.budget_met is True
    assert len(history) <= 4
    final = choose_final(history)
    assert final is not None
    assert 0.45 <= history[final].latency_ratio <= 0.5


@pytest.mark.parametrize("target", [0.25, 0.35, 0.7, 0.85])
def test_simulated_search_lands_for_other_targets(target):
    history, stop = simulate(target)
    assert isinstance(stop, Stop) and stop.budget_met is True
    assert len({a.signature for a in history}) == len(history)
    final = choose_final(history)
    assert 0.9 * target <= history[final].latency_ratio <= target


def test_simulated_search_reports_an_unreachable_budget():
    """The curve never goes under its fixed 0.15 overhead."""
    history, stop = simulate(0.1, max_iterations=20)
    assert isinstance(stop, Stop) and stop.budget_met is False
    assert "unreachable" in stop.reason
    assert history[-1].deepest
    assert choose_final(history) is None


# -- a known defect -------------------------------------------------------------------------------------------

def resnet20_widths_at_16(r: float) -> tuple[int, ...]:
    """The loop's signature for resnet20 (stage widths 16, 32, 64) at channel multiple 16 (AVX-512 CPU)."""
    from edgeprune.pruning.prune import round_width

    return tuple(round_width(n, r, 16) for n in (16, 32, 64))


def test_first_step_never_rebuilds_the_unpruned_model():
    p = policy(0.9, signature=resnet20_widths_at_16)
    step = p.first_step()
    assert isinstance(step, Step)
    assert resnet20_widths_at_16(step.ratio) != resnet20_widths_at_16(0.0)


def test_extrapolation_falls_back_to_the_deepest_step_when_nothing_else_is_new():
    # widths stop changing above ratio 0.6 except at the deepest step (half a multiple): an attempt at 0.63 over
    # budget must lead to the deepest step, not to "nothing reachable".
    def coarse(r):
        return "deepest" if r >= 0.98 else min(round(r, 1), 0.6)

    p = LatencySensitivePolicy(0.5, 6, signature=coarse)
    step = p.next_step([Attempt(0.63, 0.503, False, coarse(0.63))])
    assert isinstance(step, Step) and step.ratio == pytest.approx(0.98)
