"""Many tiles through the per-tile stages: the searches of their blocks, each tile's cube, then its
prediction as soon as the cube is done.

:func:`run_tiles` searches each 100 km block of tiles once (:mod:`cropmap.jobs.searches`; a tile starts
as soon as its block's items are there), keeps at most ``window`` tiles in flight (by default the
executor's capacity times ``$CROPMAP_TILES_IN_FLIGHT``), starts a tile's prediction the moment its cube
is ready, and starts the next tile whenever one finishes, so the stages overlap in bounded waves and the
calling process holds
only a :class:`TileSummary`: per tile, two short status words, and the reason of each failure (tens of
bytes a tile, not the task objects). A tile that fails in one stage is recorded with its reason; the
others go on.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cropmap.io import storage
from cropmap.jobs.country_run import CountryRun
from cropmap.jobs.executors import Executor
from cropmap.jobs.searches import search_block, search_blocks
from cropmap.jobs.tiles import cube_tile, predict_tile
from cropmap.settings import get_settings

__all__ = ["TileFailure", "TileSummary", "run_tiles"]

#: ``progress(stage, tile_id, status)`` after each tile and stage ("cube" / "predict").
Progress = Callable[[str, str, str], None]


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

    def fail(self, tile_id: str, stage: str, error: BaseException) -> None:
        self.record(tile_id, stage, "failed")
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        self.failures.append(TileFailure(tile_id, stage, reason))

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


def run_tiles(executor: Executor, run: CountryRun, tile_ids: Iterable[str], *,
              model: storage.Location | None = None, window: int | None = None,
              progress: Progress | None = None, overwrite: bool = False) -> TileSummary:
    """Search, cube and (with a ``model``) predict every tile of ``tile_ids``; see the module docstring.
    ``overwrite``: rebuild the cubes and predictions that are already finished, too."""
    window = window or executor.capacity * get_settings().tiles_in_flight
    summary = TileSummary()
    blocks = search_blocks(list(tile_ids))
    searches = iter(blocks.items())
    ready: deque[tuple[str, str]] = deque()  # (tile id, its block's items) waiting for a slot
    pending: dict[Any, tuple[str, str]] = {}  # handle -> (tile id or block, stage)
    in_flight = {"search": 0, "tiles": 0}

    def fill() -> None:
        while in_flight["tiles"] < window and ready:
            tile_id, items = ready.popleft()
            summary.total += 1
            in_flight["tiles"] += 1
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
            try:
                result = executor.result(handle)
            except Exception as err:  # noqa: BLE001 - one bad tile (or block) must not stop the others
                if stage == "search":  # every tile of the block fails with the search's reason
                    in_flight["search"] -= 1
                    for tile_id in blocks[name]:
                        summary.total += 1
                        summary.fail(tile_id, "cube", err)
                        if progress is not None:
                            progress("cube", tile_id, "failed")
                    fill()
                    continue
                summary.fail(name, stage, err)
                status = "failed"
            else:
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
            if stage == "cube" and status != "failed" and model is not None:
                pending[executor.submit(predict_tile, run, model, name, force=overwrite)] = (name, "predict")
            else:
                in_flight["tiles"] -= 1
                fill()
    return summary
