"""The Victoria (Australia) Sentinel-2 pixel series (charlotte-pel/igarss2019-dl4sits) as sample sets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from cropmap.core.bands import S2_BANDS, require_bands
from cropmap.errors import ConfigError, DataNotFoundError, InvalidInputError
from cropmap.io.data import data_file
from cropmap.samples.sets import make_sample_set

__all__ = ["read_victoria", "VICTORIA_START"]

#: Assumed first date of the Victoria series (the source gives none; see the data README).
VICTORIA_START = "2017-08-01"


def _rgb_to_hex(text: str) -> str:
    r, g, b = (int(v) for v in re.findall(r"\d+", text)[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def read_victoria(
    split: str = "train",
    *,
    start: str = VICTORIA_START,
    step_days: int = 5,
    folder: str | Path | None = None,
    path: str | Path | None = None,
) -> xr.Dataset:
    """The Victoria (Australia) Sentinel-2 pixel series: 400 samples x 73 dates x 10 bands, 8 classes.

    ``split`` is ``"train"`` or ``"test"``. The source gives no dates: the series is placed on
    ``start + k * step_days`` (k = 0..72); change ``start`` if you know better. Column
    ``b{t*10 + band}`` holds band ``band`` (B2..B12 order of :data:`S2_BANDS`) at step ``t``,
    reflectance x 10000. ``folder`` overrides the data folder (default: :func:`cropmap.io.data.data_file`).
    ``path`` reads any table of this format instead (its ``class_map.txt`` beside it); ``split`` is then
    ignored.
    """
    if path is not None:
        path = Path(path)
        folder, split = path.parent, path.stem
    elif split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")

    def _path(name: str) -> Path:
        return Path(folder) / name if folder is not None else data_file(f"victoria_s2/{name}")

    table = pd.read_csv(path if path is not None else _path(f"{split}_dataset.csv"))
    legend = _path("class_map.txt")
    if path is not None and not legend.exists():
        raise DataNotFoundError(f"{path} is read as a Victoria-format table (.csv), which needs its legend "
                                f"class_map.txt (value,class,colour) beside it: {legend} not found")
    # "value,class,colour" where colour is "rgb(r, g, b)": split on the first two commas only
    rows = [line.split(",", 2) for line in legend.read_text().splitlines()[1:] if line.strip()]
    value_cols = [c for c in table.columns if re.fullmatch(r"b\d+", c)]
    n_band = len(S2_BANDS)
    if not value_cols or "lc_id" not in table.columns:
        raise InvalidInputError(f"{path or split}: a Victoria-format table needs an lc_id column and value columns "
                                f"b0, b1, ... (band-major per step); it has {', '.join(map(str, table.columns[:8]))}")
    if len(value_cols) % n_band:
        raise InvalidInputError(f"Victoria table has {len(value_cols)} value columns, not a multiple of {n_band}")
    n_time = len(value_cols) // n_band
    ordered = [f"b{t * n_band + b}" for t in range(n_time) for b in range(n_band)]
    require_bands(table.columns, ordered, where=f"Victoria {split} table")
    values = table[ordered].to_numpy(np.float32).reshape(len(table), n_time, n_band) / np.float32(10000)
    times = pd.Timestamp(start) + pd.to_timedelta(np.arange(n_time) * step_days, unit="D")
    return make_sample_set(
        values,
        times=times,
        bands=S2_BANDS,
        labels=table["lc_id"].to_numpy(),
        class_names=[name.strip().lower() for _, name, _ in rows],
        class_colours=[_rgb_to_hex(colour) for _, _, colour in rows],
        region="AUS-VIC",
        source=str(path) if path is not None else f"victoria_s2/{split}_dataset.csv",
    )
