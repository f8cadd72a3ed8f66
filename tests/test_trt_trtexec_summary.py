"""trtexec's performance summary as it reaches edgeprune in the field: whole, wrapped, joined into one line by a
paste, or cut short by a killed process or a truncated paste. A cut or joined-and-garbled summary is reported as
incomplete with what is missing; it never comes back as a partial result that looks whole.

The fixtures (tests/fixtures/trt/) are lines written for these tests in trtexec's documented output format
(8.6: no transfers, JetPack; 10.13: x86 with transfers); the numbers are made up."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgeprune.errors import EdgepruneError
from edgeprune.backends.trt.trtexec_output import SUMMARY_LINES, parse_trtexec_summary

FIXTURES = Path(__file__).parent / "fixtures" / "trt"
LOGS = {name: (FIXTURES / f"trtexec_{name}_summary.log").read_text() for name in ("86", "10")}
EVERY_KEY = {key for key, _ in SUMMARY_LINES.values()} - {"end_to_end"}


@pytest.mark.parametrize("name", sorted(LOGS))
def test_whole_summary_has_every_line(name):
    s = parse_trtexec_summary(LOGS[name])
    assert set(s) == EVERY_KEY and "incomplete" not in s
    assert set(s["latency"]) == {"min", "max", "mean", "median", "p90", "p95", "p99"}


def test_values_of_the_86_summary():
    s = parse_trtexec_summary(LOGS["86"])
    assert s["throughput_qps"] == pytest.approx(812.5)
    assert s["latency"]["median"] == pytest.approx(1.225) and s["gpu_compute"]["p99"] == pytest.approx(1.299)
    assert s["h2d"]["max"] == 0.0
    assert s["total_gpu_compute_s"] == pytest.approx(2.9948)  # the advice lines below it are not mixed in


def _summary_lines(text: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Performance summary" in line)
    return lines[start:start + 1 + len(SUMMARY_LINES) - 1]  # the header and its 8 lines


@pytest.mark.parametrize("name", sorted(LOGS))
@pytest.mark.parametrize("joiner", [" ", "", "  \t"])
def test_lines_joined_into_one_read_the_same(name, joiner):
    """A paste that lost its line breaks, with or without the log prefixes, gives the same figures."""
    lines = _summary_lines(LOGS[name])
    joined = joiner.join(lines)
    assert parse_trtexec_summary(joined) == parse_trtexec_summary(LOGS[name])
    bare = joiner.join(re.sub(r"^\[[^\]]*\] \[I\] ", "", line) for line in lines)
    assert parse_trtexec_summary(bare) == parse_trtexec_summary(LOGS[name])


@pytest.mark.parametrize("name", sorted(LOGS))
def test_a_cut_anywhere_is_incomplete_or_whole(name):
    """Cut the log at every character of the summary (a killed trtexec, a truncated paste): either the parser
    says what is missing, or everything was already there and the result equals the whole one."""
    text = LOGS[name]
    whole = parse_trtexec_summary(text)
    start = text.index("=== Performance summary ===") + len("=== Performance summary ===")
    end = text.index("Total GPU Compute Time")
    end = text.index("\n", end)
    for cut in range(start, end + 1):
        part = text[:cut]
        try:
            got = parse_trtexec_summary(part)
        except EdgepruneError as exc:
            assert "incomplete" in exc.message, (cut, exc.message)
            loose = parse_trtexec_summary(part, require_complete=False)
            assert loose["incomplete"], cut
            continue
        assert got == whole, f"cut at {cut} ({text[cut - 30:cut]!r}) returned a partial result as whole"


def test_a_cut_says_what_is_missing():
    text = LOGS["10"]
    cut = text[:text.index("median", text.index("GPU Compute Time")) + len("median = 0.05")]
    with pytest.raises(EdgepruneError) as err:
        parse_trtexec_summary(cut)
    msg = err.value.message
    assert "the GPU Compute Time line stops after min, max, mean" in msg and "'median = 0.05'" in msg
    assert "no D2H Latency, Total Host Walltime, Total GPU Compute Time lines" in msg
    loose = parse_trtexec_summary(cut, require_complete=False)
    assert loose["latency"]["p99"] == pytest.approx(0.0903)  # what was whole is still read
    assert loose["gpu_compute"] == pytest.approx({"min": 0.0492, "max": 0.0911, "mean": 0.0531})
    assert any("GPU Compute Time" in p for p in loose["incomplete"])


def test_a_value_cut_before_its_unit_is_not_taken():
    text = "=== Performance summary ===\n[I] Throughput: 20480.5 qps\n[I] Latency: min = 0.071 ms, max = 0.12"
    loose = parse_trtexec_summary(text, require_complete=False)
    assert loose["latency"] == {"min": 0.071}  # not max = 0.12: the number may have been longer
    assert "the Latency line stops after min (then 'max = 0.12')" in loose["incomplete"][0]


def test_two_summaries_joined_are_refused():
    lines = _summary_lines(LOGS["86"])
    with pytest.raises(EdgepruneError, match="Latency appears twice"):
        parse_trtexec_summary(" ".join(lines) + " " + " ".join(lines[1:3]))


def test_pre_85_end_to_end_line_is_read_when_present():
    lines = _summary_lines(LOGS["86"])
    lines.insert(3, "[I] End-to-End Host Latency: min = 2.4 ms, max = 2.8 ms, mean = 2.46 ms, median = 2.45 ms, "
                    "percentile(99%) = 2.6 ms")
    s = parse_trtexec_summary("\n".join(lines))
    assert s["end_to_end"] == pytest.approx({"min": 2.4, "max": 2.8, "mean": 2.46, "median": 2.45, "p99": 2.6})
    assert s["latency"]["median"] == pytest.approx(1.225)  # "End-to-End Host Latency" is not read as "Latency"


def test_no_summary_at_all_is_an_error_even_when_lenient():
    with pytest.raises(EdgepruneError, match="no '=== Performance summary ==='"):
        parse_trtexec_summary("&&&& FAILED TensorRT.trtexec [TensorRT v8602]", require_complete=False)
