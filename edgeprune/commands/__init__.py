"""Click commands that live outside cli.py (registered at its end): check, report."""
