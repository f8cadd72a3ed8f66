"""Kept widths per layer: the nearest multiple of the device's channel multiple, never zero, with half a
multiple as the narrowest width and grouped slices narrowed alike. Pure arithmetic, no torch."""
from __future__ import annotations

import math


DEEPEST_RATIO = 0.98  # the policies' deepest step: every layer at its narrowest allowed width


def round_width(channels: int, ratio: float, multiple: int) -> int:
    """Kept channels after removing `ratio` of `channels`: the nearest multiple of `multiple` (ties keep more),
    never zero. When the multiple is 8 or more, the narrowest width is half a multiple, used only where the
    unrounded width is at or below it (and for every layer at the deepest ratio): a layer narrower than one SIMD
    block is not padded up to it (measured here on AVX-512, multiple 16: ResNet-56 with 8 channels in its first
    stage ran 13-21% faster than with 16). Rounding to it from above would halve a 16-channel layer at ratio
    0.25, where MACs fall much faster than latency; never using it short of the deepest ratio left no model
    between one multiple everywhere and half a multiple everywhere (measured: ResNet-56 at multiple 8 ran 0.36x
    and 0.21x of its unpruned latency, with nothing between for a 0.35x budget to land on)."""
    floor = multiple // 2 if multiple >= 8 else multiple
    if ratio <= 0.0 or channels <= floor:
        return channels
    target = channels * (1.0 - ratio)
    if ratio >= DEEPEST_RATIO or target <= floor:
        return floor
    if channels <= multiple:
        return channels
    candidates = {c for c in range(multiple, channels + 1, multiple)} | {channels}
    return int(min(candidates, key=lambda c: (abs(c - target), -c)))


def group_width(channels: int, ratio: float, multiple: int, channel_groups: int = 1) -> int:
    """round_width for a group whose channels come in `channel_groups` equal slices (grouped conv, heads):
    each slice is narrowed alike, and the total stays a multiple of `multiple` where a slice width allows."""
    if channel_groups <= 1 or channels % channel_groups:
        return round_width(channels, ratio, multiple)
    per = channels // channel_groups
    if per % multiple == 0:
        # Slices already a multiple wide stay so: ONNX Runtime's grouped convolution runs far slower on slices
        # that are not a multiple of the SIMD block (benchmarks/grouped_conv.py, AVX-512: 88 per group ran at
        # 44 GMAC/s, 80 and 96 at 64-66; RegNetX-1.6GF pruned 24 -> 16 per group gained 2.38x). Half a multiple
        # per slice, which round_width allows short of the deepest ratio for ordinary layers, is kept for the
        # deepest ratio here: grouped slices that narrow are not measured.
        kept = round_width(per, ratio, multiple)
        if kept < multiple and ratio < DEEPEST_RATIO:
            kept = multiple
        return channel_groups * kept
    step = max(1, multiple // math.gcd(multiple, channel_groups))
    return channel_groups * round_width(per, ratio, step)
