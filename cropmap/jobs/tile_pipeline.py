"""Many tiles through the per-tile stages: the searches of their blocks, each tile's cube, then its
prediction as soon as the cube is done.

:func:`run_tiles` searches each 100 km block of tiles once (:mod:`cropmap.jobs.searches`; a tile starts
as soon as its block's items are there), keeps at most ``window`` tiles in flight (by default the
executor's capacity times ``$CROPMAP_TILES_IN_FLIGHT``), starts a tile's prediction the moment its cube
is ready, and starts the next tile whenever one finishes, so the stages overlap in bounded waves and the
calling process holds
only a :class:`TileSummary`: per tile, two short status words, and the reason of each failure (tens of
bytes a tile, not the task objects). A tile that fails in one stage (or whose map would be all nodata:
status ``empty``, :class:`~cropmap.errors.EmptyMapError`, nothing written) is recorded with its reason and
logged as one line naming the file under ``<run>/failures/`` that holds its traceback; the others go on,
unless the last :data:`SAME_FAILURES_TO_STOP` tiles (or block searches) all failed alike (``empty`` maps
aside: they say something of a place, not of the run): then the run stops there with one :class:`~cropmap.errors.CubeBuildError` (the cause is the run's, not the tiles').
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cropmap.errors import CubeBuildError, EmptyMapError
from cropmap.io import outputs, storage
from cropmap.jobs.country_run import CountryRun
from cropmap.jobs.executors import Executor
from cropmap.jobs.progress import Progress
from cropmap.jobs.searches import search_block, search_blocks
from cropmap.jobs.tiles import cube_tile, map_tile, predict_tile
from cropmap.settings import get_settings
from cropmap.stages.model_ref import ModelRef

__all__ = ["TileFailure", "TileSummary", "run_tiles"]

# ``progress(stage, tile_id, status)`` after each tile and stage ("cube" / "predict"; a run that keeps no
# cubes reports both stages of a tile when its one :func:`~cropmap.jobs.tiles.map_tile` call returns)
#: Failures in a row with the same reason (tile ids aside) that stop a run: a dead catalog or a bad
#: setting fails every tile alike, and 396 blocks x 3 tries took 551 s to say so (issue 32).
SAME_FAILURES_TO_STOP = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileFailure:
    tile_id: str
    stage: str
    reason: str


@dataclass
class TileSummary:
    """What happened to a run's tiles: per stage, the count of each status; per tile, its status in each
    stage ("-" when it did not get there); and every failure with its reason."""

    total: int = 0
    counts: dict[str, Counter] = field(default_factory=lambda: {"cube": Counter(), "predict": Counter()})
    failures: list[TileFailure] = field(default_factory=list)
    status: dict[str, dict[str, str]] = field(default_factory=dict)
    searches: Counter = field(default_factory=Counter)  # block searches: "searched" / "skipped"

    def record(self, tile_id: str, stage: str, status: str) -> None:
        self.counts[stage][status] += 1
        self.status.setdefault(tile_id, {})[stage] = status

    def fail(self, tile_id: str, stage: str, error: BaseException) -> str:
        """Record the failure (status ``"empty"`` for a map without a mapped pixel,
        :class:`~cropmap.errors.EmptyMapError`, else ``"failed"``); returns its reason (one line)."""
        self.record(tile_id, stage, failed_status(error))
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        self.failures.append(TileFailure(tile_id, stage, reason))
        return reason

    def rows(self) -> list[dict[str, str]]:
        """One row per tile: ``tile``, ``cube``, ``predict`` statuses and the ``reason`` of a failure."""
        reasons = {f.tile_id: f.reason for f in self.failures}
        return [{"tile": t, "cube": s.get("cube", "-"), "predict": s.get("predict", "-"), "reason": reasons.get(t, "")}
                for t, s in self.status.items()]

    @property
    def failed_tiles(self) -> set[str]:
        return {f.tile_id for f in self.failures}

    def table(self) -> list[dict[str, Any]]:
        """Rows for a report that stays short whatever the tile count: one per stage and status, then one
        per failed tile."""
        rows = [{"stage": s, "status": k, "tiles": n} for s, c in self.counts.items() for k, n in sorted(c.items())]
        return rows + [{"stage": f.stage, "status": "failed", "tiles": f.tile_id, "reason": f.reason}
                       for f in self.failures]

    def describe(self) -> str:
        parts = [f"{s}: " + ", ".join(f"{n} {k}" for k, n in sorted(c.items())) for s, c in self.counts.items() if c]
        blocks = ", ".join(f"{n} {k}" for k, n in sorted(self.searches.items()))
        return f"{self.total} tiles; " + "; ".join(parts) + (f"; block searches: {blocks}" if blocks else "")


def failed_status(error: BaseException) -> str:
    """A tile's status after ``error`` in a stage: ``"empty"`` when its map would hold no mapped pixel (not
    written, tried again next run), else ``"failed"``; either way the tile is among the run's failures."""
    return "empty" if isinstance(error, EmptyMapError) else "failed"


def failure_path(run: CountryRun, name: str, stage: str) -> storage.Location:
    """Where the traceback of ``name``'s (a tile's or a block's) failure in ``stage`` is written."""
    return storage.join(run.root, "failures", f"{name}.{stage}.txt")


def _report(run: CountryRun, name: str, stage: str, reason: str, error: BaseException) -> str:
    """Write the traceback to :func:`failure_path`, log one line naming it; returns the line."""
    path = failure_path(run, name, stage)
    try:
        outputs.write_text(path, "".join(traceback.format_exception(error)))
        where = f"traceback: {path}"
    except Exception as err:  # noqa: BLE001 - an unwritable folder must not hide the tile's own error
        where = f"traceback not written: {err}"
    line = f"{name} {stage} failed: {reason} ({where})"
    log.warning(line)
    return line


def run_tiles(executor: Executor, run: CountryRun, tile_ids: Iterable[str], *,
              model: ModelRef | None = None, window: int | None = None,
              progress: Progress | None = None, overwrite: bool = False,
              stop_after: int = SAME_FAILURES_TO_STOP) -> TileSummary:
    """Search, cube and (with a ``model``, resolved once: :func:`cropmap.jobs.tiles.run_model`) predict every
    tile of ``tile_ids``; see the module docstring.
    ``overwrite``: rebuild the cubes and predictions that are already finished, too. ``stop_after``
    failures in a row with the same reason raise :class:`CubeBuildError` (0: never stop)."""
    window = window or executor.capacity * get_settings().tiles_in_flight
    streak: list[str] = []  # reasons of the failures since the last success, tile ids taken out
    summary = TileSummary()
    tile_ids = list(tile_ids)
    blocks = search_blocks(tile_ids)
    searches = iter(blocks.items())
    ready: deque[tuple[str, str]] = deque()  # (tile id, its block's items) waiting for a slot
    pending: dict[Any, tuple[str, str]] = {}  # handle -> (tile id or block, stage)
    in_flight = {"search": 0, "tiles": 0}
    fused = model is not None and not run.keep_cubes  # one map_tile call per tile, its cube in scratch

    def fill() -> None:
        while in_flight["tiles"] < window and ready:
            tile_id, items = ready.popleft()
            summary.total += 1
            in_flight["tiles"] += 1
            if fused:
                pending[executor.submit(map_tile, run, model, tile_id, items=items, overwrite=overwrite)] = \
                    (tile_id, "tile")
            else:
                pending[executor.submit(cube_tile, run, tile_id, items=items, overwrite=overwrite)] = (tile_id, "cube")
        # the next searches while tiles wait for items: at most two at once (the catalog is shared)
        while in_flight["search"] < 2 and len(ready) < window:
            nxt = next(searches, None)
            if nxt is None:
                return
            in_flight["search"] += 1
            pending[executor.submit(search_block, run, nxt[0], nxt[1])] = (nxt[0], "search")

    fill()
    while pending:
        for handle in executor.wait_any(list(pending)):
            name, stage = pending.pop(handle)
            one_call = stage == "tile"  # map_tile: the cube's status, then the prediction's (or its error)
            stage = "cube" if one_call else stage
            try:
                result = executor.result(handle)
                if one_call:
                    summary.record(name, "cube", result.cube.status)
                    if progress is not None:
                        progress("cube", name, result.cube.status)
                    stage = "predict"
                    if result.error is not None:
                        raise result.error
                    result = result.predict
            except Exception as err:  # noqa: BLE001 - one bad tile (or block) must not stop the others
                if stage == "search":  # every tile of the block fails with the search's reason
                    in_flight["search"] -= 1
                    for tile_id in blocks[name]:
                        summary.total += 1
                        reason = summary.fail(tile_id, "cube", err)
                        if progress is not None:
                            progress("cube", tile_id, "failed")
                else:
                    reason = summary.fail(name, stage, err)
                _report(run, name, stage, reason, err)
                # a map without data says something of its place (ice, sea, clouds all season), not of the
                # run: tiles of an ice field in a row must not stop the country's other tiles
                if not isinstance(err, EmptyMapError):
                    streak.append(reason.replace(name, "<tile>"))
                if stop_after and len(streak) >= stop_after and len(set(streak[-stop_after:])) == 1:
                    left = f"{len(tile_ids) - summary.total:,} more"
                    raise CubeBuildError(
                        f"{run.code}: the last {stop_after} {'block searches' if stage == 'search' else 'tiles'} "
                        f"failed alike, so the run stops before {left} tiles: {reason} (tracebacks in "
                        f"{storage.join(run.root, 'failures')}); fix the cause and rerun (finished tiles are kept)")
                if stage == "search":
                    fill()
                    continue
                status = failed_status(err)
            else:
                if stage != "search":  # a tile that works breaks the streak; a search says less
                    streak.clear()
                if stage == "search":
                    in_flight["search"] -= 1
                    summary.searches[result.status] += 1
                    ready.extend((t, result.path) for t in blocks[name])
                    fill()
                    continue
                status = result.status
                summary.record(name, stage, status)
            if progress is not None:
                progress(stage, name, status)
            if stage == "cube" and status != "failed" and model is not None and not fused:
                pending[executor.submit(predict_tile, run, model, name, force=overwrite)] = (name, "predict")
            else:
                in_flight["tiles"] -= 1
                fill()
    return summary
