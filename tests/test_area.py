"""Area estimates with confidence intervals (Olofsson et al. 2013, 2014): the paper's worked example
(2014, Table 8 and p. 54) to the digits printed there, a plain NumPy stratified-mean computation from
individual sample units, and a stratified sample drawn on the DEMO reference map and labelled by it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from cropmap.core.area_estimation import Z95, allocate, sample_size, stratified_estimate
from cropmap.errors import InvalidInputError
from cropmap.stages.area import (
    draw_sample,
    estimate_areas,
    label_from_reference,
    map_strata,
    read_sample,
    write_area_report,
    write_sample,
)

# Olofsson et al. (2014) Table 8: sample counts, rows map, columns reference (deforestation, forest gain,
# stable forest, stable non-forest), and the mapped areas in Landsat pixels (30 m: 0.09 ha)
TABLE8 = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
TABLE8_PIXELS = np.array([200_000, 150_000, 3_200_000, 6_450_000])


def test_olofsson_2014_worked_example_to_the_printed_digits():
    est = stratified_estimate(TABLE8, TABLE8_PIXELS * 0.09)
    # p. 54: area-adjusted areas and their 95 % CIs in hectares
    np.testing.assert_array_equal(np.rint(est.area), [21_158, 11_686, 285_770, 581_386])
    np.testing.assert_array_equal(np.rint(Z95 * est.area_se), [6_158, 3_756, 15_510, 16_282])
    # user's / producer's / overall accuracy with 95 % CIs, two decimals as printed
    np.testing.assert_array_equal(np.round(est.users, 2), [0.88, 0.73, 0.93, 0.96])
    np.testing.assert_array_equal(np.round(Z95 * est.users_se, 2), [0.07, 0.10, 0.04, 0.02])
    np.testing.assert_array_equal(np.round(est.producers, 2), [0.75, 0.85, 0.93, 0.96])
    np.testing.assert_array_equal(np.round(Z95 * est.producers_se, 2), [0.21, 0.25, 0.03, 0.02])
    assert (round(est.overall, 2), round(Z95 * est.overall_se, 2)) == (0.95, 0.02)
    # Table 9: the error matrix in area proportions
    np.testing.assert_allclose(est.proportions[0], [0.0176, 0.0000, 0.0013, 0.0011], atol=5e-5)


def test_estimates_equal_a_stratified_mean_over_sample_units():
    """The estimator written as a stratified mean of 0/1 indicators per sample unit (Cochran 5.1/5.6),
    in plain NumPy, on random counts: area proportions, their variances and OA agree."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        k = rng.integers(2, 6)
        counts = rng.integers(0, 40, size=(k, k)) + np.eye(k, dtype=int) * 60
        mapped = rng.uniform(1e3, 1e6, size=k)
        est = stratified_estimate(counts, mapped)
        w = mapped / mapped.sum()
        means = np.zeros(k)
        variance = np.zeros(k)
        oa, oa_var = 0.0, 0.0
        for h in range(k):
            ref = np.repeat(np.arange(k), counts[h])  # the stratum's sample units, by reference class
            y = ref[:, None] == np.arange(k)[None, :]
            means += w[h] * y.mean(0)
            variance += w[h] ** 2 * y.var(0, ddof=1) / len(ref)
            ok = ref == h
            oa += w[h] * ok.mean()
            oa_var += w[h] ** 2 * ok.var(ddof=1) / len(ref)
        np.testing.assert_allclose(est.area, means * mapped.sum(), rtol=1e-12)
        np.testing.assert_allclose(est.area_se, np.sqrt(variance) * mapped.sum(), rtol=1e-12)
        np.testing.assert_allclose([est.overall, est.overall_se], [oa, np.sqrt(oa_var)], rtol=1e-12)
        np.testing.assert_allclose(est.users, np.diag(counts) / counts.sum(1), rtol=1e-12)


def test_design_sample_size_and_allocation():
    # Olofsson et al. (2014) p. 53: expected UAs 0.7, 0.6, 0.9, 0.95 and a target SE of OA of 0.01 give n = 641
    assert sample_size(TABLE8_PIXELS, [0.7, 0.6, 0.9, 0.95], 0.01) == 641
    alloc = allocate([10, 2_000, 50_000, 100_000], 600, minimum=50)
    assert alloc.sum() == 600 and alloc[0] == 10 and alloc[1] >= 50 and alloc[3] > alloc[2]
    with pytest.raises(InvalidInputError, match="fewer than 2"):
        stratified_estimate(np.array([[1, 0], [0, 30]]), [10.0, 10.0])


@pytest.fixture(scope="module")
def demo_class_map(demo_paths, tmp_path_factory):
    """The DEMO reference map as a cropmap class map (class_names tag): the map and the labeller agree."""
    out = tmp_path_factory.mktemp("area") / "ref_class.tif"
    with rasterio.open(demo_paths.reference) as src:
        profile, data = src.profile, src.read()
        tags = src.tags(1) | src.tags()
        colormap = src.colormap(1)
    names = [tags[f"class_{i}"] for i in range(int(data[data != 255].max()) + 1)]
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(class_names=json.dumps(names))
        dst.write_colormap(1, colormap)
    return out, demo_paths.reference


def test_stratified_sample_on_the_demo_map(demo_class_map, tmp_path):
    class_map, reference = demo_class_map
    strata = map_strata(class_map)
    with rasterio.open(class_map) as src:
        data = src.read(1)
    np.testing.assert_array_equal(strata.pixels, np.bincount(data[data != 255].ravel(), minlength=len(strata.names)))
    alloc = allocate(strata.pixels, 300, minimum=20)
    sample = draw_sample(strata, alloc, seed=7)
    np.testing.assert_array_equal(sample.groupby("map_class").size().reindex(range(len(alloc)), fill_value=0), alloc)
    assert (data[sample["row"], sample["col"]] == sample["map_class"]).all()  # each point on its stratum
    assert not sample.duplicated(["row", "col"]).any()
    assert sample.equals(draw_sample(strata, alloc, seed=7)) and not sample.equals(draw_sample(strata, alloc, seed=8))
    labelled = label_from_reference(sample, strata, reference)
    assert (labelled["reference_class"] == labelled["stratum"]).all()
    for suffix in (".csv", ".gpkg"):
        path = write_sample(labelled, tmp_path / f"samples{suffix}")
        back = read_sample(path)
        assert list(back["reference_class"]) == list(labelled["reference_class"])
    est, notes = estimate_areas(strata, read_sample(tmp_path / "samples.csv"))
    np.testing.assert_allclose(est.area, strata.area_ha)  # a perfect map: the estimate is the mapped area
    assert est.overall == 1.0 and notes["n_unlabelled"] == 0
    paths = write_area_report(strata, est, tmp_path / "report", notes=notes)
    assert "Overall accuracy: 1.0000" in paths["markdown"].read_text()
    _assert_picture(paths["estimates_png"], colours_of=class_map)
    _assert_picture(paths["error_matrix_png"])


def _assert_picture(png, *, colours_of=None):
    """A drawn PNG (not blank); with ``colours_of``, the class map's largest class is drawn in its own colour."""
    import matplotlib.image

    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 150 and img.shape[1] > 300, img.shape
    rgb = (img[..., :3] * 255).round().astype(int)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20  # text, bars and axes, not an empty canvas
    if colours_of is not None:
        with rasterio.open(colours_of) as src:
            colour = np.array(src.colormap(1)[int(np.argmax(map_strata(colours_of).pixels))][:3])
        assert (rgb == colour).all(-1).sum() > 100, f"{png.name}: no bar in the class colour {colour}"


def test_cli_area_sample_and_estimate(demo_class_map, tmp_path):
    from typer.testing import CliRunner

    from cropmap.cli import app

    class_map, reference = demo_class_map
    run = CliRunner().invoke(app, ["area", "sample", str(class_map), "--out", str(tmp_path / "s.gpkg"), "--n", "200",
                                   "--min-per-class", "10", "--reference", str(reference)])
    assert run.exit_code == 0, run.output
    assert "200 sample points" in run.output
    run = CliRunner().invoke(app, ["area", "estimate", str(class_map), str(tmp_path / "s.gpkg"), "--out", str(tmp_path)])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "area_estimates.csv").exists() and "overall accuracy 1.0000" in run.output
    assert (tmp_path / "area_estimates.png").exists() and (tmp_path / "area_error_matrix.png").exists()
    missing = CliRunner().invoke(app, ["area", "estimate", str(class_map), str(tmp_path / "none.csv"), "--out", "x"])
    assert missing.exit_code == 2 and "not found" in missing.output


@pytest.mark.slow
def test_demo_map_area_cis_cover_the_reference_areas(two_zone_run, demo_model, tmp_path):
    """The session's two-zone DEMO map of map-country (conftest ``two_zone_run``: two UTM zones warped to
    the national equal-area CRS), sampled (seed 0) and labelled by its reference map: every class's 95 % CI
    covers its reference area (reference pixels over the map's valid pixels, counted in NumPy). Then the
    labelled sample and admin units as parameters of a map-country rerun on a copy of that run."""
    import shutil

    from cropmap.jobs.executors import InlineExecutor
    from cropmap.jobs.mapping import map_country

    run, result = two_zone_run
    reference = run.scenario.reference
    class_map = result.mosaic.cogs["class"]
    strata = map_strata(class_map)
    sample = label_from_reference(draw_sample(strata, allocate(strata.pixels, 800, minimum=50), seed=0), strata,
                                  reference)
    est, notes = estimate_areas(strata, sample)
    from rasterio.vrt import WarpedVRT

    # the national map is in an equal-area CRS: the reference read onto its grid (nearest neighbour)
    with rasterio.open(class_map) as m, rasterio.open(reference) as r, \
            WarpedVRT(r, crs=m.crs, transform=m.transform, width=m.width, height=m.height,
                      resampling=rasterio.enums.Resampling.nearest, nodata=255) as vrt:
        ref = vrt.read(1)
        ref_names = {int(k[6:]): v for k, v in {**r.tags(), **r.tags(1)}.items()
                     if k.startswith("class_") and k[6:].isdigit()}
        mapped = m.read(1)
    valid = (mapped != 255) & (ref != 255)
    truth = np.array([(ref[valid] == v).sum() for v, n in sorted(ref_names.items()) if n in strata.names])
    names = [n for _, n in sorted(ref_names.items()) if n in strata.names]
    ref_ha = dict(zip(names, truth * strata.pixel_ha))
    lines = []
    for k, name in enumerate(strata.names):
        half = Z95 * est.area_se[k]
        lines.append(f"{name}: est {est.area[k]:.1f} +- {half:.1f} ha, reference {ref_ha.get(name, 0):.1f}, "
                     f"mapped {strata.area_ha[k]:.1f}")
    print("\n".join(lines))
    assert notes["n_unlabelled"] < 0.01 * len(sample)
    for k, name in enumerate(strata.names):
        assert abs(est.area[k] - ref_ha.get(name, 0.0)) <= Z95 * est.area_se[k], lines[k]

    # the same inside map-country: the labelled sample and admin units as parameters of a rerun (its
    # tiles are skipped), the products beside the maps, equal to the stage functions' on the same inputs.
    # The session's run is shared read only: the rerun works on a copy of its folder.
    import pandas as pd

    from cropmap.stages.area import area_table, zonal_areas

    copy = run.model_copy(update={"root": str(tmp_path / "run")})
    shutil.copytree(run.root, copy.root)
    write_sample(sample, tmp_path / "labelled.gpkg")
    _units(tmp_path / "units.gpkg", class_map)
    again = map_country(copy, InlineExecutor(), model=demo_model, area_samples=str(tmp_path / "labelled.gpkg"),
                        admin_units=str(tmp_path / "units.gpkg"), admin_field="NAME")
    assert all(r["predict"] == "skipped" for r in again.tiles.rows())
    assert set(again.area) == {"estimates", "error_matrix", "markdown", "by_unit", "by_unit_markdown",
                               "estimates_png", "error_matrix_png", "by_unit_png"}
    got = pd.read_csv(again.area["estimates"])
    pd.testing.assert_frame_equal(got, area_table(strata, est), check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_csv(again.area["by_unit"], dtype={"name": str}),
                                  zonal_areas(class_map, tmp_path / "units.gpkg", field="NAME"), check_dtype=False)
    # a sample whose strata are not this map's is refused, naming why
    other = draw_sample(map_strata(class_map), allocate(strata.pixels, 400, minimum=20), seed=1)
    other["map_class"] = (other["map_class"] + 1) % len(strata.names)
    write_sample(label_from_reference(other, strata, reference), tmp_path / "other.gpkg")
    with pytest.raises(InvalidInputError, match="drawn on another map"):
        map_country(copy, InlineExecutor(), model=demo_model, area_samples=str(tmp_path / "other.gpkg"))
    with pytest.raises(Exception, match="not found"):
        map_country(copy, InlineExecutor(), model=demo_model, area_samples=str(tmp_path / "none.gpkg"))


def _units(path, class_map, *, crs="EPSG:4326"):
    """Two units over the map (its west third and the rest, as lon/lat polygons: reprojected back
    onto the map's grid they are not rectangles any more) and one far away."""
    import pyogrio.raw
    import shapely
    from pyproj import Transformer
    from shapely.geometry import box

    with rasterio.open(class_map) as src:
        left, bottom, right, top = src.bounds
        map_crs = src.crs
    to_ll = Transformer.from_crs(map_crs, crs, always_xy=True)
    cut = left + (right - left) / 3

    lons, lats = to_ll.transform([left - 500, right + 500, left - 500, right + 500],
                                 [bottom - 500, bottom - 500, top + 500, top + 500])
    cut_lon = to_ll.transform(cut, (bottom + top) / 2)[0]  # one meridian between the two: they tile the map
    geometry = [box(min(lons), min(lats), cut_lon, max(lats)), box(cut_lon, min(lats), max(lons), max(lats)),
                box(0, 0, 0.01, 0.01)]
    names = np.array(["west", "east", "elsewhere"], dtype=object)
    pyogrio.raw.write(str(path), geometry=np.asarray(shapely.to_wkb(geometry), dtype=object), field_data=[names],
                      fields=["NAME"], crs=crs, geometry_type="Polygon", driver="GPKG")
    return {"NAME": list(names), "geometry": geometry}


def test_cli_area_zonal(demo_class_map, tmp_path):
    from typer.testing import CliRunner

    from cropmap.cli import app

    class_map, _ = demo_class_map
    _units(tmp_path / "units.gpkg", class_map)
    run = CliRunner().invoke(app, ["area", "zonal", str(class_map), str(tmp_path / "units.gpkg"), "--field", "NAME",
                                   "--out", str(tmp_path / "out")])
    assert run.exit_code == 0 and "3 unit(s)" in run.output, run.output
    assert (tmp_path / "out" / "area_by_unit.csv").exists()
    _assert_picture(tmp_path / "out" / "area_by_unit.png", colours_of=class_map)
    missing = CliRunner().invoke(app, ["area", "zonal", str(class_map), str(tmp_path / "no.gpkg"), "--field", "NAME",
                                       "--out", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "not found" in missing.output
