#!/usr/bin/env bash
# What a new user on a bare machine gets: a fresh clone of this checkout's HEAD, an EMPTY data folder,
# empty caches, and the pinned public sources (cropmap/io/data.py SOURCES) served by a local HTTP server
# on 127.0.0.1 laid out like raw.githubusercontent.com; then the README's main command, to the end.
# Not a test (it takes a bootstrap and the whole main job, ~7 min on 2 cores); run it before a release:
#   bash scripts/check_fresh_machine.sh [WORKDIR]        (default a new temporary folder)
# Needs the data files once, where this checkout finds them ($CROPMAP_DATA_DIR or ../shared/data).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
rm -rf "$work/clone" "$work/mirror" "$work/empty" "$work/home"
mkdir -p "$work/empty" "$work/home"
git clone -q "$repo" "$work/clone"
"$repo/.venv/bin/python" - "$work/mirror" <<'PY'
import shutil, sys
from pathlib import Path
from cropmap.io.data import SOURCES, data_dir
root, here = Path(sys.argv[1]), data_dir()
for rel, s in SOURCES.items():
    target = root / s.repo / s.commit / s.path
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(here / rel, target)
print(f"{len(SOURCES)} pinned files on the mirror")
PY
port=$("$repo/.venv/bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
(cd "$work/mirror" && exec python3 -m http.server "$port" --bind 127.0.0.1 > "$work/http.log" 2>&1) &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1
export CROPMAP_DATA_DIR="$work/empty" CROPMAP_DATA_URL_BASE="http://127.0.0.1:$port"
export CROPMAP_CACHE_DIR="$work/home/cache" CROPMAP_DEMO_DIR="$work/home/demo" PREFECT_HOME="$work/home/prefect"
cd "$work/clone"
start=$(date +%s)
bash scripts/demo.sh --out "$work/home/out"
echo "fresh machine: the main job ran to the end in $(( $(date +%s) - start )) s (bootstrap included);" \
     "$(grep -c ' 200 ' "$work/http.log") file(s) fetched from the mirror; outputs in $work/home/out"
