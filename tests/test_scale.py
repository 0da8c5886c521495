"""Country scale on the DEMO's real spectra: one STAC search per block of tiles (counted at a real STAC
API on 127.0.0.1), every COG byte fetched once per tile and band (counted at a local range-request
HTTP server), and predictions that start while cubes are still being built, with one scheduler task
per tile and stage (read from Dask's task stream)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from http_servers import counting_proxy, range_file_server, stac_api_server

from cropmap.io.config import CatalogConfig
from cropmap.io.stac import search_items, season_search_window
from cropmap.jobs.executors import DaskExecutor, InlineExecutor
from cropmap.jobs.searches import search_blocks
from cropmap.jobs.tile_pipeline import run_tiles
from cropmap.stages.cube import CubeOptions, build_tile_cube, open_tile_cube


@pytest.fixture(scope="module")
def stac_api(demo_paths, tmp_path_factory):
    """The DEMO's items served by ``rustac serve`` behind a counting proxy, their COGs by a local
    range-request HTTP server (as a public catalog serves both)."""
    with stac_api_server(demo_paths.catalog, demo_paths.root, tmp_path_factory.mktemp("api")) as (upstream, _), \
            counting_proxy(upstream) as (url, log):
        yield url, log, upstream


@pytest.fixture(scope="module")
def api_map(demo_run, slim_model, stac_api, tmp_path_factory):
    """Three DEMO tiles mapped by map-country with the session's slim model (how the run schedules its work
    is looked at, not what the model says) on a one-thread Dask cluster, their items searched at the STAC API
    (``stac_api``): ``(run, MapResult, the API requests made while mapping, Dask's task stream)``."""
    from distributed import Client, LocalCluster, get_task_stream

    from cropmap.jobs.mapping import map_country
    from cropmap.jobs.tiles import tile_annotations

    url, log, _ = stac_api
    catalog = CatalogConfig(url=url, collection="sentinel-2-l2a", max_cloud_cover=100, margin_days=30)
    run = demo_run.model_copy(update={"root": str(tmp_path_factory.mktemp("api_map") / "run"),
                                      "config": demo_run.config.model_copy(update={"catalog": catalog})})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        executor = DaskExecutor(client, annotations=tile_annotations(False))
        log.clear()
        with get_task_stream(client) as stream:
            result = map_country(run, executor, model=slim_model, tile_limit=3)
        requests = list(log)
    return run, result, requests, stream.data


def test_one_stac_search_per_block_of_tiles_not_per_tile(demo_run, api_map, stac_api, tmp_path):
    """Three tiles of one block mapped through a STAC API: one search request (made by the run's preflight,
    kept, and reused by the block's search task), the block's items reach every tile (a cube equals the
    cube built from the static catalog), and a rerun makes no request at all."""
    _, log, _ = stac_api
    run, result, requests, _ = api_map
    tiles = run.tiles(tile_limit=3)
    blocks = search_blocks(tiles)
    assert len(tiles) == 3 and len(blocks) == 1  # the DEMO's 2.5 km lie in one 100 km block of one zone
    searches = [p for m, p in requests if p.startswith("/search")]
    summary = result.tiles
    assert summary.counts["cube"]["written"] == 3 and summary.searches == {"skipped": 1}, summary.searches
    assert len(searches) == len(blocks) == 1, requests  # one page: 54 items under the page size of 100
    # the block's items reach every tile: the cubes equal cubes from the static catalog
    static = run.config.catalog.model_copy(update={"url": None, "path": demo_run.config.catalog.path})
    tile = run.tile(tiles[0])
    start, end = season_search_window(run.season, run.year, 30)
    direct = build_tile_cube(tile, search_items(static, bbox=tile.lonlat_bbox(), start=start, end=end), run.season,
                             run.year, tmp_path / "direct")
    via_api = open_tile_cube(Path(run.cube_dir) / f"{tiles[0]}.zarr")
    assert (open_tile_cube(direct.path).values == via_api.values).sum() > 0.9 * via_api.size
    log.clear()
    again = run_tiles(InlineExecutor(), run, tiles)  # a rerun reuses the block's items: no request at all
    assert [p for _, p in log] == [] and again.searches["skipped"] == 1


def test_a_throttled_search_waits_as_told_and_succeeds(demo_run, stac_api):
    """HTTP 429 with Retry-After: the search waits that long and tries again, instead of failing."""
    _, _, upstream = stac_api
    start, end = season_search_window(demo_run.season, demo_run.year, 30)
    bbox = demo_run.tile(demo_run.tiles()[0]).lonlat_bbox()
    with counting_proxy(upstream, throttle_searches=2) as (url, log):
        t0 = time.perf_counter()
        items = search_items(CatalogConfig(url=url, collection="sentinel-2-l2a", max_cloud_cover=100), bbox=bbox,
                             start=start, end=end, retries=1)
        waited = time.perf_counter() - t0
    assert len(items) > 40
    assert [p for _, p in log if p.startswith("/search")].__len__() == 3 and waited >= 2.0, (log, waited)


def test_every_cog_byte_is_fetched_once_per_tile_and_band(demo_paths, demo_run, tmp_path, monkeypatch):
    """The DEMO's COGs served over HTTP with byte ranges; a tile's red and NIR bands (every band's COGs are
    laid out and read alike) and SCL read in strips of 32 rows (4 strips per COG block): no file is asked for
    any byte twice."""
    start, end = season_search_window(demo_run.season, demo_run.year, 30)
    tile = demo_run.tile(demo_run.tiles()[0])
    items = search_items(demo_run.config.catalog, bbox=tile.lonlat_bbox(), start=start, end=end)
    monkeypatch.setenv("CROPMAP_ASSET_HREF_SCHEMES", "https,s3,http")  # the searched items now point at it
    with range_file_server(demo_paths.root) as (url, log):
        for item in items:
            for asset in item.assets.values():
                asset.href = url + "/" + str(Path(asset.href).resolve().relative_to(demo_paths.root.resolve()))
        res = build_tile_cube(tile, items, demo_run.season, demo_run.year, tmp_path,
                              options=CubeOptions(bands=("B04", "B08"), chunk=32))
    assert res.status == "written" and not res.unavailable
    by_file: dict[str, list[tuple[int, int]]] = {}
    for path, first, last in log():
        by_file.setdefault(path, []).append((first, last))
    assert len(by_file) >= 3 * 40  # the 2 bands + SCL of every in-season date were read
    for path, ranges in by_file.items():
        ranges.sort()
        for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
            assert b0 > a1, f"{path}: bytes {b0}..{min(a1, b1)} fetched twice ({ranges})"


@pytest.mark.slow
def test_predictions_start_before_the_last_cube_and_each_stage_is_one_task_per_tile(api_map):
    """The Dask task stream of ``api_map`` (three tiles, one worker thread, two tiles in flight): one task per
    tile and stage, and the first prediction runs before the last cube is built."""
    _, result, _, stream = api_map
    assert result.tiles.counts["predict"]["done"] == 3
    kinds = Counter(r["key"].rsplit("-", 5)[0] for r in stream)
    # per tile: one cube task, one predict task; per block one search; per zone and country one mosaic
    assert kinds == {"search_block": 1, "cube_tile": 3, "predict_tile": 3, "mosaic_zone": 1, "mosaic_country": 1,
                     "score_run": 1}, kinds
    spans = {k: [(s["start"], s["stop"]) for r in stream if r["key"].startswith(k) for s in r["startstops"]
                 if s["action"] == "compute"] for k in ("cube_tile", "predict_tile")}
    first_predict = min(start for start, _ in spans["predict_tile"])
    last_cube = max(stop for _, stop in spans["cube_tile"])
    assert first_predict < last_cube, (spans, "predictions waited for every cube")
