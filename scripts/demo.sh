#!/usr/bin/env bash
# The README's first command: install (once), then the main job on the offline TRANSFER scenario, as two
# Prefect flows (cropmap transfer): train-model on the labelled northern source TSRC (real Victoria
# train spectra in the May-Nov season; a slim CPU CropNet), then map-country on the southern target TTGT
# (two UTM zones, Victoria test spectra 15 days late, never trained on) with that checkpoint: cubes through
# the STAC code, predictions in the model's window moved six months, zone and national COG mosaics, a STAC
# item, a quicklook, and the target's OA, macro-F1 and per-class F1 against its held-back reference.
# About 4 minutes on 2 cores (3 min 38 s measured from empty folders; docs/demo.md, docs/results/transfer.md).
#   bash scripts/demo.sh [--augment none|all|...] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# no Prefect server configured: Prefect starts a temporary local one for this run; on a fresh machine
# its first database migration can take longer than Prefect's default 20 s wait
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}
# a machine without ../shared/data fetches the Victoria series the scenario is made of (pinned commit and
# SHA-256, cropmap/io/data.py) into ~/.cache/cropmap; offline, the error names the file's public source
export CROPMAP_DOWNLOAD=${CROPMAP_DOWNLOAD:-1}
# Dask's scheduler/worker INFO lines would bury the flow's own log; warnings still show
export DASK_LOGGING__DISTRIBUTED=${DASK_LOGGING__DISTRIBUTED:-warning}
exec .venv/bin/cropmap transfer "$@"
