"""``cropmap area``: a stratified random sample of a class map to be labelled, and the area-adjusted
estimates with 95 % confidence intervals from the labelled sample (Olofsson et al. 2014); labelling
suggestions for training (``area sample --design uncertainty``)."""

from __future__ import annotations

from pathlib import Path

import typer

from cropmap.cli.common import app, command, fail

# the library (numpy, rasterio, geopandas ...) is imported inside each command, not here: `cropmap --help` and
# `cropmap version` start without it (tests/test_cli_startup.py)

area_app = typer.Typer(help="Area estimates with confidence intervals from a stratified sample of a class map.",
                       no_args_is_help=True)
app.add_typer(area_app, name="area")


@area_app.command("sample")
@command
def sample(
    class_map: Path = typer.Argument(..., help="The class COG (<name>_class.tif) to sample; its classes are the strata."),
    out: Path = typer.Option(..., "--out", help="Sample points to label: .gpkg (EPSG:4326 points) or .csv."),
    n: int = typer.Option(None, "--n", min=2, help="Total sample size (default: from --target-se)."),
    target_se: float = typer.Option(0.01, "--target-se", help="Target standard error of the overall accuracy."),
    expected_ua: float = typer.Option(0.8, "--expected-ua", help="User's accuracy expected in every stratum."),
    minimum: int = typer.Option(50, "--min-per-class", min=2, help="Sample units at least per class (rare classes)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed draws the same points."),
    reference: Path = typer.Option(None, "--reference", help="Label the points from this reference map (DEMO)."),
    design: str = typer.Option("stratified", "--design", help="stratified: the random sample the area estimate "
                               "needs; uncertainty: labelling suggestions where the model is least sure or most "
                               "out of distribution (for training, refused by `cropmap area estimate`)."),
    confidence: Path = typer.Option(None, "--confidence", help="uncertainty: the confidence COG (default: "
                                    "<name>_confidence.tif beside the class map)."),
    ood: Path = typer.Option(None, "--ood", help="uncertainty: the OOD COG (default: <name>_ood.tif beside the class "
                             "map, when there)."),
    min_distance: float = typer.Option(500.0, "--min-distance", help="uncertainty: metres at least "
                                       "between two suggested points."),
    ood_share: float = typer.Option(0.5, "--ood-share", help="uncertainty: the share of the points "
                                    "taken where the OOD score is highest (with an OOD COG); the rest where "
                                    "confidence is lowest."),
) -> None:
    """Draw a stratified random sample of the map's pixels (strata = classes) to be labelled, or with
    ``--design uncertainty`` suggest points to label for training."""
    from cropmap.core.area_estimation import allocate, sample_size
    from cropmap.stages.area import draw_sample, label_from_reference, map_strata, write_sample

    if design not in ("stratified", "uncertainty"):
        raise fail(f"--design {design!r}: choose stratified (for area estimates) or uncertainty (to label for "
                   "training)")
    strata = map_strata(class_map)
    if design == "uncertainty":
        _suggest(strata, out, n=n or 100, seed=seed, reference=reference, confidence=confidence, ood=ood,
                 min_distance=min_distance, ood_share=ood_share)
        return
    total = n or sample_size(strata.pixels, [expected_ua] * len(strata.names), target_se)
    alloc = allocate(strata.pixels, total, minimum=minimum)
    points = draw_sample(strata, alloc, seed=seed)
    if reference is not None:
        points = label_from_reference(points, strata, reference)
    write_sample(points, out)
    typer.echo(f"{len(points)} sample points ({', '.join(f'{c}: {k}' for c, k in zip(strata.names, alloc))}) "
               f"-> {out}" + ("" if reference else "; fill reference_class, then run `cropmap area estimate`"))


def _suggest(strata, out: Path, *, n: int, seed: int, reference: Path | None, confidence: Path | None,
             ood: Path | None, min_distance: float, ood_share: float) -> None:
    """``area sample --design uncertainty``: :func:`cropmap.stages.label_suggestions.suggest_points`."""
    from cropmap.stages.area import label_from_reference, write_sample
    from cropmap.stages.label_suggestions import sidecar_path, suggest_points

    if ood is None and sidecar_path(strata.path, "ood").exists():
        ood = sidecar_path(strata.path, "ood")
    points = suggest_points(strata, n=n, confidence=confidence or sidecar_path(strata.path, "confidence"), ood=ood,
                            min_distance_m=min_distance, ood_share=ood_share, seed=seed)
    if reference is not None:
        points = label_from_reference(points, strata, reference)
    write_sample(points, out)
    reasons = points["reason"].value_counts()
    short = f" (the map has room for no more {min_distance:g} m apart)" if len(points) < n else ""
    typer.echo(f"{len(points)} suggested points{short}: {reasons.get('low_confidence', 0)} least confident"
               + (f", {reasons.get('ood', 0)} most out of distribution" if ood is not None else ", no OOD COG")
               + f" -> {out}" + ("" if reference else "; fill reference_class, then train with "
                                 "`cropmap train --labels` (not for `cropmap area estimate`)"))


@area_app.command("estimate")
@command
def estimate(
    class_map: Path = typer.Argument(..., help="The class COG the sample was drawn on."),
    samples: Path = typer.Argument(..., help="Labelled sample points (.csv or .gpkg with reference_class)."),
    out: Path = typer.Option(..., "--out", help="Folder for <name>_estimates.csv, <name>_error_matrix.csv, <name>.md."),
    name: str = typer.Option("area", "--name", help="Prefix of the report files."),
    reference: Path = typer.Option(None, "--reference", help="Relabel the points from this reference map first."),
) -> None:
    """Area-adjusted areas (ha), user's/producer's/overall accuracy, each with a 95 % CI."""
    from cropmap.core.area_estimation import Z95
    from cropmap.stages.area import (check_sample_on_map, estimate_areas, label_from_reference, map_strata,
                                     read_sample, write_area_report)
    from cropmap.stages.area import refuse_suggestions

    strata = map_strata(class_map)
    points = read_sample(samples)
    refuse_suggestions(points)  # chosen where the map errs: not a probability sample
    check_sample_on_map(strata, points)  # estimates from another map's sample would describe that map
    if reference is not None:
        points = label_from_reference(points, strata, reference)
    est, notes = estimate_areas(strata, points)
    if notes["n_used"] == 0:
        raise fail(f"{samples} holds no labelled point of a map class; fill reference_class")
    paths = write_area_report(strata, est, out, name=name, notes=notes)
    for cls, area, se in zip(strata.names, est.area, est.area_se):
        typer.echo(f"{cls:>20}: {area:12.1f} ha +- {Z95 * se:.1f}")
    typer.echo(f"overall accuracy {est.overall:.4f} +- {Z95 * est.overall_se:.4f}; report: {paths['markdown']}")


@area_app.command("zonal")
@command
def zonal(
    class_map: Path = typer.Argument(..., help="A class COG in a projected CRS (the national map)."),
    units: Path = typer.Argument(..., help="Polygons (provinces, districts): any vector file, any CRS."),
    field: str = typer.Option(..., "--field", help="The column that names each unit."),
    out: Path = typer.Option(..., "--out", help="Folder for <name>_by_unit.csv and <name>_by_unit.md."),
    name: str = typer.Option("area", "--name", help="Prefix of the report files."),
) -> None:
    """Mapped hectares of each class in each unit (pixel counts, not area-adjusted)."""
    from cropmap.stages.area import write_zonal_report, zonal_areas

    table = zonal_areas(class_map, units, field=field)
    paths = write_zonal_report(table, out, class_map=class_map, name=name)
    typer.echo(f"{len(table)} unit(s), {table['mapped_ha'].sum():.1f} ha mapped -> {paths['by_unit']}")
