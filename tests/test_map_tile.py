"""A run that keeps no cubes (``CountryRun.keep_cubes`` false, ``cropmap map --no-keep-cubes``, map-country's
``keep_cubes``): one :func:`cropmap.jobs.tiles.map_tile` call per tile builds the cube in the worker's scratch,
predicts it there and deletes it. The maps are those of a run that keeps its cubes, pixel for pixel; no cube is
left in the run's store; a rerun skips finished tiles without compositing; a failed prediction is the tile's
predict failure, its cube's status recorded beside it. With the session's slim DEMO model (what the run does is
looked at, not what the model says)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cropmap.jobs.executors import InlineExecutor
from cropmap.jobs.mapping import map_country
from cropmap.jobs.tiles import TileMap


def _tile_maps(run, key: str) -> dict[str, np.ndarray]:
    return {p.name: rasterio.open(p).read() for p in sorted(Path(run.tile_dir(key)).glob("*.tif"))}


@pytest.fixture(scope="module")
def kept_and_not(demo_run, slim_model, tmp_path_factory):
    """The same two DEMO tiles mapped by a run that keeps its cubes and by one that does not."""
    out = tmp_path_factory.mktemp("map_tile")
    kept = demo_run.model_copy(update={"root": str(out / "kept")})
    not_kept = demo_run.model_copy(update={"root": str(out / "not_kept"), "keep_cubes": False})
    return {run.keep_cubes: (run, map_country(run, InlineExecutor(), model=slim_model, tile_limit=2))
            for run in (kept, not_kept)}


def test_a_run_that_keeps_no_cubes_maps_the_same_pixels_and_leaves_no_cube(kept_and_not):
    (kept, with_cubes), (run, result) = kept_and_not[True], kept_and_not[False]
    assert {t: (s["cube"], s["predict"]) for t, s in result.tiles.status.items()} == {
        t: ("written", "done") for t in run.tiles()[:2]}
    assert sorted(p.name for p in Path(kept.cube_dir).glob("*.zarr")) != []
    assert not Path(run.cube_dir).exists() or not any(Path(run.cube_dir).iterdir())
    ours, theirs = _tile_maps(run, result.key), _tile_maps(kept, with_cubes.key)
    assert sorted(ours) == sorted(theirs) and len(ours) >= 4
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    with rasterio.open(result.mosaic.cogs["class"]) as a, rasterio.open(with_cubes.mosaic.cogs["class"]) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    # run.json names no cube: none is kept to be named
    import json

    assert json.loads((Path(run.tile_dir(result.key)) / "run.json").read_text())["cubes"] == []


def test_a_rerun_skips_finished_tiles_without_compositing(kept_and_not, slim_model, monkeypatch):
    import cropmap.jobs.tiles as tiles

    run, _ = kept_and_not[False]

    def no_compositing(*args, **kwargs):
        raise AssertionError("a finished tile was composited again")

    monkeypatch.setattr(tiles, "build_tile_cube", no_compositing)
    again = map_country(run, InlineExecutor(), model=slim_model, tile_limit=2)
    assert {s["predict"] for s in again.tiles.status.values()} == {"skipped"} and not again.tiles.failures


def test_a_failed_prediction_is_the_tiles_predict_failure_beside_its_cube_status(demo_run, slim_model, tmp_path,
                                                                                   monkeypatch):
    import cropmap.jobs.tiles as tiles
    from cropmap.errors import IncompatibleInputError

    run = demo_run.model_copy(update={"root": str(tmp_path / "run"), "keep_cubes": False})
    bad = run.tiles()[1]
    predict = tiles.write_tile_predictions

    def failing(model, cube, out_dir, **kwargs):
        if bad in str(cube):
            raise IncompatibleInputError(f"tile {bad}: refused on purpose")
        return predict(model, cube, out_dir, **kwargs)

    monkeypatch.setattr(tiles, "write_tile_predictions", failing)
    result = map_country(run, InlineExecutor(), model=slim_model, tile_limit=2)
    assert result.tiles.status[bad] == {"cube": "written", "predict": "failed"}
    assert [(f.tile_id, f.stage) for f in result.tiles.failures] == [(bad, "predict")]
    assert "refused on purpose" in (Path(run.root) / "failures" / f"{bad}.predict.txt").read_text()
    assert result.mosaic is not None  # the other tile is mapped
    # and its scratch cube is gone with the call, failed or not
    assert not any(Path(run.cube_dir).glob("*.zarr")) if Path(run.cube_dir).exists() else True


def test_a_tile_maps_result_travels_between_processes_with_its_error():
    """Dask workers pickle what ``map_tile`` returns, the prediction's error included."""
    from cropmap.errors import EmptyMapError
    from cropmap.stages.cube import CubeResult

    sent = TileMap(CubeResult("t", "/x/t.zarr", "written"), error=EmptyMapError("tile t: no mapped pixel"))
    got = pickle.loads(pickle.dumps(sent))
    assert got.cube == sent.cube and isinstance(got.error, EmptyMapError) and "no mapped pixel" in str(got.error)
