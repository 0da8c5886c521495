"""Figures an analyst reads (issue 37): no legend over the data of the area pictures (the legend's window
extent against the axes' data extent, after the layout is done), one orientation for every class x class
matrix (rows reference, columns map, on the axes), and a quicklook title with the place, season, model,
score and the Copernicus credit. The figures are caught as the code closes them, so what is checked is
what was saved."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
import rasterio

from cropmap.core.area_estimation import stratified_estimate
from cropmap.ml.evaluate import write_confusion
from cropmap.stages.area import MapStrata, write_area_report
from cropmap.stages.area_zonal import write_zonal_report, zonal_areas
from cropmap.stages.quicklook import write_quicklook

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the file-only backend

SEASON = json.dumps({"start": "08-01", "end": "07-31", "hemisphere": "south", "bin_days": 5, "n_bins": 73})


@pytest.fixture
def closed_figures(monkeypatch):
    """The figures the code under test closes (after it saved them), in order."""
    caught = []
    close = plt.close

    def keep(fig=None):
        caught.append(fig)
        close(fig)

    monkeypatch.setattr(plt, "close", keep)
    return caught


@pytest.fixture(scope="module")
def class_map(demo_paths, tmp_path_factory):
    """The DEMO reference map (real Victoria classes, EPSG:32754) as a cropmap class COG: class names,
    colours, season and model tags."""
    out = tmp_path_factory.mktemp("figures") / "DEMO_class.tif"
    with rasterio.open(demo_paths.reference) as src:
        profile, data, tags, colormap = src.profile, src.read(), src.tags(1) | src.tags(), src.colormap(1)
    names = [tags[f"class_{i}"] for i in range(int(data[data != 255].max()) + 1)]
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(class_names=json.dumps(names), season=SEASON, season_year="2017", model_name="cropnet")
        dst.write_colormap(1, colormap)
    return out, names


def _legends_clear_of_the_data(fig, *, inside_figure: bool = True) -> None:
    """Every legend of ``fig`` lies outside each axes' data area (and inside the figure: a figure saved
    with ``bbox_inches="tight"``, the quicklook, grows to hold it instead)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # a closed pyplot figure keeps no canvas; the layout is drawn again, the same
    canvas.draw()
    renderer = canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends, "the figure has no legend"
    for ax in fig.axes:
        data_box = ax.get_window_extent(renderer)
        for legend in legends:
            box = legend.get_window_extent(renderer)
            assert not box.overlaps(data_box), f"legend {box} over the data {data_box}"
            if inside_figure:
                assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), "legend cut off"


# Olofsson et al. (2014) Table 8: counts, rows map, columns reference; asymmetric, so a transpose shows
TABLE8 = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])


def _cells(ax) -> dict[tuple[int, int], str]:
    """(row, column) -> the text written in that cell of a matrix picture."""
    return {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}


def test_area_pictures_keep_their_legends_off_the_data(class_map, closed_figures, tmp_path):
    path, names = class_map
    strata = MapStrata(path, tuple(names[:4]), np.array([200_000, 150_000, 3_200_000, 6_450_000]), 0.01,
                       rasterio.crs.CRS.from_epsg(32754))
    write_area_report(strata, stratified_estimate(TABLE8, strata.area_ha), tmp_path)
    from shapely.geometry import box

    from test_area_zonal import _layer

    with rasterio.open(path) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs.to_wkt()
    mid = (left + right) / 2
    units = _layer(tmp_path / "u.gpkg", [box(left - 900, bottom, mid, top), box(mid, bottom, right, top)],
                   ["west", "east"], crs)
    write_zonal_report(zonal_areas(path, units, field="Unit Name"), tmp_path, class_map=path)
    estimates, _, by_unit = closed_figures
    _legends_clear_of_the_data(estimates)
    _legends_clear_of_the_data(by_unit)
    labels = [t.get_text() for t in by_unit.legends[0].get_texts()]
    assert labels[:len(names)] == names and labels[-1] == "not mapped"  # the west unit's 900 m off the map


def test_every_matrix_has_rows_reference_and_columns_map(class_map, closed_figures, tmp_path):
    """confusion.png (counts of scikit-learn's orientation, rows reference) and the area error matrix
    (Olofsson's table, rows map, transposed): on both, cell (i, j) is reference i mapped as j, and the
    axes say so; the area error matrix CSV and markdown too."""
    path, names = class_map
    y_true, y_pred = np.array([0, 0, 0, 1, 2, 2]), np.array([0, 1, 1, 1, 2, 0])  # 2 x "reference 0 mapped 1"
    write_confusion(np.array([[1, 2, 0], [0, 1, 0], [1, 0, 1]]), names[:3], tmp_path / "confusion.csv")
    strata = MapStrata(path, tuple(names[:4]), np.array([200_000, 150_000, 3_200_000, 6_450_000]), 0.01,
                       rasterio.crs.CRS.from_epsg(32754))
    est = stratified_estimate(TABLE8, strata.area_ha)
    paths = write_area_report(strata, est, tmp_path)
    confusion, _, matrix = closed_figures
    for fig in (confusion, matrix):
        ax = fig.axes[0]
        assert "reference" in ax.get_ylabel() and "rows" in ax.get_ylabel()
        assert "map" in ax.get_xlabel() and "columns" in ax.get_xlabel()
    from sklearn.metrics import confusion_matrix

    reference = confusion_matrix(y_true, y_pred)  # rows: the first argument, the reference
    assert _cells(confusion.axes[0]) == {(i, j): str(v) for (i, j), v in np.ndenumerate(reference) if v}
    # the area picture: cell (reference i, map j) holds Olofsson's p[map j, reference i]
    drawn = _cells(matrix.axes[0])
    for (i, j), text in drawn.items():
        assert text == f"{est.proportions[j, i]:.3f}"
    # 8 units of reference 2 mapped as 1, none of reference 1 mapped as 2: drawn in one cell, not its mirror
    assert (2, 1) in drawn and (1, 2) not in drawn
    frame = pd.read_csv(paths["error_matrix"], index_col=0)
    assert list(frame.index) == [f"reference:{n}" for n in names[:4]]
    assert list(frame.columns) == [f"map:{n}" for n in names[:4]]
    np.testing.assert_allclose(frame.to_numpy(), np.round(est.proportions.T, 6))
    assert "rows: reference, columns: map" in paths["markdown"].read_text()


def test_quicklook_title_place_season_model_score_and_credit(class_map, closed_figures, tmp_path):
    """The title names the place, the season and model, the score when scored, and the Copernicus credit
    of the season's years (Aug 2017 - Jul 2018); nothing but the scale bar is drawn over the map, and
    the legend lies outside it."""
    path, _ = class_map
    write_quicklook(path, tmp_path / "scored.png", place="Victoria",
                    score={"oa": 0.91234, "macro_f1": 0.8, "kappa": float("nan"), "n": 65536})
    write_quicklook(path, tmp_path / "unscored.png")
    scored, unscored = closed_figures
    lines = scored.axes[0].get_title().splitlines()
    assert lines == ["Victoria - season 08-01..07-31 2017 - model cropnet",
                     "scored: OA 0.912, macro-F1 0.800 on 65,536 reference pixels",
                     "Contains modified Copernicus Sentinel data 2017-2018; map licence CC-BY-4.0"]
    assert unscored.axes[0].get_title().splitlines() == ["DEMO_class - season 08-01..07-31 2017 - model cropnet",
                                                          lines[2]]
    assert [t.get_text() for t in scored.axes[0].texts] == ["0.5 km"]  # the scale bar's label only
    _legends_clear_of_the_data(scored, inside_figure=False)
    from PIL import Image

    with Image.open(tmp_path / "scored.png") as png:
        assert png.text["Copyright"] == lines[2] and png.text["Title"] == " - ".join(lines[:2])
