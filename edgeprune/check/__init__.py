"""Regression check: a new build's report.json against a baseline's, metric by metric, aware of timing noise.

Exit codes (CHECK_EXIT): 0 every metric within its threshold, 1 at least one regression, 2 the two cannot be
compared (a missing or malformed report, another schema_version, another device / runtime / precision / batch size
/ input shape without `allow_mismatch`). A report that cannot be read is never a pass.

Latency is judged in one of two ways:

* From the stored reports (default). Each report's p50 is the median of its block medians, and `latency.spread`
  ((max - min) / median of the block medians) is what that run's noise looked like. A latency increase is a
  regression only when it exceeds the threshold AND the larger of the two recorded spreads: an increase that
  one report's own blocks could show between themselves is not evidence. Stored numbers from two runs (maybe two
  hosts) share no drift, so this is the weaker mode; CI should re-measure.
* `remeasure`: both artifacts' model.onnx are timed here in one run, interleaved; the rule is in remeasure.py.

Modules: thresholds (metrics, thresholds, options), judge (reports, what may be compared, the verdict),
remeasure (timing both artifacts here), render (summary, markdown, JUnit, output files).
"""
from __future__ import annotations

from ..report.schema import SCHEMA_VERSION
from .judge import CHECK_EXIT, CannotCompare, cannot_compare_result, load_report, mismatches, run_check
from .remeasure import decide_paired, remeasure_latency
from .render import render_junit, render_markdown, step_summary_path, write_outputs
from .thresholds import METRICS, CheckOptions, Threshold, parse_threshold

__all__ = ["CHECK_EXIT", "CannotCompare", "CheckOptions", "METRICS", "SCHEMA_VERSION", "Threshold",
           "cannot_compare_result", "decide_paired", "load_report", "mismatches", "parse_threshold",
           "remeasure_latency", "render_junit", "render_markdown", "run_check", "step_summary_path",
           "write_outputs"]
