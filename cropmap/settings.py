"""Every ``CROPMAP_*`` environment variable, in one typed place (pydantic-settings).

The environment is read when :func:`get_settings` is called, not at import, so a process (a flow run,
a Dask worker, a test) sees the variables as they are then. Empty values count as unset.

| variable | what |
|---|---|
| ``CROPMAP_CONFIGS_DIR`` | folder of country configs (default the ``configs/countries`` shipped in the package) |
| ``CROPMAP_DATA_DIR`` | folder of the real public data sets (default ``../shared/data`` beside the checkout) |
| ``CROPMAP_DOWNLOAD`` | ``1``: fetch a missing data file from its pinned public source |
| ``CROPMAP_DATA_URL_BASE`` | base URL of those sources (default ``https://raw.githubusercontent.com``) |
| ``CROPMAP_CACHE_DIR`` | download cache (default ``~/.cache/cropmap``) |
| ``CROPMAP_DEMO_DIR`` | where the DEMO scenario's catalog is built (default ``~/.cache/cropmap/demo``) |
| ``CROPMAP_OUTPUT_URL`` | output root, a folder or an fsspec URL (``s3://bucket/runs``) |
| ``CROPMAP_OUTPUT_DIR`` | output root, a local folder (the older variable; the URL wins) |
| ``CROPMAP_DASK_ADDRESS`` | an existing Dask scheduler (``tcp://host:8786``) instead of a local cluster |
| ``CROPMAP_GPU_WORKERS`` | ``1``: the cluster has workers started with ``--resources GPU=1`` |
| ``CROPMAP_STAC_REQUESTS_PER_SECOND`` | requests a second a process sends a STAC API (default 2: polite to Earth Search) |
| ``CROPMAP_TILES_IN_FLIGHT`` | tiles a worker thread holds at once in a country run (default 2) |
| ``CROPMAP_MAX_AREA_TILES`` | tiles a user's area (``cropmap cube --bbox/--geojson``) may plan before it is refused (default 1000; ``--max-tiles`` overrides) |
| ``CROPMAP_ASSET_HREF_SCHEMES`` | URL schemes an item's band assets may use (default ``https,s3``); besides them, only the catalog API's own host and, for a static catalog, files under its folder |
| ``CROPMAP_MAX_PLAN_TILES`` | tiles any plan (an outline, an area, a ``--tile-limit``) may hold, estimated from its area before a tile is made; above it the plan is refused (default 1,000,000) |
| ``CROPMAP_MAX_TILES`` | tiles a country run may plan before it is refused before any tile (default: no limit; ``max_tiles`` overrides) |
| ``CROPMAP_MAX_DOLLARS`` | the estimated dollars (``cropmap plan``) a country run may cost before it is refused (default: no limit) |
| ``CROPMAP_COST_FIGURES`` | a JSON file of cost figures (``bench/*.py --record`` writes one) that ``cropmap plan`` uses instead of the shipped ``cropmap/jobs/cost_figures.json`` |
| ``CROPMAP_CATALOG_TIMEOUT_S`` | seconds a run's first check waits for the STAC catalog to answer before it fails (default 5) |
| ``CROPMAP_SEARCH_TIMEOUT_S`` | seconds a flow's search-block task may run: checked before each attempt and between pages, each request waits no longer; past it the task fails naming the block and is retried (default 900) |
| ``CROPMAP_CUBE_TIMEOUT_S`` | seconds a flow's cube-tile task may run: checked between its search's pages and between its reads; past it the task fails naming the tile and is retried (default 10800). Both are read where the task runs (a Dask worker: ``deploy/`` gives every pod the same variables) |
| ``CROPMAP_PREFECT_REUSE`` | ``1``: Dask workers build Prefect's settings and API TLS context once per process instead of once per task run (``flows/_prefect_engine.py``, which patches Prefect internals; default ``0``, Prefect as it is) |
| ``CROPMAP_CDSE_S3_ENDPOINT`` | the Copernicus Data Space S3 endpoint (default ``https://eodata.dataspace.copernicus.eu``) |
| ``CROPMAP_CDSE_ACCESS_KEY_ID`` | CDSE S3 access key (else ``AWS_ACCESS_KEY_ID``; see docs/catalogs.md) |
| ``CROPMAP_CDSE_SECRET_ACCESS_KEY`` | CDSE S3 secret key (else ``AWS_SECRET_ACCESS_KEY``) |
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """The ``CROPMAP_*`` variables (see the module docstring). Yes/no values stay strings here: their
    users (:func:`cropmap.jobs.cluster.gpu_workers_enabled`, :func:`cropmap.io.data.data_file`) say which
    variable holds a bad value."""

    model_config = SettingsConfigDict(env_prefix="CROPMAP_", extra="ignore", frozen=True)

    configs_dir: Path | None = None
    data_dir: Path | None = None
    cost_figures: Path | None = None
    download: str = ""
    data_url_base: str = "https://raw.githubusercontent.com"
    cache_dir: Path | None = None
    demo_dir: Path | None = None
    output_url: str | None = None
    output_dir: str | None = None
    dask_address: str | None = None
    gpu_workers: str = ""
    tiles_in_flight: int = Field(2, ge=1, le=64)
    max_area_tiles: int = Field(1000, ge=1)  # tiles a user's --bbox/--geojson area may plan (tiles_for_area)
    stac_requests_per_second: float = Field(2.0, gt=0, le=1000)
    asset_href_schemes: str = "https,s3"
    # any plan's cap (cropmap.io.outlines.check_plan_size): every Natural Earth country fits at 1024 px
    # (Russia ~171,000 tiles) and at 512 px; a tile_size of 16 over a country (~10^8 tiles) does not
    max_plan_tiles: int = Field(1_000_000, ge=1)
    max_tiles: int | None = Field(None, ge=1)  # a country run's cap (cropmap.jobs.plan.check_limits)
    max_dollars: float | None = Field(None, gt=0)
    catalog_timeout_s: float = Field(5.0, gt=0)  # cropmap.jobs.plan.probe_catalog
    # cropmap.flows.tasks: enforced inside the work (cropmap.io.time_limits.time_limit), not by Prefect's
    # timeout_seconds, which cannot interrupt a task on a Dask worker thread
    search_timeout_s: float = Field(900.0, gt=0)
    cube_timeout_s: float = Field(10800.0, gt=0)  # a 1024 px tile of a cloudy season reads ~50 items x 11 bands
    # opt-in (cropmap.flows._prefect_engine): it patches Prefect internals for ~0.18 s per Prefect task pair
    prefect_reuse: str = "0"
    cdse_s3_endpoint: str = "https://eodata.dataspace.copernicus.eu"
    cdse_access_key_id: str | None = None
    cdse_secret_access_key: str | None = None

    @field_validator("configs_dir", "data_dir", "cost_figures", "cache_dir", "demo_dir", "output_url", "output_dir",
                     "dask_address",
                     "cdse_access_key_id", "cdse_secret_access_key", "max_tiles", "max_dollars", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("configs_dir", "cache_dir", "demo_dir", "data_dir", "cost_figures", mode="after")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(value).expanduser()

    @property
    def allowed_href_schemes(self) -> frozenset[str]:
        """:attr:`asset_href_schemes` as lower-case scheme names."""
        return frozenset(s.strip().lower() for s in self.asset_href_schemes.split(",") if s.strip())

    @property
    def cache_root(self) -> Path:
        """The download cache: ``$CROPMAP_CACHE_DIR``, else ``~/.cache/cropmap``."""
        return self.cache_dir or Path.home() / ".cache" / "cropmap"

    @property
    def demo_root(self) -> Path:
        """Where the DEMO is built: ``$CROPMAP_DEMO_DIR``, else ``~/.cache/cropmap/demo``."""
        return self.demo_dir or Path.home() / ".cache" / "cropmap" / "demo"

    @property
    def download_enabled(self) -> bool:
        return self.download.strip().lower() not in ("", "0", "false", "no", "off")

    @property
    def prefect_reuse_enabled(self) -> bool:
        return self.prefect_reuse.strip().lower() in ("1", "true", "yes", "on")


def get_settings() -> Settings:
    """The settings from the environment as it is now. Parsed once per distinct set of ``CROPMAP_*``
    values: building them costs ~4 ms, and a tile's reader asks once per asset (hundreds per tile)."""
    return _settings_for(tuple(sorted((k, v) for k, v in os.environ.items() if k.upper().startswith("CROPMAP_"))))


@lru_cache(maxsize=32)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    return Settings()
