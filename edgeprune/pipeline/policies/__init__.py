"""Policies steer the loop: a first step, then after each measured attempt the next step or a stop with its
reason, and at the end the attempt to ship. One module per policy, each registered by name in
edgeprune.registry.POLICIES (the CLI's --policy choices read it)."""
from __future__ import annotations

from ...registry import POLICIES
from .accuracy import AccuracyCriticalPolicy
from .base import Attempt, Measured, Policy, Step, Stop, choose_fastest, choose_final
from .latency import LatencySensitivePolicy
from .memory import MemoryConstrainedPolicy

__all__ = ["AccuracyCriticalPolicy", "Attempt", "LatencySensitivePolicy", "Measured", "MemoryConstrainedPolicy",
           "POLICIES", "Policy", "Step", "Stop", "choose_fastest", "choose_final"]
