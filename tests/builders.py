"""Builders of small real test inputs shared by several test modules: the real Victoria series laid out as
tile cubes (``victoria_tiles``), a tiny CropNet trained on them in seconds (``train_tiny_model``), their
prediction through the job layer (``predict_tiles``), and a real Sentinel-2 tile and season (``TILE``,
``AUG``) over the items of the data folder's static catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import torch
import xarray as xr
from affine import Affine

from cropmap.core.composite import median_composite
from cropmap.core.features import compute_features
from cropmap.core.grid import Grid
from cropmap.core.season import Season
from cropmap.jobs.tiles import check_predict_inputs, predict_cubes
from cropmap.ml.checkpoint import save_checkpoint
from cropmap.ml.models import build_model
from cropmap.ml.normalisation import fit_normalisation
from cropmap.samples.victoria import read_victoria

AUG = Season(start="08-08", end="08-22")  # bins 08-08, 08-13, 08-18
# 2.56 km tile over 33TWM where the 18 Aug scene is partly cloudy (file row ~320, col ~357)
TILE = Grid(32633, tile_size=256).tile(1890, 212)

#: The Victoria series: 73 five-day steps from 2017-08-01 (see cropmap.samples.sets.VICTORIA_START).
VIC_SEASON = Season(start="08-01", end="07-31", hemisphere="south")
VIC_YEAR = 2017
EPSG = 32755  # UTM 55S covers Victoria
ORIGIN = (300000.0, 5900000.0)  # upper-left corner of tile (0, 0), metres


def predict_tiles(model, cubes, out, *, options=None, **keywords):
    """Every cube checked and predicted through the job layer (:func:`cropmap.jobs.tiles.check_predict_inputs`,
    :func:`~cropmap.jobs.tiles.predict_cubes`; ``keywords``: ``force``, ``executor``); the first failure raised,
    as a caller that needs every tile would."""
    from cropmap.stages.predict_options import PredictOptions

    outcomes = predict_cubes(*check_predict_inputs(model, cubes, options=options or PredictOptions()), out, **keywords)
    for outcome in outcomes:
        if not outcome.ok:
            raise outcome.error
    return [o.value for o in outcomes]


def train_tiny_model(path: Path, *, epochs: int = 25) -> Path:
    """A small CropNet trained for seconds on the real Victoria train split, saved as a checkpoint."""
    train = read_victoria("train")
    comp = median_composite(train["reflectance"], VIC_SEASON, VIC_YEAR)
    x = compute_features(comp, "2d").values  # (sample, band, time)
    y = torch.from_numpy(train["label"].values.astype(np.int64))
    norm = fit_normalisation(x)
    config = {"channels": (8, 16, 16, 16), "dropout": 0.0, "first_stride": 2}
    torch.manual_seed(0)
    model = build_model("cropnet", n_bands=10, n_classes=8, **config)
    from cropmap.ml.normalisation import apply_normalisation

    z = torch.from_numpy(apply_normalisation(x, norm))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(z), y).backward()
        opt.step()
    model.eval()
    return save_checkpoint(
        path, model=model, model_name="cropnet", model_config={"n_bands": 10, "n_classes": 8, **config},
        feature_kind="2d", bands=[str(b) for b in comp.band.values], season=VIC_SEASON, n_bins=VIC_SEASON.n_bins,
        normalisation=norm, class_names=[str(c) for c in train["class_name"].values],
        class_colours=[str(c) for c in train["class_colour"].values], config={"test": "tiny"}, scores={},
    )


def raster_obs(series: np.ndarray, times: np.ndarray, bands, *, ny: int, nx: int) -> xr.DataArray:
    """``(sample, time, band)`` pixel series -> ``(time, band, y, x)`` observations, row-major."""
    values = series.reshape(ny, nx, *series.shape[1:]).transpose(2, 3, 0, 1)
    return xr.DataArray(values, dims=("time", "band", "y", "x"), coords={"time": times, "band": list(bands)})


def write_tile_cube(path: Path, obs: xr.DataArray, *, tile_id: str, row: int, col: int,
                    season: Season = VIC_SEASON, encoding: str = "float32") -> Path:
    """Composite observations with cropmap's one compositing function and store them as a tile cube,
    reflectance as ``encoding`` ("int16": :data:`cropmap.stages.cube_encoding.INT16_ENCODING`, as `cropmap cube` stores it)."""
    from cropmap.stages.cube_encoding import INT16_ENCODING

    ny, nx = obs.sizes["y"], obs.sizes["x"]
    transform = Affine(10.0, 0.0, ORIGIN[0] + col * nx * 10.0, 0.0, -10.0, ORIGIN[1] - row * ny * 10.0)
    xs = transform.c + (np.arange(nx) + 0.5) * 10.0
    ys = transform.f - (np.arange(ny) + 0.5) * 10.0
    comp = median_composite(obs.assign_coords(y=ys, x=xs), season, VIC_YEAR)
    # the layout of cropmap.stages.cube.build_tile_cube (read back with cropmap.stages.cube.open_tile_cube)
    ds = comp.to_dataset(name="reflectance").reset_coords("filled_fraction")
    ds = ds.rio.write_crs(EPSG).rio.write_transform(transform)
    ds.attrs = {**season.to_attrs(), "season_year": VIC_YEAR, "tile_id": tile_id, "tile_crs": f"EPSG:{EPSG}",
                "tile_transform": list(transform)[:6], "source_items": [f"victoria-{tile_id}"], "status": "complete"}
    ds.to_zarr(path, mode="w", consolidated=False,
               encoding={"reflectance": INT16_ENCODING} if encoding == "int16" else None)
    return path


def victoria_tiles(folder: Path, *, rows: int, cols: int, ny: int, nx: int, split: str = "test",
                   blank: dict[int, slice] | None = None, encoding: str = "float32") -> tuple[list[Path], xr.Dataset]:
    """The real Victoria series cut into ``rows x cols`` tiles of ``ny x nx`` pixels (sample order is
    tile-major, then row-major inside a tile). ``blank`` maps a sample to the time steps set to NaN."""
    samples = read_victoria("test") if split == "test" else xr.concat(
        [read_victoria("train"), read_victoria("test")], dim="sample")
    refl = samples["reflectance"].values.copy()
    for s, steps in (blank or {}).items():
        refl[s, steps] = np.nan
    n = ny * nx
    paths = []
    for k in range(rows * cols):
        obs = raster_obs(refl[k * n:(k + 1) * n], samples.time.values, samples.band.values, ny=ny, nx=nx)
        paths.append(write_tile_cube(folder / f"T{k // cols}_{k % cols}.zarr", obs, tile_id=f"T{k // cols}_{k % cols}",
                                     row=k // cols, col=k % cols, encoding=encoding))
    return paths, samples.assign(reflectance=(samples["reflectance"].dims, refl))


def slim_copy(checkpoint: str | Path, path: Path) -> str:
    """``checkpoint`` with its network cut to 4 channels a block (seeded, untrained weights; OOD statistics
    fitted on the slim net's own features of seeded noise), everything else (bands, season, classes,
    normalisation, temperature, card) kept: a map run takes it like the original, and a 128 px tile
    predicts in ~1 s instead of ~10-20 s on a loaded CPU. For tests of how a run handles its model, not of
    what the model says."""
    import numpy as np
    import torch

    from cropmap.ml.checkpoint import load_checkpoint, save_checkpoint
    from cropmap.ml.models import build_model, forward_pass
    from cropmap.ml.ood import fit_ood

    ckpt = load_checkpoint(checkpoint)
    options = {**ckpt.model_config, "channels": [4] * 4}
    torch.manual_seed(0)
    net = build_model(ckpt.model_name, **options).eval()
    noise = np.random.default_rng(0).normal(size=(64, len(ckpt.bands), ckpt.n_bins)).astype(np.float32)
    ood = fit_ood(forward_pass(net, noise)[1], np.arange(64) % len(ckpt.class_names))
    config = {**ckpt.config, "model_options": {**ckpt.config.get("model_options", {}), "channels": [4] * 4}}
    save_checkpoint(path, model=net, model_name=ckpt.model_name, model_config=options, feature_kind=ckpt.feature_kind,
                    bands=list(ckpt.bands), season=ckpt.season, n_bins=ckpt.n_bins, normalisation=ckpt.normalisation,
                    class_names=list(ckpt.class_names), class_colours=ckpt.class_colours and list(ckpt.class_colours),
                    config=config, scores=ckpt.scores, year=ckpt.year, temperature=ckpt.temperature, ood=ood,
                    card=ckpt.card)
    return str(path)
