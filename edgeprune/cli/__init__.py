"""The command line: a thin click layer over the library, one module per command, with rich progress on a
terminal. `main` is the console script (`edgeprune`) and `python -m edgeprune`."""
from __future__ import annotations

from .build import build
from .check import check
from .devices import devices
from .main import main
from .profile import profile
from .report import report

for _command in (build, devices, profile, check, report):
    main.add_command(_command)

__all__ = ["main"]
