"""Profiling: target devices, host detection, runners, latency statistics and cost (MACs, params, bytes)."""
