"""Where cropmap finds the real public data sets it reads (demo, examples, experiments).

The folder comes from ``$CROPMAP_DATA_DIR``; without it, from ``../shared/data`` beside the checkout.
A missing file raises :class:`~cropmap.errors.DataNotFoundError` naming its public source. With
``download=True`` (or ``$CROPMAP_DOWNLOAD=1``) the file is fetched from that source into the cache
(``$CROPMAP_CACHE_DIR``, default ``~/.cache/cropmap``) instead. The Natural Earth outlines that country
configs use need neither: the pinned files ship in the pyogrio wheel, a dependency, and are read from there.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import http.client
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cropmap.errors import DataNotFoundError
from cropmap.io.outputs import atomic_path
from cropmap.settings import get_settings

__all__ = ["PublicSource", "SOURCES", "data_dir", "data_file"]


@dataclass(frozen=True)
class PublicSource:
    """A file in a public GitHub repository, pinned to a commit and to its SHA-256 (a download that
    differs is refused: a moved branch or a tampered mirror cannot slip in other data)."""

    repo: str
    commit: str
    path: str
    sha256: str
    #: the same file inside an installed package, as ``"package:relative/path"`` (used when its checksum
    #: is the pinned one): the Natural Earth outlines ship in pyogrio's wheel, a dependency, so a flow
    #: run, a worker or the image has them with no data folder and no download
    packaged: str | None = None

    @property
    def url(self) -> str:
        base = get_settings().data_url_base
        return f"{base.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


_WC = "WorldCereal/worldcereal-classification"
_WC_RES = "tests/worldcerealtests/testresources"
_GFMAP = "Open-EO/openeo-gfmap"
_VIC = ("charlotte-pel/igarss2019-dl4sits", "836d7fb")
_NE = ("geopandas/pyogrio", "main")  # no tagged commit holds the fixture; its checksum pins it
_NE_PATH = "pyogrio/tests/fixtures/naturalearth_lowres/naturalearth_lowres"
#: Relative path under the data folder -> public source (see the data README).
SOURCES: dict[str, PublicSource] = {
    "victoria_s2/train_dataset.csv": PublicSource(*_VIC, "train_dataset.csv",
                                                  "294fceb4dea2123b3804073aefa3b9fb7016f27face607958f3523e8859e4403"),
    "victoria_s2/test_dataset.csv": PublicSource(*_VIC, "test_dataset.csv",
                                                 "5d8640cdbbc044e194e450ee298dec00aee27aec57c1eb39b3f9f455e69d3f34"),
    "victoria_s2/class_map.txt": PublicSource(*_VIC, "map/class_map.txt",
                                              "78179aa4c1211dffd29aa56ed5f8f08da70e16e841acd8545d36fbdeadd22412"),
    "worldcereal/test_public_extractions.parquet": PublicSource(
        _WC, "6c57442", f"{_WC_RES}/test_public_extractions.parquet",
        "feb01e318802e3bb09953565c1573c2b38623dc7002c475cb572723f3801d3c6"),
    "worldcereal/private_extractions_dummy_BEL.parquet": PublicSource(
        _WC, "6c57442", f"{_WC_RES}/worldcereal_private_extractions_dummy.parquet",
        "611f490a215fad3df8be3f15367a9d9a8d928c6f5a5e7fc4b800ef8de6d4f354"),
    "worldcereal/worldcereal_preprocessed_inputs.nc": PublicSource(
        _WC, "6c57442", f"{_WC_RES}/worldcereal_preprocessed_inputs.nc",
        "7b9361a2697fe77e79266eb7436eea2e898b101c52d40b85ef9c2b8cde51e909"),
    "openeo_gfmap/cdse_sentinel2_l2a.nc": PublicSource(
        _GFMAP, "d6c21cc", "tests/tests_unit/resources/cdse_sentinel2_l2a.nc",
        "9e8798bdeba1b40ffd3b24ac2babc4bca9bfcf26121e32be5d4353a460f1dc8d"),
    # a shapefile is read with its sidecars: data_file fetches them with the .shp
    **{f"naturalearth_lowres/naturalearth_lowres.{ext}": PublicSource(
        *_NE, f"{_NE_PATH}.{ext}", digest, packaged=f"pyogrio:{_NE_PATH.removeprefix('pyogrio/')}.{ext}")
       for ext, digest in {"shp": "08e341606e8391e458c3f08deb312de664b56bfae376064c5aa0aee6681a5f55",
                           "shx": "8b0be2ad97dd484aee5c2ebc98697d5372e832b8ae58a35a661aeef6b985668d",
                           "dbf": "d2ae1c99adcf8e4586a5b12c639672035fa2f3f469e7255947de00401c3ed7e1",
                           "prj": "98aaf3d1c0ecadf1a424a4536de261c3daf4e373697cb86c40c43b989daf52eb",
                           "cpg": "09fc313075748ce8ead962229ed89c919d5a9ff71974ee725a0b48bb87d975a2"}.items()},
}


def _sidecars(relpath: str) -> list[str]:
    """The pinned files a shapefile is read with: those of SOURCES beside it with its stem."""
    if not relpath.endswith(".shp"):
        return []
    stem = relpath[:-len(".shp")]
    return [k for k in SOURCES if k != relpath and k.rsplit(".", 1)[0] == stem]


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

    Looks in :func:`data_dir`, then in the download cache, then in the installed package that ships the
    pinned file (:attr:`PublicSource.packaged`, checksum checked). If absent and downloading is allowed
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
    packaged = _packaged_copy(relpath)
    if packaged is not None:
        return packaged
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
    for sidecar in _sidecars(relpath):
        if not (local.parent / Path(sidecar).name).exists() and not (_cache_dir() / sidecar).exists():
            _download(SOURCES[sidecar], _cache_dir() / sidecar)
    return _download(source, cached)


@functools.cache
def _packaged_copy(relpath: str) -> Path | None:
    """The installed package's copy of ``relpath`` when it and all its sidecars are the pinned files."""
    wanted = [relpath, *_sidecars(relpath)]
    found = []
    for rel in wanted:
        source = SOURCES.get(rel)
        if source is None or source.packaged is None:
            return None
        package, inner = source.packaged.split(":", 1)
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / inner
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != source.sha256:
            return None
        found.append(path)
    return found[0]


def _download(source: PublicSource, target: Path) -> Path:
    print(f"cropmap: fetching {source.url} (pinned, sha256 {source.sha256[:12]}...) into {target}",
          file=sys.stderr, flush=True)
    with atomic_path(target) as tmp:  # renamed onto the target only when the body arrived whole and right
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(source.url, timeout=60) as response, open(tmp, "wb") as out:
                expected = response.headers.get("Content-Length")
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                written = out.tell()
            # read(n) returns short on a dropped connection instead of raising: check the length
            if expected is not None and written != int(expected):
                raise http.client.IncompleteRead(b"", int(expected) - written)
        except (OSError, http.client.HTTPException) as err:  # a truncated body is an HTTPException
            raise DataNotFoundError(
                f"could not fetch {source.url} ({source.repo} at {source.commit}, {source.path}): {err}"
            ) from err
        if digest.hexdigest() != source.sha256:
            raise DataNotFoundError(f"{source.url} is not the pinned file ({source.repo} at {source.commit}, "
                                    f"{source.path}): sha256 {digest.hexdigest()}, expected {source.sha256}; "
                                    "nothing was kept")
    return target
