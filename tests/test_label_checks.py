"""Training labels checked and planned before any tile is cubed (issue 32, items 5 and 8).

Real labels: WorldCereal's 500 reference parcels (openeo_gfmap/wc_extraction_dataset.gpkg: 6 in Belgium,
266 in Austria, 228 in Latvia; ``valid_date`` 2021-06-01, legacy crop-type codes). The expected tiles are
found independently of the planner: every tile of the country, densified into lon/lat, against the
parcels in lon/lat. Planning only: nothing here builds a cube.
"""

from __future__ import annotations

import datetime as dt
import time

import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
import yaml
from pyproj import Transformer

from cropmap.io.config import load_legend
from cropmap.core.season import Season
from cropmap.errors import ConfigError, InvalidInputError
from cropmap.scenarios import resolve_run

PARCELS = "openeo_gfmap/wc_extraction_dataset.gpkg"


@pytest.fixture(scope="module")
def legend(shared_data, tmp_path_factory):
    """WorldCereal's legacy crop-type codes (wc2eurocrops CSV) -> cereals / other."""
    table = pd.read_csv(shared_data / "worldcereal/legend/wc2eurocrops_map_legacy_croptype_codes.csv", dtype=str)
    mapping = {c: "cereals" if any(w in n for w in ("wheat", "barley", "rye", "oat", "maize")) else "other"
               for c, n in zip(table["croptype"], table["name"].str.lower())}
    path = tmp_path_factory.mktemp("legend") / "wc.yaml"
    path.write_text(yaml.safe_dump({"name": "wc", "classes": ["cereals", "other"], "mapping": mapping}))
    return path


def _parcels(shared_data):
    _, _, wkb, (codes, dates) = pyogrio.raw.read(shared_data / PARCELS, columns=["croptype_label", "valid_date"])
    return shapely.from_wkb(wkb), codes, dates  # EPSG:4326


def _tiles_under(run, geometry_ll) -> tuple[list[str], int]:
    """Brute force: each tile of the run as a densified lon/lat polygon against every feature; the tiles
    met, and how many features meet one."""
    hit, met = [], np.zeros(len(geometry_ll), bool)
    for tile_id in run.tiles():
        tile = run.tile(tile_id)
        to_ll = Transformer.from_crs(tile.crs, "EPSG:4326", always_xy=True)
        box = shapely.transform(shapely.segmentize(shapely.box(*tile.bounds), 100.0),
                                lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
        inside = shapely.intersects(box, geometry_ll)
        if inside.any():
            hit.append(tile_id)
            met |= inside
    return hit, int(met.sum())


def test_training_tiles_are_those_under_the_parcels_not_their_bounding_box(shared_data, legend, tmp_path):
    """500 parcels from Latvia to Belgium against BEL: their bounding box plans 328 of BEL's 343 tiles;
    only the 4 tiles under the 6 Belgian parcels are cubed, and the 494 others are counted."""
    from cropmap.jobs.labels import check_training_labels
    from cropmap.jobs.mapping import training_tiles

    run = resolve_run("BEL", year=2021, out_dir=str(tmp_path))
    geometry, _, _ = _parcels(shared_data)
    expected, n_met = _tiles_under(run, geometry)
    assert 0 < len(expected) <= 6 and n_met == 6
    checked = check_training_labels(run, str(shared_data / PARCELS), label_column="croptype_label",
                                    legend=str(legend))
    assert checked.tile_ids == expected
    assert training_tiles(run, reference=str(shared_data / PARCELS), label_column="croptype_label",
                          legend=str(legend)) == expected
    assert (checked.check.n_used, checked.check.n_outside) == (6, 494)
    assert "6 of 500 features" in checked.summary and "494 outside BEL's tiles" in checked.summary


def test_a_run_plans_the_tiles_under_vector_labels_not_under_their_bounding_box(shared_data, tmp_path):
    """The run's own planning (``CountryRun.tiles``) agrees: 4 tiles, not the 328 of the bounding box."""
    run = resolve_run("BEL", year=2021, out_dir=str(tmp_path))
    geometry, _, _ = _parcels(shared_data)
    assert run.tiles(reference=shared_data / PARCELS) == _tiles_under(run, geometry)[0]


def test_points_in_a_projected_crs_plan_the_tiles_holding_them(shared_data, legend, tmp_path):
    """The parcels' centroids as points in ETRS89-LAEA (EPSG:3035): the tiles holding a point, no other."""
    from cropmap.jobs.labels import check_training_labels

    geometry, codes, dates = _parcels(shared_data)
    centroids = shapely.centroid(geometry)
    to_laea = Transformer.from_crs("EPSG:4326", "EPSG:3035", always_xy=True)
    points = shapely.transform(centroids, lambda xy: np.column_stack(to_laea.transform(xy[:, 0], xy[:, 1])))
    path = tmp_path / "points.gpkg"
    pyogrio.raw.write(path, shapely.to_wkb(points), [codes, dates], fields=["croptype_label", "valid_date"],
                      crs="EPSG:3035", geometry_type="Point", driver="GPKG")
    run = resolve_run("BEL", year=2021, out_dir=str(tmp_path))
    checked = check_training_labels(run, str(path), label_column="croptype_label", legend=str(legend))
    expected, n_met = _tiles_under(run, centroids)
    assert checked.tile_ids == expected
    assert (checked.check.n_used, checked.check.n_outside) == (n_met, 500 - n_met)


def test_labels_of_another_season_year_fail_naming_both_and_the_fix(shared_data, legend, tmp_path):
    from cropmap.jobs.labels import check_training_labels

    run = resolve_run("BEL", out_dir=str(tmp_path))  # the config's year: 2023
    assert run.year == 2023
    with pytest.raises(InvalidInputError, match=r"6 of the 6 labels on BEL's tiles are of season year 2021 "
                                                r"\(6\) by valid_date, the run's is 2023 .*--year 2021"):
        check_training_labels(run, str(shared_data / PARCELS), label_column="croptype_label", legend=str(legend))


@pytest.mark.parametrize("day, hemisphere, years", [
    (dt.date(2021, 6, 1), "north", (2021,)),  # WorldCereal's valid_date: in the May-Nov window
    (dt.date(2023, 2, 10), "north", (2022, 2023)),  # between two windows: a winter crop, or a late survey
    (dt.date(2023, 12, 20), "north", (2023, 2024)),
    (dt.date(2023, 3, 1), "south", (2022,)),  # Malawi's extraction dates: the Nov 2022 - May 2023 season
    (dt.date(2023, 11, 1), "south", (2023,)),
    (dt.date(2023, 7, 1), "south", (2022, 2023)),
])
def test_a_date_belongs_to_the_season_whose_window_holds_it(day, hemisphere, years):
    from cropmap.samples.label_checks import season_years_of

    assert season_years_of(day, Season.for_hemisphere(hemisphere)) == years


def test_typed_date_fields_and_year_columns_are_read_and_undated_labels_claim_nothing(shared_data, legend,
                                                                                   tmp_path):
    """GeoPackage Date fields, an integer ``year`` column, and a file with neither."""
    from cropmap.samples.label_checks import check_vector_labels

    geometry, codes, _ = _parcels(shared_data)
    run = resolve_run("BEL", out_dir=str(tmp_path))
    tiles = [run.tile(t) for t in run.tiles()]
    loaded = load_legend(legend)
    cases = {"typed": ([np.full(len(codes), "2022-07-15", dtype="datetime64[D]")], ["observed"], {"2022": 6}),
             "between": ([np.full(len(codes), "2023-01-20T10:00", dtype="datetime64[ms]")], ["when"],
                         {"2022/2023": 6}),
             "year": ([np.full(len(codes), 2020)], ["year"], {"2020": 6}),
             "undated": ([], [], {})}
    for name, (columns, fields, years) in cases.items():
        path = tmp_path / f"{name}.gpkg"
        pyogrio.raw.write(path, shapely.to_wkb(geometry), [codes, *columns], fields=["code", *fields],
                          crs="EPSG:4326", geometry_type="MultiPolygon", driver="GPKG")
        check = check_vector_labels(path, column="code", legend=loaded, tiles=tiles, season_for=run.config.season_for)
        assert check.season_years == years, name
        assert check.date_columns == tuple(fields), name
    from cropmap.jobs.labels import check_training_labels

    # a date between two seasons fits either: the 2023 run takes labels seen in January 2023
    between = check_training_labels(run, str(tmp_path / "between.gpkg"), label_column="code", legend=str(legend))
    assert len(between.tile_ids) > 0 and "season 2022/2023 (6)" in between.summary


def test_a_missing_legend_or_column_fails_before_any_tile(shared_data, legend, tmp_path):
    from cropmap.jobs.labels import check_training_labels

    run = resolve_run("FRA", out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="legend file .*nope.yaml not found"):
        check_training_labels(run, str(shared_data / PARCELS), label_column="croptype_label",
                              legend=str(tmp_path / "nope.yaml"))
    with pytest.raises(InvalidInputError, match="no label column 'TYPO'; columns: sample_id"):
        check_training_labels(run, str(shared_data / PARCELS), label_column="TYPO", legend=str(legend))
    # FRA: no parcel lies on its tiles (their bounding box planned 1,227 of them)
    with pytest.raises(InvalidInputError, match="the 500 labelled features of wc_extraction_dataset.gpkg "
                                                r"do not intersect FRA's tiles \(metropolitan\)"):
        check_training_labels(run, str(shared_data / PARCELS), label_column="croptype_label", legend=str(legend))


def test_cli_train_with_a_typo_in_the_label_column_exits_2_in_one_line_before_any_cube(shared_data, legend,
                                                                                      tmp_path):
    from typer.testing import CliRunner

    from cropmap.cli import app

    started = time.perf_counter()
    out = CliRunner().invoke(app, ["train", "FRA", "--labels", str(shared_data / PARCELS), "--label-column", "TYPO",
                                   "--legend", str(legend), "--out", str(tmp_path)])
    seconds = time.perf_counter() - started
    assert out.exit_code == 2, out.output
    errors = [line for line in out.output.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "no label column 'TYPO'" in errors[0], out.output
    assert "Traceback" not in out.output and seconds < 10, seconds
    assert not any(tmp_path.rglob("*.zarr"))  # nothing was cubed
