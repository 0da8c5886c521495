"""Fault injection on real DEMO data: damaged inputs, flaky servers, broken stores, killed processes.

Every case ends either in a clean error (nothing half-written under a final name) or in a named
status that is not "complete" and that the next run rebuilds; none ends as a "complete" tile or map
that silently holds a hole.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from cropmap.errors import DataNotFoundError, MissingBandError
from cropmap.io.stac import search_items, season_search_window
from cropmap.stages.cube import CubeOptions, build_tile_cube, open_tile_cube
from cropmap.stages.reading import AssetUnavailableWarning, solar_day
from conftest import use_prefect_env
from http_servers import range_file_server

BANDS = ("B04", "B08")
OPTIONS = CubeOptions(bands=BANDS, chunk=64)


@pytest.fixture(scope="module")
def tile_items(demo_run):
    """The first DEMO tile and four of its in-season items (four dates; red/nir/SCL COGs, 128 px)."""
    start, end = season_search_window(demo_run.season, demo_run.year, 30)
    tile = demo_run.tile(demo_run.tiles()[0])
    edges = demo_run.season.bin_edges(demo_run.year)
    items = [it for it in search_items(demo_run.config.catalog, bbox=tile.lonlat_bbox(), start=start, end=end)
             if edges[0] <= np.datetime64(solar_day(it)) < edges[-1]]
    return tile, items[:4]


@pytest.fixture(scope="module")
def clean_path(demo_run, tile_items, tmp_path_factory) -> Path:
    """The tile's cube built from the undamaged items."""
    tile, items = tile_items
    with warnings.catch_warnings():
        warnings.simplefilter("error", AssetUnavailableWarning)
        res = build_tile_cube(tile, items, demo_run.season, demo_run.year, tmp_path_factory.mktemp("clean"),
                              options=OPTIONS)
    return res.path


@pytest.fixture(scope="module")
def clean(clean_path) -> np.ndarray:
    """The clean cube's ``(time, band, y, x)`` values."""
    return open_tile_cube(clean_path).values


def _copied(items: list[pystac.Item], root: Path) -> list[pystac.Item]:
    """Copies of ``items`` (their JSON and COGs) under ``root``, hrefs absolute, to damage freely."""
    out = []
    for item in items:
        folder = Path(item.get_self_href()).parent
        shutil.copytree(folder, root / folder.name)
        copy = pystac.Item.from_file(str(root / folder.name / Path(item.get_self_href()).name))
        copy.make_asset_hrefs_absolute()
        out.append(copy)
    return out


def _build(run, tile, items, out: Path, **kwargs):
    return build_tile_cube(tile, items, run.season, run.year, out, options=OPTIONS, **kwargs)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path) -> None:
    path.write_text("<html>503 Service Unavailable</html>\n")


def _delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage", [_truncate, _empty, _text, _delete], ids=["truncated", "zero-byte", "text", "deleted"])
def test_a_damaged_asset_makes_the_tile_incomplete_and_the_rerun_rebuilds_it(demo_run, tile_items, clean, damage,
                                                                             tmp_path):
    tile, items = tile_items
    copies = _copied(items, tmp_path / "items")
    red = Path(copies[1].assets["red"].href)
    good = red.read_bytes()
    damage(red)
    with pytest.warns(AssetUnavailableWarning, match=f"{copies[1].id}.*'red'"):
        res = _build(demo_run, tile, copies, tmp_path / "cubes")
    assert res.status == "incomplete" and f"{copies[1].id}/red" in res.unavailable
    assert f"{copies[1].id}/red" in res.reason
    cube = open_tile_cube(res.path)
    assert cube.attrs["status"] == "incomplete" and cube.attrs["unavailable_assets"] == [f"{copies[1].id}/red"]
    red.write_bytes(good)  # the file is back: the rerun rebuilds the tile instead of skipping it
    again = _build(demo_run, tile, copies, tmp_path / "cubes")
    assert again.status == "written" and not again.unavailable
    np.testing.assert_array_equal(open_tile_cube(again.path).values, clean)
    assert _build(demo_run, tile, copies, tmp_path / "cubes").status == "skipped"


def _blank(path: Path) -> None:
    """The asset rewritten as a valid GeoTIFF whose every pixel is its nodata value."""
    with rasterio.open(path) as src:
        profile, shape = src.profile, src.shape
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full(shape, profile["nodata"], dtype=profile["dtype"]), 1)


def test_a_band_without_any_valid_value_is_degraded_refused_by_predict_and_rebuilt(demo_run, tile_items, clean,
                                                                                   tmp_path):
    """Every red file readable but all nodata: nothing fails to read, yet B04 would be guessed at every
    pixel. The cube is "degraded" naming the band, predict refuses it, the repaired rerun rebuilds it."""
    from cropmap.stages.predict import open_cube

    tile, items = tile_items
    copies = _copied(items, tmp_path / "items")
    good = {Path(it.assets["red"].href): Path(it.assets["red"].href).read_bytes() for it in copies}
    for path in good:
        _blank(path)
    res = _build(demo_run, tile, copies, tmp_path / "cubes")
    assert res.status == "degraded" and "B04" in res.reason and not res.unavailable, res
    assert open_tile_cube(res.path).attrs["status"] == "degraded"
    with pytest.raises(DataNotFoundError, match="is degraded.*B04.*rebuild"):
        open_cube(res.path)
    for path, data in good.items():
        path.write_bytes(data)
    again = _build(demo_run, tile, copies, tmp_path / "cubes")  # not skipped: rebuilt, and whole now
    assert again.status == "written"
    np.testing.assert_array_equal(open_tile_cube(again.path).values, clean)
    assert _build(demo_run, tile, copies, tmp_path / "cubes").status == "skipped"


def test_a_tile_observed_below_the_threshold_is_degraded(demo_run, tile_items, clean_path, tmp_path):
    """The share of observed values against ``min_observed_fraction``, both sides of the clean tile's own."""
    tile, items = tile_items
    observed = 1 - open_tile_cube(clean_path).attrs["filled_fraction"]
    strict = CubeOptions(bands=BANDS, chunk=64, min_observed_fraction=observed + 0.01)
    res = build_tile_cube(tile, items, demo_run.season, demo_run.year, tmp_path / "strict", options=strict)
    assert res.status == "degraded" and f"only {observed:.1%}" in res.reason, res
    lenient = CubeOptions(bands=BANDS, chunk=64, min_observed_fraction=observed - 0.01)
    assert build_tile_cube(tile, items, demo_run.season, demo_run.year, tmp_path / "lenient",
                           options=lenient).status == "written"


def test_an_item_without_a_band_key_is_recorded_and_the_tile_incomplete(demo_run, tile_items, tmp_path):
    tile, items = tile_items
    copies = [it.clone() for it in items]
    del copies[2].assets["red"]
    with pytest.warns(AssetUnavailableWarning, match=f"{copies[2].id}.*B04"):
        res = _build(demo_run, tile, copies, tmp_path)
    assert res.status == "incomplete" and f"{copies[2].id}/B04" in res.unavailable


def test_a_band_missing_from_every_item_is_an_error_naming_it(demo_run, tile_items, tmp_path):
    tile, items = tile_items
    copies = [it.clone() for it in items]
    for item in copies:
        del item.assets["red"]
    with pytest.raises(MissingBandError, match="B04"):
        _build(demo_run, tile, copies, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_predict_refuses_an_incomplete_cube(demo_run, tile_items, tmp_path):
    from cropmap.stages.predict import open_cube

    tile, items = tile_items
    copies = _copied(items[:2], tmp_path / "items")
    _delete(Path(copies[0].assets["nir"].href))
    with pytest.warns(AssetUnavailableWarning):
        res = _build(demo_run, tile, copies, tmp_path / "cubes")
    with pytest.raises(DataNotFoundError, match=f"incomplete.*{copies[0].id}/nir.*rebuild"):
        open_cube(res.path)


def test_a_server_failing_twice_still_yields_the_clean_cube(demo_paths, demo_run, tile_items, tmp_path,
                                                           monkeypatch):
    """Every URL is answered HTTP 500 twice before it is served: GDAL's retries recover every read."""
    # the retries' schedule, not their number: every path GDAL asks for (the COGs, and the listings and
    # sidecars it looks for) waits twice; this build took ~13 s at a delay of 0.05 s, ~2 s at 0.001 s
    monkeypatch.setenv("GDAL_HTTP_RETRY_DELAY", "0.001")
    monkeypatch.setenv("CROPMAP_ASSET_HREF_SCHEMES", "https,s3,http")  # the searched items now point at it
    tile, items = tile_items
    copies = [it.clone() for it in items[:2]]  # two dates: each URL costs its two failures
    reference = open_tile_cube(_build(demo_run, tile, items[:2], tmp_path / "local").path).values
    with range_file_server(demo_paths.root, fail_first=2) as (url, _):
        for item in copies:
            for asset in item.assets.values():
                asset.href = url + "/" + str(Path(asset.href).resolve().relative_to(demo_paths.root.resolve()))
        with warnings.catch_warnings():
            warnings.simplefilter("error", AssetUnavailableWarning)
            res = _build(demo_run, tile, copies, tmp_path / "http")
    assert res.status == "written" and not res.unavailable
    np.testing.assert_array_equal(open_tile_cube(res.path).values, reference)


def test_a_missing_zarr_chunk_is_refused_not_read_as_nodata(clean_path, tmp_path):
    from cropmap.stages.predict import open_cube

    cube = tmp_path / clean_path.name
    shutil.copytree(clean_path, cube)
    chunks = sorted(p for p in (cube / "reflectance").rglob("*") if p.is_file() and p.name != "zarr.json")
    assert len(chunks) == 8  # 2 bands x 2 x 2 spatial chunks of 64 px
    chunks[3].unlink()
    with pytest.raises(DataNotFoundError, match="reflectance.*1 of 8 chunks missing"):
        open_cube(cube)


def test_an_empty_tile_writes_its_chunks_and_opens(demo_run, tile_items, tmp_path):
    from cropmap.stages.predict import open_cube

    tile, _ = tile_items
    res = _build(demo_run, tile, [], tmp_path)
    assert res.status == "empty" and np.isnan(open_cube(res.path).values).all()


@pytest.mark.slow
def test_a_tile_that_fails_to_predict_fails_the_run_after_the_others_are_mapped(demo_run, slim_model, tmp_path):
    """Two DEMO tiles, one whose cube has a corrupt chunk: the other tile is predicted and mosaicked, no
    accuracy is reported, and the run raises naming the tile (the flow ends Failed, the CLI exits 2). With
    the session's slim model: what the run does with a failed tile is looked at, not what the model says."""
    from cropmap.errors import CubeBuildError
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import check_complete, map_country
    from cropmap.jobs.tiles import cube_tile

    run = demo_run.model_copy(update={"root": str(tmp_path / "run")})
    bad = run.tiles()[1]
    built = cube_tile(run, bad)
    chunk = next(p for p in sorted((built.path / "reflectance").rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\x00garbage" * 64)
    result = map_country(run, InlineExecutor(), model=slim_model, tile_limit=2)
    assert result.tiles.failed_tiles == {bad} and result.accuracy is None
    assert result.mosaic is not None and Path(result.mosaic.cogs["class"]).exists()  # what can be written is
    assert not (Path(run.map_dir(result.key)) / "accuracy.json").exists()
    import json

    # the maps' STAC items say what they lack: a partial map never reads as a whole one
    for item in (result.mosaic.stac_item, *(z.stac_item for z in result.zones.values())):
        props = json.loads(Path(item).read_text())["properties"]
        assert props["cropmap:status"] == "partial", item
        assert [m["part"] for m in props["cropmap:missing"]] == [bad] and "predict: " in props["cropmap:missing"][0]["reason"]
    with pytest.raises(CubeBuildError, match=f"1 of 2 tile.*{bad}"):
        check_complete(result)
    # the corrupt cube carries its completion marker, so a plain rerun skips it and fails again;
    # ``overwrite`` (map-country's parameter, `cropmap map --overwrite`) rebuilds it and the rest
    stamp = Path(run.tile_dir(result.key), f"{run.tiles()[0]}.class.tif").stat().st_mtime_ns
    again = map_country(run, InlineExecutor(), model=slim_model, tile_limit=2, overwrite=True)
    check_complete(again)
    props = json.loads(Path(again.mosaic.stac_item).read_text())["properties"]
    assert props["cropmap:status"] == "complete" and "cropmap:missing" not in props
    assert {t: (r["cube"], r["predict"]) for t, r in again.tiles.status.items()} == {
        t: ("written", "done") for t in run.tiles()[:2]}
    assert Path(run.tile_dir(result.key), f"{run.tiles()[0]}.class.tif").stat().st_mtime_ns != stamp


WRITE_LIMITS = {"while-writing": 50_000, "at-close": 200_000}


@pytest.fixture(scope="module")
def geotiffs_under_limits(tmp_path_factory):
    """A tile GeoTIFF written under each file-size limit of ``WRITE_LIMITS`` (RLIMIT_FSIZE), one after the other
    in ONE process (``_run_under_limits``): ``{case: (its folder, the last line of its error or None)}``."""
    root = tmp_path_factory.mktemp("geotiffs_under_limits")
    targets = {case: root / case / "t.confidence.tif" for case in WRITE_LIMITS}
    for target in targets.values():
        target.parent.mkdir()
    errors = _run_under_limits({case: ("geotiff", limit, {"out": str(targets[case])})
                                for case, limit in WRITE_LIMITS.items()})
    return {case: (target.parent, errors[case]) for case, target in targets.items()}


@pytest.mark.parametrize("case", WRITE_LIMITS)
def test_a_write_that_runs_out_of_space_raises_and_publishes_nothing(geotiffs_under_limits, case):
    """A file-size limit (RLIMIT_FSIZE: the same EFBIG/ENOSPC path as a full disk) cuts the GeoTIFF
    short, early or only when GDAL flushes at close: an error, and no file under the final name."""
    folder, error = geotiffs_under_limits[case]
    assert error is not None and "t.confidence.tif" in error, error
    assert list(folder.iterdir()) == []  # neither the final name nor a temporary


_FULL_DISK = """
import json, resource, signal, sys, traceback
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
import pystac
from cropmap.core.grid import tile_from_id
from cropmap.core.season import Season
from cropmap.stages.cube import CubeOptions, build_tile_cube
from cropmap.stages.mosaic import mosaic_tiles
from cropmap.stages.national import national_mosaic
from cropmap.stages.tile_geotiffs import write_tile_geotiff
import numpy as np
from rasterio.transform import from_origin
errors = {}
for case, (what, limit, args) in json.loads(sys.argv[1]).items():
    # the disk is full from here (the soft limit: lifted again for the next case)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        if what == "geotiff":
            write_tile_geotiff(args["out"], np.random.default_rng(0).integers(0, 100, (1, 512, 512), dtype=np.uint8),
                               crs="EPSG:32754", transform=from_origin(500000, 6000000, 10, 10), tags={},
                               product="confidence", checkpoint=None)  # ~220 kB deflated
        elif what == "cube":
            build_tile_cube(tile_from_id(args["tile"]), [pystac.Item.from_dict(d) for d in args["items"]],
                            Season(**args["season"]), args["year"], args["out"],
                            options=CubeOptions(bands=("B04", "B08"), chunk=64))
        elif what == "zone mosaic":
            mosaic_tiles(args["tiles"], args["out"], name="zone", tile_ids=args["ids"], quicklook=False)
        else:
            national_mosaic({int(e): p for e, p in args["zones"].items()}, args["out"], name="national",
                            crs=args["crs"])
        errors[case] = None
    except Exception as err:  # the last line of its traceback
        errors[case] = traceback.format_exception_only(err)[-1].strip()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
print(json.dumps(errors))
"""
FULL_DISK_STAGES = ("cube", "zone mosaic", "national mosaic")


def _run_under_limits(cases: dict) -> dict:
    """Run ``{case: (what, file-size limit in bytes, its arguments)}`` one after the other in ONE fresh process
    under RLIMIT_FSIZE (``_FULL_DISK``): ``{case: the last line of its error, or None}``."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, json.dumps(cases)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
FULL_DISK_LIMITS = (4_000, 12_000)  # under the smallest file each stage writes whole (an int16 cube chunk: ~18 kB)


@pytest.fixture(scope="module")
def full_disk(demo_run, tile_items, two_zone_run, tmp_path_factory):
    """Every stage of ``FULL_DISK_STAGES`` run under each file-size limit of ``FULL_DISK_LIMITS`` (RLIMIT_FSIZE:
    EFBIG, the path of a full disk), one after the other in ONE process (what a case leaves is looked at
    after it exits): ``{(stage, limit): (the case's output folder, the last line of its error or None)}``."""
    root = tmp_path_factory.mktemp("full_disk")
    run, result = two_zone_run
    tile, items = tile_items
    clones = [it.clone() for it in items]
    for it in clones:
        it.make_asset_hrefs_absolute()
    epsg, zone = next(iter(result.zones.items()))
    cases, outs = {}, {}
    for stage in FULL_DISK_STAGES:
        for limit in FULL_DISK_LIMITS:
            name = f"{stage.replace(' ', '_')}-{limit}"
            out = str(root / name / "out")
            if stage == "cube":
                args = {"tile": tile.id, "items": [it.to_dict() for it in clones],
                        "season": demo_run.season.model_dump(mode="json"), "year": demo_run.year, "out": out}
            elif stage == "zone mosaic":
                args = {"tiles": str(run.tile_dir(result.key)), "out": out, "ids": list(zone.tile_ids)}
            else:
                args = {"zones": {e: {p: str(c) for p, c in z.cogs.items()} for e, z in result.zones.items()},
                        "out": out, "crs": run.config.output_crs}
            cases[name] = (stage, limit, args)
            outs[(stage, limit)] = (name, Path(out))
    errors = _run_under_limits(cases)
    return {key: (out, errors[name]) for key, (name, out) in outs.items()}


@pytest.mark.parametrize("limit", FULL_DISK_LIMITS)
@pytest.mark.parametrize("stage", FULL_DISK_STAGES)
def test_a_full_disk_in_any_stage_fails_and_leaves_only_whole_files(stage, limit, full_disk):
    """The cube's Zarr store, a zone's COG mosaic and the national warp, each under a file-size limit
    (RLIMIT_FSIZE: EFBIG, the path of a full disk; ``full_disk``): the stage fails, no temporary is left, and
    every file under a final name is whole (valid COGs, parseable JSON); the STAC item, written last, is absent."""
    import json

    from rio_cogeo.cogeo import cog_validate

    from cropmap.io.storage import TEMP_MARK

    out, error = full_disk[(stage, limit)]
    assert error is not None, f"{stage} under {limit} bytes did not fail"
    # the failure is the full disk's (EFBIG / GDAL's write error), not some other error of the stage
    assert re.search(r"File too large|Errno 27|could not write|No space", error), error
    left = [p for p in out.rglob("*")] if out.exists() else []
    assert [str(p) for p in left if TEMP_MARK in p.name] == [], error
    finals = [p for p in left if p.is_file()]
    if stage == "cube":
        assert finals == [] and [p for p in left if p.suffix == ".zarr"] == []
    for path in finals:
        if path.suffix == ".tif":
            assert cog_validate(path, strict=True)[0], path
        elif path.suffix == ".json":
            json.loads(path.read_text())
    assert not any(p.name in ("zone.json", "national.json") for p in finals)


_KILLED_BUILD = """
import sys, time
from pathlib import Path
from cropmap.io.outputs import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:  # as build_tile_cube's output_dir: half a store, then killed
    tmp.mkdir()
    (tmp / "zarr.json").write_text("{}")
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_a_killed_build_leaves_a_temporary_that_no_reader_lists_and_the_rerun_removes(demo_run, tile_items,
                                                                                     clean_path, tmp_path):
    import signal
    import subprocess
    import sys

    from cropmap.stages.cube import cube_stores

    tile, items = tile_items
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_BUILD, str(tmp_path / clean_path.name)],
                            stdout=subprocess.PIPE, text=True, env=env)
    leftover = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert leftover.is_dir() and leftover.name.startswith(f".{tile.id}.tmp-")
    assert cube_stores([tmp_path]) == []  # `cropmap predict <folder>` sees no cube, not the half store
    res = _build(demo_run, tile, items, tmp_path)
    assert res.status == "written" and not leftover.exists()  # the dead process's temporary is removed
    assert cube_stores([tmp_path]) == [res.path] and [p.name for p in tmp_path.iterdir()] == [res.path.name]


def test_an_area_outside_the_country_is_refused(demo_run):
    from cropmap.errors import EmptyAOIError
    from cropmap.io.outlines import tiles_for_area

    with pytest.raises(EmptyAOIError, match=r"outside DEMO"):
        tiles_for_area(demo_run.config, (10.0, 45.0, 10.1, 45.1))  # northern Italy
    assert len(tiles_for_area(demo_run.config, (141.7, -37.2, 142.7, -36.2))) == 4  # clipped to the country


def test_an_area_planning_more_tiles_than_the_cap_is_refused_naming_both(demo_run, monkeypatch):
    from cropmap.errors import ConfigError
    from cropmap.io.outlines import tiles_for_area

    monkeypatch.setenv("CROPMAP_MAX_AREA_TILES", "3")
    with pytest.raises(ConfigError, match=r"4 tiles.*CROPMAP_MAX_AREA_TILES=3"):
        tiles_for_area(demo_run.config, (141.7, -37.2, 142.7, -36.2))
    assert len(tiles_for_area(demo_run.config, (141.7, -37.2, 142.7, -36.2), limit=4)) == 4  # explicit override


@pytest.mark.parametrize("text", ["[]", '{"foo": 1}', '{"type": "FeatureCollection", "features": [{"x": 1}]}'])
def test_a_malformed_geojson_area_is_a_config_error(demo_run, tmp_path, text):
    from cropmap.errors import ConfigError
    from cropmap.io.outlines import tiles_for_area

    (tmp_path / "aoi.geojson").write_text(text)
    with pytest.raises(ConfigError, match="aoi.geojson"):
        tiles_for_area(demo_run.config, str(tmp_path / "aoi.geojson"))


@pytest.mark.parametrize("tile_id", ["../escaped_tile", "a/b", ".hidden", ""])
def test_a_cube_whose_tile_id_is_not_a_safe_name_is_refused_before_anything_is_written(clean_path, tmp_path,
                                                                                      tile_id):
    import zarr

    from cropmap.errors import InvalidInputError
    from cropmap.jobs.tiles import check_cubes_fit
    from cropmap.stages.predict import write_tile_predictions

    cube = tmp_path / "cubes" / clean_path.name
    shutil.copytree(clean_path, cube)
    zarr.open_group(str(cube), mode="r+").attrs["tile_id"] = tile_id
    out = tmp_path / "out" / "maps"
    unread = object()  # the model is never looked at: the name is refused first
    with pytest.raises(InvalidInputError, match="tile id"):
        write_tile_predictions(unread, cube, out)
    with pytest.raises(InvalidInputError, match="tile id"):
        check_cubes_fit(unread, [cube])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cubes"]  # nothing written, inside or out


def test_prefect_retries_io_errors_only_and_the_io_tasks_carry_no_prefect_timeout(prefect_server, monkeypatch):
    """On the session's real Prefect server: a task with the flows' retry condition runs once on a
    ConfigError or a season that does not fit, three times (2 retries) on an unreadable asset; the
    flows' search and cube tasks use that condition and carry no Prefect timeout."""
    from prefect import flow, task

    from cropmap.errors import AssetReadError, CatalogError, ConfigError, IncompatibleInputError
    from cropmap.flows import tasks

    use_prefect_env(monkeypatch, {"PREFECT_API_URL": prefect_server[0]})
    errors = {"config": ConfigError("bad value"), "season": IncompatibleInputError("season differs"),
              "asset": AssetReadError("truncated COG"), "catalog": CatalogError("503 from the STAC API")}
    calls: list[str] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=tasks.retry_io_only)
    def failing(kind: str) -> None:
        calls.append(kind)
        raise errors[kind]

    @flow
    def attempts(kind: str) -> int:
        failing(kind, return_state=True)
        return calls.count(kind)

    assert {kind: attempts(kind) for kind in errors} == {"config": 1, "season": 1, "asset": 3, "catalog": 3}
    assert tasks.search_block.retry_condition_fn is tasks.cube_tile.retry_condition_fn is tasks.retry_io_only
    assert tasks.predict_tile.retries == 0  # compute on local files: a failure is not transient
    from cropmap.jobs import tiles

    # the time limits are enforced inside the work (cropmap.io.time_limits.time_limit; test_hostile_catalogs):
    # Prefect's timeout cannot interrupt a task on a Dask worker thread and only logs a warning per tile
    assert tasks.executor().tasks[tiles.cube_tile].timeout_seconds is None


def test_training_refuses_tiles_whose_cubes_are_incomplete(demo_paths, demo_run, tmp_path):
    """A training tile's cube built with an unreadable asset (a truncated red COG in a copy of the DEMO
    catalog) is incomplete: train_country stops before any sample is drawn, naming the tile, instead
    of training on a sample set with a hole (which would be a different model, silently)."""
    from cropmap.errors import CubeBuildError
    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import train_country

    copy = tmp_path / "demo"
    shutil.copytree(demo_paths.root, copy)
    catalog = demo_run.config.catalog.model_copy(update={"path": copy / "catalog.json"})
    run = demo_run.model_copy(update={"root": str(tmp_path / "run"),
                                      "config": demo_run.config.model_copy(update={"catalog": catalog})})
    first_day = demo_run.season.window(demo_run.year)[0].strftime("%Y%m%d")
    item = min(p for p in (copy / "sentinel-2-l2a").iterdir() if p.is_dir() and p.name.split("_")[2] >= first_day)
    _truncate(item / "red.tif")
    with pytest.warns(AssetUnavailableWarning, match="'red'"), \
            pytest.raises(CubeBuildError, match=r"training tile\(s\) are incomplete.*rerun to rebuild"):
        train_country(run, InlineExecutor(), settings=run.scenario.training.model_copy(update={"epochs": 1}))
    assert not list(Path(run.training_dir).glob("samples-*.nc"))  # no sample set was written
