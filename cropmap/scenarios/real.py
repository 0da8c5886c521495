"""The REAL scenario: real Earth Search Sentinel-2 L2A scenes behind a STAC API, mapped with a 4-band model.

Data, like the DEMO: ``configs/countries/REAL.yaml`` names ``scenario: real`` with its options. The
scenes are the ten real Earth Search items of the data folder's ``s2_l2a_stac/`` (tiles 33TWL and
33TWM, Slovenia / Croatia, five dates 10-20 Aug 2023; local 120 m JPEG2000 assets ``blue``, ``green``,
``red``, ``nir`` and ``scl``, every other asset remote and unreachable here), served by a STAC API
(``catalog.url`` of the config; ``rustac serve`` on 127.0.0.1 in the test and in the README) whose
items point at those files with ``file://`` hrefs.

- :func:`prepare`: the config's catalog may read files under the data folder's ``options.assets``
  (``catalog.asset_roots``: an API's items may not make cropmap read local files otherwise), no
  environment variable needed; the scenario supplies no reference labels (nothing to train on or score).
- :func:`train_real_checkpoint`: the scenario's checkpoint, trained on REAL labelled series that are not from
  these scenes: the Victoria (Australia) train split (:func:`cropmap.samples.victoria.read_victoria`)
  restricted to the config's ``bands`` and moved ``options.training.shift_days`` (six months, the
  paper's offset: the southern late summer on the northern one), composited onto the config's season
  (:func:`cropmap.samples.seasonal.season_sample_set`), a slim CropNet (:data:`REAL_TRAINING`). Its
  classes are Victoria's; nothing scores the map (there is no reference for these scenes).

    cropmap scenario-model REAL --out real.pt        # the checkpoint; then map-country model=real.pt
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from cropmap.core.bands import S2_BANDS
from cropmap.errors import ConfigError
from cropmap.io.config import CountryConfig, load_country
from cropmap.io.data import data_file
from cropmap.jobs.country_run import Scenario
from cropmap.jobs.training import CheckpointResult, TrainingSettings, train_checkpoint
from cropmap.samples.seasonal import season_sample_set
from cropmap.samples.victoria import read_victoria

__all__ = ["COUNTRY", "REAL_TRAINING", "prepare", "train_real_checkpoint", "training_options"]

#: The country config of the REAL scenario (``configs/countries/REAL.yaml``).
COUNTRY = "REAL"

#: CPU-sized settings (as the DEMO's): a slim CropNet (~0.1M parameters), 30 epochs, all three phenology
#: augmentations, 20 % held out, the best-validation epoch kept.
REAL_TRAINING = TrainingSettings(
    epochs=30, lr=1e-3, schedule="constant", batch_size=64, augment="all", val_fraction=0.2, epoch_choice="best",
    model_options={"channels": [32, 32, 64, 64], "first_stride": 2, "pool_after": [], "dropout": 0.2})

_TRAINING_KEYS = {"split", "shift_days", "season_year", "max_filled_fraction"}


def prepare(config: CountryConfig, options: dict | None = None) -> tuple[CountryConfig, Scenario | None]:
    """The REAL config with ``catalog.asset_roots`` extended by the data folder's ``options["assets"]``
    (default ``s2_l2a_stac``; a missing folder fails naming it); no :class:`Scenario` (no labels)."""
    options = dict(options or {})
    unknown = set(options) - {"assets", "training"}
    if unknown:
        raise ConfigError(f"{config.code}: unknown REAL scenario option(s) {sorted(unknown)}; known: assets, training")
    training_options(config)  # malformed training options fail here, not when a model is trained
    folder = data_file(str(options.get("assets", "s2_l2a_stac")))
    catalog = config.catalog.model_copy(update={"asset_roots": (*config.catalog.asset_roots, folder.resolve())})
    return config.model_copy(update={"catalog": catalog}), None


def training_options(config: CountryConfig) -> dict:
    """The scenario's ``training`` options over their defaults: the Victoria ``split``, ``shift_days``
    (-186: its 5-day dates fall on 10, 15, 20 and 25 Aug), the ``season_year`` the moved dates fill,
    ``max_filled_fraction`` (0.8, predict's)."""
    given = dict(((config.scenario.options if config.scenario else {}) or {}).get("training") or {})
    unknown = set(given) - _TRAINING_KEYS
    if unknown:
        raise ConfigError(f"{config.code}: unknown REAL training option(s) {sorted(unknown)}; known: "
                          f"{', '.join(sorted(_TRAINING_KEYS))}")
    return {"split": "train", "shift_days": -186, "season_year": config.year, "max_filled_fraction": 0.8, **given}


def train_real_checkpoint(out: str | Path, *, config: CountryConfig | None = None, epochs: int | None = None,
                settings: TrainingSettings = REAL_TRAINING, threads: int | None = 1) -> CheckpointResult:
    """The REAL checkpoint at ``out`` (kept when already there): Victoria series in the config's bands and
    season (see the module docstring); ``config`` default: the REAL config; ``epochs`` overrides the settings'."""
    config = config or load_country(COUNTRY)
    if epochs is not None:
        settings = TrainingSettings(**{**settings.model_dump(), "epochs": int(epochs)})
    opts = training_options(config)
    samples = season_sample_set(read_victoria(opts["split"]), config.season, int(opts["season_year"]),
                                bands=config.bands or S2_BANDS, shift_days=int(opts["shift_days"]),
                                max_filled_fraction=float(opts["max_filled_fraction"]))
    samples.attrs.update(country="AUS-VIC", source=f"victoria_s2/{opts['split']}_dataset.csv")
    with tempfile.TemporaryDirectory(prefix="cropmap-real-") as tmp:
        path = Path(tmp) / "samples.nc"
        samples.to_netcdf(path, engine="h5netcdf")
        return train_checkpoint(path, str(out), settings=settings, threads=threads)
