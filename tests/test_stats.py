from __future__ import annotations

import math

import numpy as np
import pytest

from edgeprune.backends.base.stats import LatencyStats, paired_ratio, summarize, within_noise


def _blocks(rng, n_blocks, iters, center, jitter=0.02, drift=None):
    """Synthetic timings: block b is centred on center * drift[b], with multiplicative jitter."""
    drift = drift if drift is not None else np.ones(n_blocks)
    return [list(center * drift[b] * (1 + jitter * rng.standard_normal(iters))) for b in range(n_blocks)]


def test_summarize_basic():
    rng = np.random.default_rng(0)
    blocks = _blocks(rng, 6, 50, 2.0)
    s = summarize(blocks, warmup=5, batch_size=2, runtime="test", threads=1)
    allt = np.concatenate(blocks)
    assert s.n == 300 and s.blocks == 6 and s.warmup == 5
    assert s.p50 == pytest.approx(np.median([np.median(b) for b in blocks]))
    assert s.block_medians == pytest.approx(tuple(np.median(b) for b in blocks))
    assert s.mean == pytest.approx(allt.mean())
    assert s.min == pytest.approx(allt.min())
    assert s.min <= s.p50 <= s.p90 <= s.p99 <= allt.max()
    assert s.mad > 0
    assert (s.batch_size, s.runtime, s.threads) == (2, "test", 1)


def test_summarize_p50_robust_to_one_slow_block():
    rng = np.random.default_rng(1)
    drift = np.ones(10)
    clean = summarize(_blocks(rng, 10, 40, 1.0, drift=drift), warmup=0)
    rng = np.random.default_rng(1)
    drift[7] = 1.6  # one block 60% slow, as a shared machine produces
    noisy = summarize(_blocks(rng, 10, 40, 1.0, drift=drift), warmup=0)
    assert abs(noisy.p50 - clean.p50) / clean.p50 < 0.01
    assert noisy.mean / clean.mean > 1.04  # the mean does move
    assert noisy.spread > 0.5 > clean.spread


def test_summarize_skips_empty_blocks_and_rejects_none():
    s = summarize([[1.0, 2.0, 3.0], [], [2.0, 2.0]], warmup=0)
    assert s.blocks == 2 and s.n == 5
    with pytest.raises(ValueError):
        summarize([[], []], warmup=0)
    with pytest.raises(ValueError):
        summarize([], warmup=0)


def test_stats_dict_roundtrip():
    s = summarize([[1.0, 1.2], [1.1, 1.3], [0.9, 1.0]], warmup=2, versions={"onnxruntime": "x"}, extra={"k": 1})
    d = s.to_dict()
    assert d["spread"] == pytest.approx(s.spread)
    assert isinstance(d["block_medians"], list)
    assert LatencyStats.from_dict(d) == s
    for name in ("p50", "p90", "p99", "mean"):
        assert s.percentile(name) == getattr(s, name)


def test_spread_single_block_is_zero():
    assert summarize([[1.0, 5.0]], warmup=0).spread == 0.0


# -- paired ratio ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("true_ratio", [0.4, 0.75, 1.0, 1.3])
def test_paired_ratio_recovers_true_ratio_under_drift(true_ratio):
    rng = np.random.default_rng(42)
    drift = np.linspace(1.0, 1.8, 8)  # the machine slows down over the run; interleaving cancels it
    ref = summarize(_blocks(rng, 8, 30, 2.0, drift=drift), warmup=0)
    cand = summarize(_blocks(rng, 8, 30, 2.0 * true_ratio, drift=drift), warmup=0)
    r = paired_ratio(cand, ref)
    assert r.pairs == 8
    assert r.low <= r.ratio <= r.high
    assert r.low <= true_ratio <= r.high
    assert r.ratio == pytest.approx(true_ratio, rel=0.03)
    assert r.high - r.low < 0.1 * true_ratio
    assert r.to_dict()["pairs"] == 8


def test_paired_ratio_deterministic_with_seed():
    rng = np.random.default_rng(3)
    ref = summarize(_blocks(rng, 6, 20, 1.0, jitter=0.1), warmup=0)
    cand = summarize(_blocks(rng, 6, 20, 0.5, jitter=0.1), warmup=0)
    assert paired_ratio(cand, ref, seed=7) == paired_ratio(cand, ref, seed=7)
    wide, narrow = paired_ratio(cand, ref, confidence=0.99), paired_ratio(cand, ref, confidence=0.5)
    assert wide.low <= narrow.low <= narrow.high <= wide.high


def test_paired_ratio_few_blocks():
    ref = summarize([[2.0], [4.0]], warmup=0)
    cand = summarize([[1.0], [3.0]], warmup=0)
    r = paired_ratio(cand, ref)
    assert r.pairs == 2
    assert (r.low, r.high) == (pytest.approx(0.5), pytest.approx(0.75))
    assert r.ratio == pytest.approx(0.625)


def test_paired_ratio_unequal_blocks_pairs_the_common_prefix():
    ref = summarize([[1.0]] * 5, warmup=0)
    cand = summarize([[0.5]] * 3, warmup=0)
    r = paired_ratio(cand, ref)
    assert r.pairs == 3 and r.ratio == pytest.approx(0.5)


def test_paired_ratio_no_blocks():
    empty = LatencyStats(n=0, warmup=0, blocks=0, mean=0, p50=0, p90=0, p99=0, min=0, mad=0, block_medians=())
    ref = summarize([[1.0]], warmup=0)
    with pytest.raises(ValueError):
        paired_ratio(empty, ref)


# -- within_noise ---------------------------------------------------------------------------------------------
def test_within_noise_floor():
    steady = summarize([[1.0]] * 4, warmup=0)  # spread 0: the 3% floor applies
    assert within_noise(1.02, 1.0, steady)
    assert within_noise(0.98, 1.0, steady)
    assert not within_noise(1.05, 1.0, steady)
    assert not within_noise(0.9, 1.0, steady)
    assert within_noise(1.05, 1.0, steady, floor=0.06)


def test_within_noise_widens_with_spread():
    noisy = summarize([[1.0], [1.2], [1.0], [1.0]], warmup=0)  # spread 0.2 -> half of it, 10%
    assert noisy.spread == pytest.approx(0.2)
    assert within_noise(1.08, 1.0, noisy)
    assert not within_noise(1.12, 1.0, noisy)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_within_noise_non_finite(value):
    assert not within_noise(value, 1.0, summarize([[1.0]], warmup=0))
