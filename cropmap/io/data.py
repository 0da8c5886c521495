"""Where cropmap finds the real public data sets it reads (demo, examples, experiments).

The folder comes from ``$CROPMAP_DATA_DIR``; without it, from ``../shared/data`` beside the checkout.
A missing file raises :class:`~cropmap.errors.DataNotFoundError` naming its public source. With
``download=True`` (or ``$CROPMAP_DOWNLOAD=1``) the file is fetched from that source into the cache
(``$CROPMAP_CACHE_DIR``, default ``~/.cache/cropmap``) instead.
"""

from __future__ import annotations

import http.client
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cropmap.errors import DataNotFoundError
from cropmap.io.storage import atomic_path
from cropmap.settings import get_settings

__all__ = ["PublicSource", "SOURCES", "data_dir", "data_file"]


@dataclass(frozen=True)
class PublicSource:
    """A file in a public GitHub repository, pinned to a commit."""

    repo: str
    commit: str
    path: str

    @property
    def url(self) -> str:
        base = get_settings().data_url_base
        return f"{base.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


_WC = "WorldCereal/worldcereal-classification"
_WC_RES = "tests/worldcerealtests/testresources"
_GFMAP = "Open-EO/openeo-gfmap"
#: Relative path under the data folder -> public source (see the data README).
SOURCES: dict[str, PublicSource] = {
    "victoria_s2/train_dataset.csv": PublicSource("charlotte-pel/igarss2019-dl4sits", "836d7fb", "train_dataset.csv"),
    "victoria_s2/test_dataset.csv": PublicSource("charlotte-pel/igarss2019-dl4sits", "836d7fb", "test_dataset.csv"),
    "victoria_s2/class_map.txt": PublicSource("charlotte-pel/igarss2019-dl4sits", "836d7fb", "map/class_map.txt"),
    "worldcereal/test_public_extractions.parquet": PublicSource(_WC, "6c57442", f"{_WC_RES}/test_public_extractions.parquet"),
    "worldcereal/private_extractions_dummy_BEL.parquet": PublicSource(
        _WC, "6c57442", f"{_WC_RES}/worldcereal_private_extractions_dummy.parquet"),
    "worldcereal/worldcereal_preprocessed_inputs.nc": PublicSource(_WC, "6c57442", f"{_WC_RES}/worldcereal_preprocessed_inputs.nc"),
    "openeo_gfmap/cdse_sentinel2_l2a.nc": PublicSource(_GFMAP, "d6c21cc", "tests/tests_unit/resources/cdse_sentinel2_l2a.nc"),
    "naturalearth_lowres/naturalearth_lowres.shp": PublicSource(
        "geopandas/pyogrio", "main", "pyogrio/tests/fixtures/naturalearth_lowres/naturalearth_lowres.shp"),
}


def data_dir() -> Path:
    """The data folder: ``$CROPMAP_DATA_DIR``, else ``../shared/data`` beside the checkout."""
    configured = get_settings().data_dir
    if configured is not None:
        return configured
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def _cache_dir() -> Path:
    return get_settings().cache_root


def data_file(relpath: str, *, download: bool | None = None) -> Path:
    """Path of a data file, e.g. ``data_file("victoria_s2/train_dataset.csv")``.

    Looks in :func:`data_dir`, then in the download cache. If absent and downloading is allowed
    (``download=True`` or ``$CROPMAP_DOWNLOAD=1``), fetches it from its public source; otherwise
    raises :class:`DataNotFoundError` naming that source.
    """
    local = data_dir() / relpath
    if local.exists():
        return local
    cached = _cache_dir() / relpath
    if cached.exists():
        return cached
    source = SOURCES.get(relpath)
    if download is None:
        download = get_settings().download_enabled
    if source is None:
        raise DataNotFoundError(f"{local} not found (set CROPMAP_DATA_DIR to the folder holding {relpath})")
    if not download:
        raise DataNotFoundError(
            f"{relpath} not found in {data_dir()}. It is public: repository {source.repo} at commit "
            f"{source.commit}, path {source.path}. Set CROPMAP_DATA_DIR to a folder that holds it, or "
            "set CROPMAP_DOWNLOAD=1 to fetch it."
        )
    return _download(source, cached)


def _download(source: PublicSource, target: Path) -> Path:
    with atomic_path(target) as tmp:  # renamed onto the target only when the body arrived whole
        try:
            with urllib.request.urlopen(source.url, timeout=60) as response, open(tmp, "wb") as out:
                expected = response.headers.get("Content-Length")
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                written = out.tell()
            # read(n) returns short on a dropped connection instead of raising: check the length
            if expected is not None and written != int(expected):
                raise http.client.IncompleteRead(b"", int(expected) - written)
        except (OSError, http.client.HTTPException) as err:  # a truncated body is an HTTPException
            raise DataNotFoundError(
                f"could not fetch {source.url} ({source.repo} at {source.commit}, {source.path}): {err}"
            ) from err
    return target
