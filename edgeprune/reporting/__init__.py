"""Reports for people (report.md) built from report.json."""
