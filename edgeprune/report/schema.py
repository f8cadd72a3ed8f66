"""The report.json schema version: written by the build (pipeline/loop.py), read by `check` and `report`.

One number for every reader and writer; docs/report-schema.md describes the fields. Bump it when a field a reader
relies on changes meaning or moves, so an old report is refused instead of misread.
"""
from __future__ import annotations

SCHEMA_VERSION = 1
