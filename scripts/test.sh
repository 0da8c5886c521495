#!/usr/bin/env bash
# The test command of the README: creates .venv if missing, installs, checks the layers of
# docs/architecture.md (lint-imports, [tool.importlinter] in pyproject.toml), then runs the whole suite
# (slow end-to-end tests included) in 2 processes. Extra arguments go to pytest, e.g. `-m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/lint-imports --no-cache
export PREFECT_HOME="${PREFECT_HOME:-$PWD/.cache/prefect}" PREFECT_SERVER_ANALYTICS_ENABLED=false
# Prefect creates its home without parents (a fresh clone has no .cache/): an ephemeral server there
# would fail with "unable to open database file"
mkdir -p "$PREFECT_HOME"
# Two pytest processes (pytest-xdist), one test file each at a time, so that a module's fixtures (a
# Dask cluster, a reference run) are built once: much of the suite waits on servers and subprocesses,
# and one process left a core idle ~40 % of the time. CROPMAP_TEST_WORKERS=0 runs in this process.
exec .venv/bin/python -m pytest -n "${CROPMAP_TEST_WORKERS:-2}" --dist loadfile "$@"
