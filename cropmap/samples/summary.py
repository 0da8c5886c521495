"""What a sample set holds, before and after compositing, and the real sample sets of the data folder."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import xarray as xr

from cropmap.core.composite import median_composite
from cropmap.core.season import Season
from cropmap.io.data import data_file
from cropmap.samples.sits import read_sits
from cropmap.samples.victoria import read_victoria
from cropmap.samples.worldcereal import read_worldcereal

__all__ = ["summarize_samples", "real_sample_sets"]


def _best_year(times: np.ndarray, season: Season) -> int:
    """The season year whose window overlaps the dates ``times`` the most."""
    t0, t1 = pd.Timestamp(times.min()), pd.Timestamp(times.max())

    def overlap(year: int) -> float:
        first, last = (pd.Timestamp(d) for d in season.window(year))
        return (min(t1, last) - max(t0, first)).days

    return max(range(t0.year - 1, t1.year + 1), key=overlap)


def summarize_samples(
    samples: xr.Dataset,
    *,
    season: Season | None = None,
    year: int | None = None,
) -> dict:
    """Shape, classes, counts and gaps of a sample set, before and after 5-day compositing.

    ``season`` defaults to the seed's window for the samples' hemisphere (south when the median
    latitude is negative); ``year`` to the season year the dates cover best. Returns a dict with
    ``shape`` (sample, time, band), ``bands``, ``dates`` (first, last), ``class_counts``
    {name: count}, ``regions`` {region: count}, ``nodata_fraction`` (NaN share of the raw values),
    ``season``, ``season_year``, ``n_bins`` and, after :func:`~cropmap.core.composite.median_composite`,
    ``filled_fraction`` (mean share of bins interpolated) and ``empty_samples`` (no valid value).
    """
    if season is None:
        lat = float(np.nanmedian(samples["lat"].values)) if np.isfinite(samples["lat"].values).any() else 0.0
        season = Season.for_hemisphere("south" if lat < 0 else "north")
    times = samples["time"].values
    year = _best_year(times, season) if year is None else year
    composite = median_composite(samples["reflectance"], season, year)
    filled = composite["filled_fraction"].values
    counts = np.bincount(samples["label"].values, minlength=samples.sizes["class"])
    regions, region_counts = np.unique(samples["region"].values, return_counts=True)
    return {
        "shape": tuple(samples["reflectance"].shape),
        "bands": [str(b) for b in samples["band"].values],
        "dates": (str(times.min())[:10], str(times.max())[:10]),
        "class_counts": {str(n): int(c) for n, c in zip(samples["class_name"].values, counts)},
        "regions": {str(r): int(c) for r, c in zip(regions, region_counts)},
        "nodata_fraction": float(np.isnan(samples["reflectance"].values).mean()),
        "season": season.describe(),
        "season_year": int(year),
        "n_bins": season.n_bins,
        "filled_fraction": float(filled.mean()),
        "empty_samples": int((filled == 1.0).sum()),
    }


def real_sample_sets() -> dict[str, tuple[Callable[[], xr.Dataset], Season | None]]:
    """The real sample sets of ``../shared/data``: name -> (loader, season or None for automatic)."""
    def wc(name: str) -> Callable[[], xr.Dataset]:
        return lambda: read_worldcereal(data_file(f"worldcereal/{name}"))

    south = Season.for_hemisphere("south")
    return {
        "victoria-train": (lambda: read_victoria("train"), south),
        "victoria-test": (lambda: read_victoria("test"), south),
        "worldcereal-uga-ssd": (wc("test_public_extractions.parquet"), None),
        "worldcereal-bel-long": (wc("private_extractions_dummy_BEL.parquet"), None),
        "worldcereal-bel-monthly": (wc("prometheo_worldcereal_dataset.parquet"), None),
        "worldcereal-bel-dekadal": (wc("prometheo_worldcereal_dataset_10D.parquet"), None),
        "sits-mato-grosso": (lambda: read_sits(data_file("sits_mato_grosso/samples_mt_9classes.rda")), south),
    }
