#!/usr/bin/env bash
# The two commands of the README, each installing what it needs first:
#   ./run.sh build [edgeprune build options]   -> the default build (resnet20 on digits, device cpu, 0.5x budget)
#   ./run.sh test  [pytest options]            -> the test suite
# Anything else after ./run.sh is passed to the edgeprune CLI (./run.sh devices, ./run.sh profile --device cpu).
# Everything is installed into .venv (override with EDGEPRUNE_VENV) with the exact versions of constraints.txt.
set -euo pipefail
cd "$(dirname "$0")"
venv="${EDGEPRUNE_VENV:-.venv}"
stamp="$venv/.edgeprune-installed"
if [ ! -f "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "run.sh: installing edgeprune and its pinned dependencies into $venv (first run: a few minutes, about 6 GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
    touch "$stamp"
fi
cmd="${1:-build}"
[ $# -gt 0 ] && shift
case "$cmd" in
    test) exec "$venv/bin/python" -m pytest "$@" ;;
    *) exec "$venv/bin/edgeprune" "$cmd" "$@" ;;
esac
