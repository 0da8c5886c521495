"""Many tiles through the per-tile stages: each tile's cube, then its prediction as soon as the cube is done.

:func:`run_tiles` keeps at most ``window`` tiles in flight (by default the executor's capacity times
``$CROPMAP_TILES_IN_FLIGHT``), starts a tile's prediction the moment its cube is ready, and starts the
next tile whenever one finishes, so the stages overlap in bounded waves and the calling process holds
only a :class:`TileSummary`: per tile, two short status words, and the reason of each failure (tens of
bytes a tile, not the task objects). A tile that fails in one stage is recorded with its reason; the
others go on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from cropmap.io import storage
from cropmap.jobs.country_run import CountryRun
from cropmap.jobs.executors import Executor
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
        return f"{self.total} tiles; " + "; ".join(parts)


def run_tiles(executor: Executor, run: CountryRun, tile_ids: Iterable[str], *,
              model: storage.Location | None = None, window: int | None = None,
              progress: Progress | None = None) -> TileSummary:
    """Cube every tile of ``tile_ids`` and, with a ``model``, predict it right after; see the module doc."""
    window = window or executor.capacity * get_settings().tiles_in_flight
    summary = TileSummary()
    queue = iter(tile_ids)
    pending: dict[Any, tuple[str, str]] = {}  # handle -> (tile id, stage)

    def start_next() -> None:
        for tile_id in queue:
            summary.total += 1
            pending[executor.submit(cube_tile, run, tile_id)] = (tile_id, "cube")
            return

    for _ in range(window):
        start_next()
    while pending:
        for handle in executor.wait_any(list(pending)):
            tile_id, stage = pending.pop(handle)
            try:
                status = executor.result(handle).status
            except Exception as err:  # noqa: BLE001 - one bad tile must not stop the others
                summary.fail(tile_id, stage, err)
                status = "failed"
            else:
                summary.record(tile_id, stage, status)
            if progress is not None:
                progress(stage, tile_id, status)
            if stage == "cube" and status != "failed" and model is not None:
                pending[executor.submit(predict_tile, run, model, tile_id)] = (tile_id, "predict")
            else:
                start_next()
    return summary
