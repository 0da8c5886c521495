#!/usr/bin/env bash
# The README's first command: install (once), then the whole job on the offline DEMO country with the
# map-country Prefect flow: build the demo catalog if missing, train a slim CPU CropNet on the west
# half, build cubes through the STAC code, predict, mosaic, and print where the COGs, STAC item,
# quicklook and accuracy report are, with the OA on the east half. Under 10 minutes on 2 cores.
#   bash scripts/demo.sh [--out DIR] [--tile-limit N]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# no Prefect server configured: Prefect starts a temporary local one for this run
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
# Dask's scheduler/worker INFO lines would bury the flow's own log; warnings still show
export DASK_LOGGING__DISTRIBUTED=${DASK_LOGGING__DISTRIBUTED:-warning}
exec .venv/bin/cropmap demo run "$@"
