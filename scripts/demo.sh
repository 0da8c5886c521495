#!/usr/bin/env bash
# The README's first command: install (once), then the main job, the map-country Prefect flow, on the
# offline DEMO country: build the demo catalog if missing, train a slim CPU CropNet on the west half,
# build cubes through the STAC code, predict, mosaic, and print where the COGs, STAC item, quicklook and
# accuracy report are, with the OA on the east half. A few minutes on 2 cores.
#   bash scripts/demo.sh [--out DIR] [--tile-limit N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# no Prefect server configured: Prefect starts a temporary local one for this run; on a fresh machine
# its first database migration can take longer than Prefect's default 20 s wait
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}
# Dask's scheduler/worker INFO lines would bury the flow's own log; warnings still show
export DASK_LOGGING__DISTRIBUTED=${DASK_LOGGING__DISTRIBUTED:-warning}
exec .venv/bin/python -m flows.map_country "$@"
