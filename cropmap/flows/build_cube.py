"""build-cube: country -> tiles -> 5-day median cubes, one task per tile on a Dask cluster.

Wiring only: the country is resolved once (:func:`cropmap.scenarios.resolve_run`), then
:func:`cropmap.jobs.tile_pipeline.run_tiles` submits one ``cube-tile`` task per tile. Cubes go to
``<out>/<country>/<run key>/cubes/<tile id>.zarr`` (``<out>``: a folder or an fsspec URL, see
:func:`cropmap.jobs.country_run.output_root`); a complete cube is skipped, so a rerun (after a kill,
say) builds only the missing tiles.
"""

from __future__ import annotations


from prefect import flow
from prefect.artifacts import create_table_artifact

from cropmap.jobs.tile_pipeline import run_tiles
from cropmap.scenarios import DEFAULT_COUNTRY, resolve_run
from cropmap.flows import tasks
from cropmap.flows._runner import task_runner

__all__ = ["build_cube"]


@flow(name="build-cube", task_runner=task_runner(), log_prints=True)
def build_cube(country: str = DEFAULT_COUNTRY, year: int | None = None, tile_limit: int | None = None,
               out_dir: str | None = None) -> dict:
    """Build the tile cubes of a country.

    Args:
        country: ISO 3166 alpha-3 code with a config, or the path or URL of a country config (.yaml).
        year: Season year; default: the config's.
        tile_limit: Build at most this many tiles.
        out_dir: Output root, a folder or an fsspec URL; default $CROPMAP_OUTPUT_URL, else $CROPMAP_OUTPUT_DIR.

    Returns:
        The tile summary.
    """
    run = resolve_run(country, year=year, out_dir=out_dir)  # an unknown country fails here, before any task
    summary = run_tiles(tasks.executor(), run, run.tiles(tile_limit=tile_limit))
    create_table_artifact(key=f"cubes-{run.code.lower()}", table=summary.table(),
                          description=f"{run.code} {run.year}: tile cubes in {run.cube_dir}")
    print(f"{summary.describe()}; cubes in {run.cube_dir}")
    return {"cube_dir": str(run.cube_dir), "tiles": summary.rows()}

