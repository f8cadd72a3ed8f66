"""The one timing schedule every runner uses: artifacts timed in interleaved blocks, A B A B ..., with the order
rotated each block so position effects (clock ramps, cache and thermal state) fall on each artifact alike.

Standard library only: the ONNX Runtime worker imports it in a process that must not pay for torch or numpy.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

Times = list[list[list[float]]]  # per artifact, per block, the milliseconds of each run


def interleave_blocks(timers: Sequence[Callable[[], float]], warmup: int, iters: int, blocks: int,
                      min_block_s: float = 0.0) -> Times:
    """Time several artifacts in interleaved blocks; per artifact, a list of blocks of per-run milliseconds.

    Each timer (one run, returning its milliseconds) runs `warmup` times first. A block keeps running past
    `iters` until it has lasted `min_block_s`.
    """
    if iters < 1 or blocks < 1:
        raise ValueError("iters and blocks must be at least 1")
    for timer in timers:
        for _ in range(warmup):
            timer()
    return interleave([lambda t=timer: time_block(t, iters, min_block_s) for timer in timers], blocks)


def interleave(run_block: Sequence[Callable[[], list[float]]], blocks: int) -> Times:
    """Call each artifact's `run_block` (one block of timed runs) once per block, in rotating order.

    For runtimes that time a whole block themselves (trtexec: one process per block, warm-up included).
    """
    if blocks < 1:
        raise ValueError("blocks must be at least 1")
    times: Times = [[] for _ in run_block]
    for b in range(blocks):
        for i in block_order(b, len(run_block)):
            times[i].append([float(t) for t in run_block[i]()])
    return times


def block_order(block: int, n: int) -> list[int]:
    """Who runs when in block `block` of `n` artifacts: block 0 is 0..n-1, each next block starts one later."""
    return [(block + k) % n for k in range(n)]


def time_block(timer: Callable[[], float], iters: int, min_block_s: float = 0.0) -> list[float]:
    """`iters` runs of `timer`, and more until the block has lasted `min_block_s`."""
    block: list[float] = []
    started = time.perf_counter()
    while len(block) < iters or time.perf_counter() - started < min_block_s:
        block.append(float(timer()))
    return block


__all__ = ["Times", "block_order", "interleave", "interleave_blocks", "time_block"]
