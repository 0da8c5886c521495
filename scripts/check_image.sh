#!/usr/bin/env bash
# The image on its own: build it, start from it a Dask scheduler, two Dask workers and a Prefect worker,
# deploy with the Kubernetes user's deployment definition (deploy/prefect.yaml), run map-country on the
# DEMO and the TRANSFER pair through those deployments, run the same two locally from .venv, and compare
# the maps pixel for pixel. Exit 0 only if every run Completed and every map is identical.
# Not a CI test (it needs a Docker daemon and takes ~15-25 min on 2 cores); run it by hand, as root:
#   bash scripts/check_image.sh
# Needs Debian's docker.io (and debootstrap for the base image), the data folder ($CROPMAP_DATA_DIR or
# ../shared/data) and .venv (scripts/bootstrap.sh). Every connection stays on 127.0.0.1: dockerd runs with
# no bridge, every container and the build use --network host. No registry is used:
# - base image: $PYTHON_IMAGE (default local/debian-py311:bookworm), made with debootstrap from Debian's
#   packages when missing (Python 3.11 from Debian);
# - wheels: a wheelhouse ($CROPMAP_WHEELHOUSE, default $DOCK/wheelhouse) made with `pip wheel` from
#   deploy/constraints.txt on this machine (torch==2.13.0: the CPU wheel pip finds here), served on
#   127.0.0.1 to `docker build --build-arg WHEELHOUSE=...`, which installs with --no-index.
# Both are reused when present (the wheelhouse while deploy/constraints.txt and pyproject.toml are unchanged).
# Environment: DOCK (dockerd's folder, default $HOME/dock), CROPMAP_CHECK_IMAGE (default cropmap:check),
# CROPMAP_CHECK_KEEP=1 keeps the work folder (kept anyway on failure), CROPMAP_CHECK_RUN_TIMEOUT (s, per run,
# default 1800). Containers, the Prefect server, the wheel server and a dockerd this script started are
# stopped on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
PREFECT="$ROOT/.venv/bin/prefect"
DOCK="${DOCK:-$HOME/dock}"
IMAGE="${CROPMAP_CHECK_IMAGE:-cropmap:check}"
BASE="${PYTHON_IMAGE:-local/debian-py311:bookworm}"
WHEELHOUSE="${CROPMAP_WHEELHOUSE:-$DOCK/wheelhouse}"
DATA="$(cd "${CROPMAP_DATA_DIR:-$ROOT/../shared/data}" && pwd)"
RUN_TIMEOUT="${CROPMAP_CHECK_RUN_TIMEOUT:-1800}"
TAG="cropmap-check-$$"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cropmap-check.XXXXXX")"
LOGS="$WORK/logs"
mkdir -p "$LOGS" "$DOCK"
[ -x "$PY" ] || { echo "check_image: $PY missing (bash scripts/bootstrap.sh)" >&2; exit 2; }

say() { printf '\n=== %s  %s\n' "$(date +%H:%M:%S)" "$*"; }
SUMMARY=()
note() { SUMMARY+=("$*"); }
FAILED=0
fail() { echo "check_image: FAIL: $*" >&2; note "FAIL: $*"; FAILED=1; }

# ------------------------------------------------------------------ cleanup
STARTED_DOCKERD=0; PIDS=()
cleanup() {
    local rc=$?
    set +e
    if command -v docker >/dev/null && [ -n "${DOCKER_HOST:-}" ]; then
        for c in $(docker ps -aq --filter "label=$TAG" 2>/dev/null); do
            name=$(docker inspect -f '{{.Name}}' "$c" | tr -d /)
            docker logs "$c" > "$LOGS/$name.log" 2>&1
            docker rm -f "$c" >/dev/null
        done
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do timeout 20 tail --pid="$p" -f /dev/null 2>/dev/null; done
    if [ "$STARTED_DOCKERD" = 1 ]; then
        kill "$(cat "$DOCK/pid")" 2>/dev/null
        timeout 30 tail --pid="$(cat "$DOCK/pid" 2>/dev/null || echo 1)" -f /dev/null 2>/dev/null
    fi
    if [ "$rc" = 0 ] && [ "$FAILED" = 0 ] && [ "${CROPMAP_CHECK_KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    else
        echo "check_image: work folder kept: $WORK (container logs in $LOGS)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local limit=$1 what=$2; shift 2
    local end=$(( $(date +%s) + limit ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$end" ]; then echo "check_image: timed out after ${limit}s waiting for $what" >&2; return 1; fi
        sleep 2
    done
}

# ------------------------------------------------------------------ dockerd (vfs, no bridge)
say "dockerd"
export DOCKER_HOST="unix://$DOCK/docker.sock"
if ! timeout 10 docker info >/dev/null 2>&1; then
    dockerd --storage-driver=vfs --bridge=none --iptables=false --ip-masq=false \
        --data-root "$DOCK/data" --pidfile "$DOCK/pid" -H "$DOCKER_HOST" > "$DOCK/dockerd.log" 2>&1 &
    STARTED_DOCKERD=1
    wait_for 60 dockerd timeout 10 docker info
fi
docker version --format 'docker {{.Server.Version}}, storage driver '"$(docker info -f '{{.Driver}}')"

# ------------------------------------------------------------------ base image (debootstrap)
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    [ "$BASE" = local/debian-py311:bookworm ] || { echo "check_image: base image $BASE missing (no registry here)" >&2; exit 2; }
    say "base image $BASE from debootstrap"
    rm -rf "$DOCK/rootfs"
    timeout 900 debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-pip,ca-certificates \
        bookworm "$DOCK/rootfs" > "$LOGS/debootstrap.log" 2>&1 || { tail -20 "$LOGS/debootstrap.log"; exit 1; }
    tar -C "$DOCK/rootfs" -c . | docker import - "$BASE"
    rm -rf "$DOCK/rootfs"
fi
echo "base image: $BASE ($(docker image inspect -f '{{.Size}}' "$BASE" | awk '{printf "%.0f MB", $1/1e6}'))"

# ------------------------------------------------------------------ wheelhouse (pip wheel, pinned)
stamp="$(cat deploy/constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$WHEELHOUSE/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "wheelhouse $WHEELHOUSE (pip wheel: torch==2.13.0, .[flows] and the image-only pins of deploy/constraints.txt)"
    rm -rf "$WHEELHOUSE"; mkdir -p "$WHEELHOUSE"
    src="$WORK/src"; mkdir -p "$src"; cp -r pyproject.toml README.md cropmap "$src/"
    extra=$(sed -n '/^# image-only/,$p' deploy/constraints.txt | grep -v '^#' | cut -d= -f1 | tr '\n' ' ')
    # shellcheck disable=SC2086
    (cd "$src" && timeout 1800 "$PY" -m pip wheel --quiet --wheel-dir "$WHEELHOUSE" \
        --constraint "$ROOT/deploy/constraints.txt" "torch==2.13.0" ".[flows]" $extra) \
        > "$LOGS/wheelhouse.log" 2>&1 || { tail -20 "$LOGS/wheelhouse.log"; exit 1; }
    rm -f "$WHEELHOUSE"/cropmap-*.whl   # the image builds the project from its source
    echo "$stamp" > "$WHEELHOUSE/.stamp"
fi
echo "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"

# ------------------------------------------------------------------ docker build
say "docker build $IMAGE (base $BASE, wheels from the wheelhouse, --no-index)"
# a fixed port when free: the WHEELHOUSE build argument is part of the build cache's key
wport="${CROPMAP_WHEELHOUSE_PORT:-8765}"
"$PY" -c "import socket; socket.create_server(('127.0.0.1', $wport)).close()" 2>/dev/null || wport=$(free_port)
(cd "$WHEELHOUSE" && exec "$PY" -m http.server "$wport" --bind 127.0.0.1 > "$LOGS/wheelhouse-http.log" 2>&1) &
PIDS+=($!)
wait_for 30 "the wheel server" curl -sf "http://127.0.0.1:$wport/"
t0=$(date +%s)
if ! timeout 3600 docker build --network host --build-arg PYTHON_IMAGE="$BASE" \
        --build-arg WHEELHOUSE="http://127.0.0.1:$wport/" -t "$IMAGE" . > "$LOGS/build.log" 2>&1; then
    tail -30 "$LOGS/build.log"; exit 1
fi
BUILD_S=$(( $(date +%s) - t0 ))
cached=$(grep -c 'Using cache' "$LOGS/build.log" || true)
kill "${PIDS[-1]}" 2>/dev/null || true
SIZE_MB=$(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f", $1/1e6}')
note "image $IMAGE: ${SIZE_MB} MB, built in ${BUILD_S} s ($cached cached steps) on $BASE"
echo "image: ${SIZE_MB} MB, build ${BUILD_S} s ($cached steps from the cache)"
docker image inspect -f 'user {{.Config.User}}, workdir {{.Config.WorkingDir}}, entrypoint {{.Config.Entrypoint}}' "$IMAGE"

# ------------------------------------------------------------------ Prefect server (host, 127.0.0.1)
say "Prefect server"
PP=$(free_port)
export PREFECT_HOME="$WORK/prefect-home" PREFECT_API_URL="http://127.0.0.1:$PP/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_CLI_COLORS=false COLUMNS=160
"$PREFECT" server start --host 127.0.0.1 --port "$PP" > "$LOGS/prefect-server.log" 2>&1 &
PIDS+=($!)
wait_for 120 "the Prefect server" curl -sf "$PREFECT_API_URL/health"
echo "Prefect server at $PREFECT_API_URL"

# ------------------------------------------------------------------ Dask scheduler, two workers, Prefect worker (image)
say "Dask scheduler, 2 Dask workers and a Prefect worker from $IMAGE"
DP=$(free_port); DASH=$(free_port)
OUT="$WORK/image-out"; mkdir -p "$OUT"; chown 10001:10001 "$OUT"
export CROPMAP_DASK_ADDRESS="tcp://127.0.0.1:$DP"
common=(--network host --label "$TAG" -v "$DATA:/data:ro" -v "$OUT:/out"
        -e PREFECT_API_URL -e PREFECT_SERVER_ANALYTICS_ENABLED -e CROPMAP_DASK_ADDRESS
        -e CROPMAP_OUTPUT_DIR=/out/runs -e CROPMAP_DEMO_DIR=/out/demo)
docker run -d --name "$TAG-scheduler" "${common[@]}" "$IMAGE" \
    dask scheduler --host 127.0.0.1 --port "$DP" --dashboard-address "127.0.0.1:$DASH" >/dev/null
wait_for 180 "the Dask scheduler" "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $DP), 2)" \
    || { docker logs --tail 30 "$TAG-scheduler"; exit 1; }
# in a container of the image: who runs, where, what is in the working directory, where cropmap comes from
docker exec "$TAG-scheduler" sh -c 'echo "in the image: $(id -un) ($(id -u)) in $PWD, $(ls -A | wc -l) files there;" \
    "$(python -c "import cropmap, bokeh; print(cropmap.__file__, \"bokeh\", bokeh.__version__)"); no PYTHONPATH: ${PYTHONPATH:-unset}"'
for i in 1 2; do
    docker run -d --name "$TAG-dask-worker-$i" "${common[@]}" "$IMAGE" \
        dask worker "$CROPMAP_DASK_ADDRESS" --host 127.0.0.1 --nthreads 1 --no-dashboard \
        --name "image-worker-$i" --local-directory /tmp >/dev/null
done
"$PY" - "$CROPMAP_DASK_ADDRESS" <<'EOF'
import sys, warnings
from distributed import Client
warnings.simplefilter("ignore")  # this client's Python (.venv) is not the image's: only the version warning
with Client(sys.argv[1], timeout=60) as c:
    c.wait_for_workers(2, timeout=180)
    info = c.run(lambda: __import__("cropmap").__file__)
    print("dask workers:", ", ".join(f"{w['name']} ({w['nthreads']} thread)" for w in c.scheduler_info()["workers"].values()))
    print("cropmap on the workers:", sorted(set(info.values())))
    assert all(f.startswith("/opt/venv/") for f in info.values()), info
EOF
dash_page="$(curl -sf --max-time 30 "http://127.0.0.1:$DASH/status" || true)"
if grep -q 'Bokeh\.' <<<"$dash_page"; then
    note "dashboard: http://127.0.0.1:$DASH/status answers with the bokeh dashboard"
else
    fail "the scheduler's dashboard at :$DASH/status is not the bokeh dashboard: $(head -c 200 <<<"$dash_page")"
fi

POOL=cropmap-k8s  # the Kubernetes deployment's pool, as a process pool: deploy/prefect.yaml unchanged
"$PREFECT" --no-prompt work-pool create "$POOL" --type process > "$LOGS/work-pool.log" 2>&1 || { cat "$LOGS/work-pool.log"; exit 1; }
docker run -d --name "$TAG-prefect-worker" "${common[@]}" -e PREFECT_WORKER_QUERY_SECONDS=2 "$IMAGE" \
    prefect worker start --pool "$POOL" --type process --name image-prefect-worker >/dev/null
worker_online() {
    "$PY" - "$POOL" <<'EOF'
import asyncio, sys
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        workers = await c.read_workers_for_work_pool(sys.argv[1])
        sys.exit(0 if any(str(w.status).upper().endswith("ONLINE") for w in workers) else 1)
asyncio.run(main())
EOF
}
wait_for 180 "the Prefect worker" worker_online || { docker logs --tail 30 "$TAG-prefect-worker"; exit 1; }
echo "Prefect worker of the image online in pool $POOL (type process)"

# ------------------------------------------------------------------ deploy as a Kubernetes user does
say "prefect deploy --all --prefect-file deploy/prefect.yaml (CROPMAP_IMAGE=$IMAGE)"
CROPMAP_IMAGE="$IMAGE" timeout 300 "$PREFECT" --no-prompt deploy --all --prefect-file deploy/prefect.yaml \
    > "$LOGS/deploy.log" 2>&1 || { cat "$LOGS/deploy.log"; exit 1; }
"$PY" - <<'EOF'
import asyncio
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        for d in sorted(await c.read_deployments(), key=lambda d: d.name):
            print(f"deployment {d.name}: pool {d.work_pool_name}, entrypoint {d.entrypoint}, "
                  f"job_variables {d.job_variables}, pull {d.pull_steps}")
asyncio.run(main())
EOF

# ------------------------------------------------------------------ runs
dask_executed() {  # tasks the image's Dask workers have executed so far
    "$PY" - "$CROPMAP_DASK_ADDRESS" <<'EOF'
import sys, warnings
from distributed import Client
warnings.simplefilter("ignore")
with Client(sys.argv[1], timeout=60) as c:
    print(sum(c.run(lambda dask_worker: dask_worker.state.executed_count).values()))
EOF
}
flow_state() {  # flow_state RUN_ID -> "STATE total_run_time_s"
    "$PY" - "$1" <<'EOF'
import asyncio, sys
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as c:
        r = await c.read_flow_run(sys.argv[1])
        print(r.state.name, round(r.total_run_time.total_seconds()))
asyncio.run(main())
EOF
}
deployment_run() {  # deployment_run LABEL DEPLOYMENT [--param k=v ...]
    local label=$1 dep=$2; shift 2
    say "image: prefect deployment run $dep${*:+ $*} --watch"
    local t0 rc=0 before after
    before=$(dask_executed)
    t0=$(date +%s)
    timeout "$RUN_TIMEOUT" "$PREFECT" deployment run "$dep" "$@" --watch > "$LOGS/run-$label.log" 2>&1 || rc=$?
    local wall=$(( $(date +%s) - t0 ))
    after=$(dask_executed)
    grep -E "UUID|Flow run finished" "$LOGS/run-$label.log" || true
    echo "tasks executed by the image's Dask workers during the run: $(( after - before ))"
    [ $(( after - before )) -gt 0 ] || fail "image run $label: no task ran on the image's Dask workers"
    local id state
    id=$(grep -oE 'UUID: [0-9a-f-]{36}' "$LOGS/run-$label.log" | head -1 | cut -d' ' -f2 || true)
    state=$( [ -n "$id" ] && flow_state "$id" || echo "unknown ?")
    note "image run $label ($dep${*:+ $*}): ${state% *}, wall ${wall} s (flow run ${state#* } s), exit $rc, $(( after - before )) Dask tasks on the image's workers"
    if [ "$rc" != 0 ] || [ "${state% *}" != Completed ]; then
        tail -40 "$LOGS/run-$label.log"; fail "image run $label ended ${state% *} (exit $rc)"
    fi
}
local_run() {  # local_run LABEL MODULE [args]: the same flow from .venv, a local Dask cluster, this checkout
    local label=$1; shift
    say "local: python $* --out $WORK/local-out/runs"
    local t0 rc=0
    t0=$(date +%s)
    (unset CROPMAP_DASK_ADDRESS
     export CROPMAP_DATA_DIR="$DATA" CROPMAP_DEMO_DIR="$WORK/local-out/demo"
     timeout "$RUN_TIMEOUT" "$PY" "$@" --out "$WORK/local-out/runs") > "$LOGS/local-$label.log" 2>&1 || rc=$?
    local wall=$(( $(date +%s) - t0 ))
    grep -E "national class|accuracy:" "$LOGS/local-$label.log" || true
    note "local run $label (python $*): exit $rc, wall ${wall} s"
    [ "$rc" = 0 ] || { tail -40 "$LOGS/local-$label.log"; fail "local run $label exited $rc"; }
}

deployment_run demo map-country/map-country --param country=DEMO
deployment_run transfer transfer/transfer
local_run demo -m flows.map_country DEMO
local_run transfer -m flows.transfer

# ------------------------------------------------------------------ compare the maps
say "compare the maps (class, confidence, ood COGs: zones and national), image vs local"
if ! "$PY" - "$OUT/runs" "$WORK/local-out/runs" > "$LOGS/compare.log" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
import rasterio

image_root, local_root = Path(sys.argv[1]), Path(sys.argv[2])
bad = 0

def maps(root: Path, code: str) -> dict[str, Path]:
    """<name> -> path of every class/confidence/ood COG of ``code``'s runs (maps/<model key>/<name>)."""
    found = {}
    for p in sorted((root / code).glob("*/maps/*/*.tif")):
        if p.stem.rsplit("_", 1)[-1] in ("class", "confidence", "ood"):
            if p.name in found:
                raise SystemExit(f"{code}: two runs hold {p.name}: {found[p.name]} and {p}")
            found[p.name] = p
    return found

def score(root: Path, code: str) -> str:
    paths = sorted((root / code).glob("*/maps/*/accuracy.json"))
    if len(paths) != 1:
        return f"{len(paths)} accuracy.json"
    acc = json.loads(paths[0].read_text())
    return f"OA {acc['oa']:.4f}, macro-F1 {acc['macro_f1']:.4f} on {acc['n']} px"

for code in ("DEMO", "TTGT"):
    a, b = maps(image_root, code), maps(local_root, code)
    print(f"{code}: image {score(image_root, code)}; local {score(local_root, code)}")
    kinds = {n.rsplit("_", 1)[-1][:-4] for n in a}
    if not {"class", "confidence"} <= kinds or set(a) != set(b):
        print(f"{code}: FAIL maps differ in name: image {sorted(a)}, local {sorted(b)}")
        bad += 1
        continue
    for name in sorted(a):
        with rasterio.open(a[name]) as x, rasterio.open(b[name]) as y:
            same_grid = (x.crs == y.crs and x.transform == y.transform and x.shape == y.shape
                         and x.dtypes == y.dtypes and x.nodata == y.nodata and x.count == y.count)
            u, v = x.read(), y.read()
        if not same_grid:
            print(f"{code} {name}: FAIL grid differs ({x.crs} {x.shape} {x.dtypes} vs {y.crs} {y.shape} {y.dtypes})")
            bad += 1
            continue
        same = (u == v) | (np.isnan(u) & np.isnan(v)) if u.dtype.kind == "f" else u == v
        equal, diff = bool(same.all()), int(np.count_nonzero(~same))
        nodata = x.nodata
        valid = int(np.count_nonzero(~np.isnan(u) if nodata is not None and np.isnan(nodata) else u != nodata)
                    if nodata is not None else u.size)
        print(f"{code} {name}: {'identical' if equal else 'FAIL differs'}: {u.shape[1]}x{u.shape[2]} px "
              f"({valid} with data), {diff} differing, {u.dtype}, {x.crs}")
        bad += not equal
print(f"{'all maps identical' if not bad else f'{bad} map(s) differ'}")
sys.exit(1 if bad else 0)
EOF
then
    fail "the image's maps differ from the local ones"
fi
cat "$LOGS/compare.log"
note "comparison: $(tail -1 "$LOGS/compare.log") ($(grep -c ": identical:" "$LOGS/compare.log") COGs); $(grep -E '^(DEMO|TTGT): image' "$LOGS/compare.log" | tr '\n' ' ')"

# ------------------------------------------------------------------ summary
say "summary"
echo "checkout $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- Dockerfile .dockerignore pyproject.toml cropmap deploy || echo ' + uncommitted changes'), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores"
printf '%s\n' "${SUMMARY[@]}"
if [ "$FAILED" = 0 ]; then echo "check_image: PASS"; else echo "check_image: FAIL"; exit 1; fi
