"""build-cube: country -> tiles -> 5-day median cubes, one task per tile on a Dask cluster.

Wiring only: every task calls one function of :mod:`cropmap.pipeline`. Cubes go to
``<out>/<country>/<config hash>/cubes/<tile id>.zarr`` (``<out>``: a folder or an fsspec URL, see
:func:`flows._runner.output_root`); a complete cube is skipped, so a rerun (after a kill, say) builds
only the missing tiles.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # loaded by file path (a deployment's entrypoint): make `flows` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from cropmap import pipeline, storage
from flows._runner import output_root, task_runner

__all__ = ["build_cube", "cube_tile", "build_cubes_for", "country_config"]


def country_config(country: str, year: int | None = None):
    """The country's config (DEMO: built first if missing), with ``year`` overriding the config's."""
    config = pipeline.resolve_country(country)
    return config if year is None else config.model_copy(update={"year": int(year)})


# Only this task reads remote data (STAC searches, asset reads): only it retries.
@task(name="cube-tile", retries=2, retry_delay_seconds=5, cache_policy=NONE, task_run_name="cube {tile_id}")
def cube_tile(country: str, year: int | None, tile_id: str, cube_dir: str) -> dict:
    """One tile's cube (:func:`cropmap.pipeline.build_tile`); skipped when already complete."""
    return pipeline.build_tile(country_config(country, year), tile_id, cube_dir)


def build_cubes_for(country: str, year: int | None, tile_ids: list[str], cube_dir: str) -> list[dict]:
    """Submit one ``cube-tile`` task per tile and wait; a failed tile is reported, not raised."""
    futures = [cube_tile.submit(country, year, t, cube_dir) for t in tile_ids]
    results = []
    for tile_id, future in zip(tile_ids, futures):
        try:
            results.append(future.result())
        except Exception as err:  # noqa: BLE001 - one bad tile must not stop the others
            results.append({"tile_id": tile_id, "path": "", "status": "failed", "reason": str(err)[:500],
                            "n_items": 0})
    return results


@flow(name="build-cube", task_runner=task_runner(), log_prints=True)
def build_cube(country: str = "DEMO", year: int | None = None, tile_limit: int | None = None,
               out_dir: str | None = None) -> list[dict]:
    """Build the tile cubes of ``country`` (at most ``tile_limit`` tiles); returns one row per tile."""
    config = country_config(country, year)  # an unknown country fails here, before any task
    cube_dir = storage.join(pipeline.run_dir(output_root(out_dir), config), "cubes")
    results = build_cubes_for(country, year, pipeline.country_tiles(config, tile_limit=tile_limit), str(cube_dir))
    create_table_artifact(key=f"cubes-{country.lower()}", table=results,
                          description=f"{country} {config.year}: tile cubes in {cube_dir}")
    print(f"{sum(r['status'] != 'failed' for r in results)}/{len(results)} tile cubes in {cube_dir}")
    return results


if __name__ == "__main__":
    build_cube()
