"""Sentinel-2 L2A catalogs as profiles: asset keys, the one scale/offset rule, signing and credentials.

The common catalogs serve the same ESA products differently, exactly where a silent error costs a map:

| profile | catalog, collection | asset keys | scale / offset in the item | hrefs |
|---|---|---|---|---|
| ``earth-search`` | Earth Search v1 ``sentinel-2-l2a`` | ``blue`` ... ``swir22``, ``scl`` | ``raster:bands`` (-0.1 even where ``earthsearch:boa_offset_applied`` says the DNs no longer hold it) | public https |
| ``earth-search-c1`` | Earth Search v1 ``sentinel-2-c1-l2a`` (Collection 1) | as above | ``raster:bands``, no flag | public https |
| ``planetary-computer`` | Planetary Computer ``sentinel-2-l2a`` | ``B02`` ... ``B12``, ``SCL`` | none | Azure blobs, need a SAS token |
| ``cdse`` | Copernicus Data Space ``sentinel-2-l2a`` | ``B02_10m``, ``B05_20m``, ``SCL_20m`` ... | ``raster:scale`` / ``raster:offset`` (STAC 1.1) | ``s3://eodata``, needs S3 keys |
| ``generic`` | anything else (static catalogs, the DEMO) | any of the above, or ``eo:bands`` names | whatever ``raster:bands`` says, else none | as given |

A profile is chosen by a country config (``catalog.profile``), else by the catalog URL
(:func:`profile_for_url`), else per item from the URLs in it (:func:`item_profile`). Reflectance is
``DN * scale + offset`` with ``(scale, offset)`` from :func:`reflectance_scale_offset`, the one rule,
which follows ESA's definition ``L2A_BOA = (DN + BOA_ADD_OFFSET) / QUANTIFICATION_VALUE``
(QUANTIFICATION_VALUE 10000; BOA_ADD_OFFSET -1000 DN from processing baseline 04.00, 25 January 2022,
none before). :func:`reflectance_problem` is the plausibility check the cube stage applies at load.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlparse

import numpy as np
import pystac
import rasterio

from cropmap.core.bands import SCL, canonical_band
from cropmap.errors import CatalogError, ConfigError, ForbiddenHrefError, ReflectanceRangeError
from cropmap.settings import get_settings

__all__ = ["CatalogProfile", "PROFILES", "GENERIC", "REFLECTANCE_RANGE", "get_profile", "profile_for_url",
           "item_profile", "processing_baseline", "boa_offset_applied", "raster_scale_offset",
           "reflectance_scale_offset", "asset_band", "asset_scale_offset", "asset_href", "reflectance_problem", "implausible_band",
           "rio_settings", "rasterio_env", "ROOT_PROPERTY", "check_asset_href"]

#: ESA's QUANTIFICATION_VALUE of L2A products: reflectance = DN / 10000 (plus the BOA offset).
QUANTIFICATION_VALUE = 10_000
#: ESA's BOA_ADD_OFFSET (DN) of L2A products from processing baseline 04.00 on; 0 before.
BOA_ADD_OFFSET_DN = -1000
OFFSET_BASELINE = (4, 0)
#: Plausible median surface reflectance of a band (raw DNs, a missing or doubled scale fall outside).
REFLECTANCE_RANGE = (-0.05, 1.2)
#: Set by :func:`cropmap.io.stac.search_items` on every item: the profile of the catalog it came from.
PROFILE_PROPERTY = "cropmap:catalog"

_EARTH_SEARCH_KEYS = {"B01": ("coastal",), "B02": ("blue",), "B03": ("green",), "B04": ("red",),
                      "B05": ("rededge1",), "B06": ("rededge2",), "B07": ("rededge3",), "B08": ("nir",),
                      "B8A": ("nir08",), "B09": ("nir09",), "B11": ("swir16",), "B12": ("swir22",), "SCL": ("scl",)}
_L2A_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
# CDSE serves each band at every resolution of the SAFE product: the native one first (10 m for B02,
# B03, B04, B08; 20 m for the red edge, B8A, SWIR and SCL; 60 m for B01, B09), then the finest other
_CDSE_NATIVE = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
                "B8A": 20, "B09": 60, "B11": 20, "B12": 20, "SCL": 20}
_CDSE_KEYS = {b: tuple(f"{b}_{r}m" for r in sorted((10, 20, 60), key=lambda r: (r != native, r)))
              for b, native in _CDSE_NATIVE.items()}


@dataclass(frozen=True)
class CatalogProfile:
    """How one catalog serves Sentinel-2 L2A (see the module docstring).

    name: what a config's ``catalog.profile`` says. url: the public STAC API. collections: its L2A
    collection ids, the default first. hosts: API hosts, asset hosts and buckets that identify the
    catalog in a URL. asset_keys: canonical band -> asset keys, preferred first (other keys are
    matched by name, :func:`cropmap.io.stac.band_assets`). esa_dn: the assets hold ESA's DNs, so an
    asset without scale/offset metadata gets ESA's (scale 1e-4, the BOA offset by baseline); a
    ``generic`` catalog gets (1, 0) and the range check decides. signing / storage: what reading an
    href needs (a Planetary Computer SAS token; the CDSE S3 endpoint and keys).
    """

    name: str
    title: str
    url: str | None
    collections: tuple[str, ...]
    hosts: tuple[str, ...]
    asset_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    esa_dn: bool = True
    signing: Literal["none", "planetary-computer"] = "none"
    storage: Literal["public", "cdse-s3"] = "public"

    @property
    def collection(self) -> str | None:
        return self.collections[0] if self.collections else None

    def sign(self, href: str) -> str:
        """``href`` ready to open: a Planetary Computer blob gets a SAS token (``planetary-computer``)."""
        if self.signing != "planetary-computer" or not urlparse(href).netloc.endswith(".blob.core.windows.net"):
            return href
        try:
            import planetary_computer
        except ImportError as err:
            raise CatalogError(
                f"{href} is a Planetary Computer blob that needs a SAS token: install the optional extra "
                "`pip install 'cropmap[pc]'` (the planetary-computer package), see docs/catalogs.md") from err
        return planetary_computer.sign_url(href)

    def gdal_env(self) -> dict[str, str]:
        """GDAL options to read this catalog's assets (public buckets unsigned; CDSE with its S3 keys)."""
        if self.storage == "public":
            return {"AWS_NO_SIGN_REQUEST": "YES"}
        settings = get_settings()
        key = settings.cdse_access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
        secret = settings.cdse_secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise CatalogError("Copernicus Data Space assets (s3://eodata/...) need S3 keys: set "
                               "CROPMAP_CDSE_ACCESS_KEY_ID and CROPMAP_CDSE_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID "
                               "and AWS_SECRET_ACCESS_KEY); create them at https://eodata-s3keysmanager.dataspace"
                               ".copernicus.eu, see docs/catalogs.md")
        endpoint = urlparse(settings.cdse_s3_endpoint if "://" in settings.cdse_s3_endpoint
                            else f"https://{settings.cdse_s3_endpoint}")
        return {"AWS_S3_ENDPOINT": endpoint.netloc, "AWS_HTTPS": "NO" if endpoint.scheme == "http" else "YES",
                "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_NO_SIGN_REQUEST": "NO", "AWS_ACCESS_KEY_ID": key,
                "AWS_SECRET_ACCESS_KEY": secret}


GENERIC = CatalogProfile("generic", "any STAC catalog (raster:bands or raw values)", None, (), (), esa_dn=False)
PROFILES: dict[str, CatalogProfile] = {p.name: p for p in (
    CatalogProfile("earth-search", "Earth Search v1, sentinel-2-l2a", "https://earth-search.aws.element84.com/v1",
                   ("sentinel-2-l2a",), ("earth-search.aws.element84.com", "sentinel-cogs"), _EARTH_SEARCH_KEYS),
    CatalogProfile("earth-search-c1", "Earth Search v1, sentinel-2-c1-l2a (Collection 1)",
                   "https://earth-search.aws.element84.com/v1", ("sentinel-2-c1-l2a",),
                   ("e84-earth-search-sentinel-data",), _EARTH_SEARCH_KEYS),
    CatalogProfile("planetary-computer", "Microsoft Planetary Computer, sentinel-2-l2a",
                   "https://planetarycomputer.microsoft.com/api/stac/v1", ("sentinel-2-l2a",),
                   ("planetarycomputer.microsoft.com", "sentinel2l2a01.blob.core.windows.net"),
                   {b: (b,) for b in (*_L2A_BANDS, SCL)}, signing="planetary-computer"),
    CatalogProfile("cdse", "Copernicus Data Space Ecosystem, sentinel-2-l2a", "https://stac.dataspace.copernicus.eu/v1",
                   ("sentinel-2-l2a",), ("dataspace.copernicus.eu", "eodata"), _CDSE_KEYS, storage="cdse-s3"),
    GENERIC,
)}


def get_profile(name: str) -> CatalogProfile:
    """The profile called ``name``; an unknown name raises :class:`ConfigError` listing the known ones."""
    if name not in PROFILES:
        raise ConfigError(f"unknown catalog profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


def profile_for_url(url: str, collection: str | None = None) -> CatalogProfile | None:
    """The profile whose hosts ``url`` names (an API, an asset or a bucket URL), or None.

    >>> profile_for_url("https://planetarycomputer.microsoft.com/api/stac/v1").name
    'planetary-computer'
    >>> profile_for_url("https://earth-search.aws.element84.com/v1", "sentinel-2-c1-l2a").name
    'earth-search-c1'
    """
    netloc = urlparse(url).netloc.lower()
    if not netloc:
        return None
    for profile in PROFILES.values():
        if any(netloc == h or netloc.startswith(h + ".") or netloc.endswith("." + h) for h in profile.hosts):
            if profile.name == "earth-search" and collection == "sentinel-2-c1-l2a":
                return PROFILES["earth-search-c1"]
            return profile
    return None


def item_profile(item: pystac.Item) -> CatalogProfile:
    """The profile ``item`` was searched with (:data:`PROFILE_PROPERTY`), else the first one its links
    or asset hrefs name, else :data:`GENERIC`."""
    named = item.properties.get(PROFILE_PROPERTY)
    if named:
        return get_profile(named)
    for href in [link.get_target_str() for link in item.links] + [a.href for a in item.assets.values()]:
        found = profile_for_url(href, item.collection_id) if isinstance(href, str) else None
        if found is not None:
            return found
    return GENERIC


_BASELINE = re.compile(r"^(\d{1,2})\.(\d{1,2})$")
_PRODUCT_BASELINE = re.compile(r"_N(\d{2})(\d{2})_")
_RESOLUTION = re.compile(r"_(\d+)m$")  # CDSE's B02_10m, SCL_20m


def processing_baseline(item: pystac.Item) -> tuple[int, int] | None:
    """ESA processing baseline ``(major, minor)`` of ``item``: ``s2:processing_baseline`` (Earth Search,
    Planetary Computer), ``processing:version`` (CDSE), ``sentinel:processing_baseline`` (older Earth
    Search), else the ``N0511`` of the product name; None when none says it."""
    props = item.properties
    for name in ("s2:processing_baseline", "processing:version", "sentinel:processing_baseline"):
        match = _BASELINE.match(str(props.get(name, "")).strip())
        if match:
            return int(match[1]), int(match[2])
    for text in (props.get("s2:product_uri"), props.get("sentinel:product_id"), item.id):
        match = _PRODUCT_BASELINE.search(str(text or ""))
        if match:
            return int(match[1]), int(match[2])
    return None


def boa_offset_applied(item: pystac.Item) -> bool | None:
    """Earth Search's flag: True when the DNs already had the BOA offset removed (harmonised)."""
    for name in ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied"):
        if isinstance(item.properties.get(name), bool):
            return item.properties[name]
    return None


def raster_scale_offset(asset: pystac.Asset) -> tuple[float | None, float | None]:
    """``(scale, offset)`` an asset declares: ``raster:bands[0]`` (raster v1), ``raster:scale`` /
    ``raster:offset`` on the asset or on ``bands[0]`` (raster v2, STAC 1.1); None where absent."""
    fields = asset.extra_fields
    candidates = [*(fields.get("raster:bands") or [])[:1], fields, *(fields.get("bands") or [])[:1]]
    scale = offset = None
    for source in candidates:
        scale = source.get("scale", source.get("raster:scale")) if scale is None else scale
        offset = source.get("offset", source.get("raster:offset")) if offset is None else offset
    return (None if scale is None else float(scale)), (None if offset is None else float(offset))


def reflectance_scale_offset(*, band: str | None, raster_scale: float | None, raster_offset: float | None,
                             baseline: tuple[int, int] | None, boa_offset_applied: bool | None, esa_dn: bool,
                             where: str = "item") -> tuple[float, float]:
    """THE rule: ``(scale, offset)`` such that ``DN * scale + offset`` is surface reflectance.

    ESA defines ``L2A_BOA = (DN + BOA_ADD_OFFSET) / 10000`` with BOA_ADD_OFFSET = -1000 from baseline
    04.00 and none before. In order:

    - not a reflectance band (``SCL``, ``band`` None): the declared values, else ``(1, 0)``;
    - scale: the declared one, else 1e-4 where the catalog serves ESA DNs (``esa_dn``), else 1;
    - offset 0 when ``boa_offset_applied`` is True (Earth Search ``sentinel-2-l2a`` removed the offset
      from the DNs but still declares -0.1: cirrus-geo/cirrus-earth-search#21);
    - offset 0 for baseline < 04.00 (those DNs never held an offset, whatever an item declares);
    - else the declared offset (Earth Search Collection 1, CDSE, flag False);
    - else, for ESA DNs, -0.1 from baseline >= 04.00 (Planetary Computer declares nothing); without
      a baseline that cannot be told: :class:`CatalogError` naming ``where``;
    - else 0 (a generic catalog: the range check catches raw DNs).
    """
    if band is None or band == SCL:
        return (1.0 if raster_scale is None else raster_scale), (0.0 if raster_offset is None else raster_offset)
    scale = raster_scale if raster_scale is not None else (1.0 / QUANTIFICATION_VALUE if esa_dn else 1.0)
    if boa_offset_applied is True or (baseline is not None and baseline < OFFSET_BASELINE):
        return scale, 0.0
    if raster_offset is not None:
        return scale, raster_offset
    if not esa_dn:
        return scale, 0.0
    if baseline is None:
        raise CatalogError(f"{where}: no processing baseline (s2:processing_baseline, processing:version or N0xxx "
                           "in the product id) and no raster offset: cannot tell whether its DNs hold the BOA offset")
    return scale, BOA_ADD_OFFSET_DN / QUANTIFICATION_VALUE


def asset_band(item: pystac.Item, key: str) -> str | None:
    """Canonical band of the asset ``key`` of ``item`` (``blue``, ``B02``, ``B02_10m`` -> ``B02``), or None."""
    for band, keys in item_profile(item).asset_keys.items():
        if key in keys:
            return band
    band = canonical_band(_RESOLUTION.sub("", key))
    if band is None:
        eo = item.assets[key].extra_fields.get("eo:bands") or item.assets[key].extra_fields.get("bands") or []
        band = canonical_band(eo[0].get("name", "")) if len(eo) == 1 else None
    return band



def asset_scale_offset(item: pystac.Item, key: str) -> tuple[float, float]:
    """``(scale, offset)`` of the asset ``key`` of ``item``: reflectance = DN * scale + offset, read per item
    through :func:`reflectance_scale_offset` with the item's profile (:func:`item_profile`)."""
    scale, offset = raster_scale_offset(item.assets[key])
    return reflectance_scale_offset(band=asset_band(item, key), raster_scale=scale, raster_offset=offset,
                                    baseline=processing_baseline(item), boa_offset_applied=boa_offset_applied(item),
                                    esa_dn=item_profile(item).esa_dn, where=f"item {item.id} asset {key!r}")


#: Item property where :func:`cropmap.io.stac.search_items` records the catalog an item came from (a
#: static catalog's folder, or the STAC API's URL): what :func:`check_asset_href` allows besides the schemes.
ROOT_PROPERTY = "cropmap:catalog_root"
#: Item property listing the local folders its catalog config allows file hrefs into
#: (``catalog.asset_roots``: a STAC API that serves local files), set by the search as :data:`ROOT_PROPERTY`.
ASSET_ROOTS_PROPERTY = "cropmap:asset_roots"


def asset_href(item: pystac.Item, key: str) -> str:
    """The absolute href of the asset ``key``, checked (:func:`check_asset_href`), then signed where the
    item's catalog needs it."""
    asset = item.assets[key]
    href = asset.get_absolute_href() or asset.href
    check_asset_href(href, item, key)
    return item_profile(item).sign(href)


def check_asset_href(href: str, item: pystac.Item, key: str) -> None:
    """Raise :class:`ForbiddenHrefError` unless ``href`` uses an allowed scheme
    (``$CROPMAP_ASSET_HREF_SCHEMES``, default https and s3), is on the host of the STAC API the item
    was searched on, or is a local file under the folder of the static catalog it came from (a
    catalog's items must not make cropmap read ``/etc`` or a host inside the cluster's network).
    An item that was not searched (no :data:`ROOT_PROPERTY`) may point at any local file, and so may
    every item when ``file`` is among the allowed schemes (a STAC API serving local files)."""
    root = item.properties.get(ROOT_PROPERTY)
    parts = urlparse(href)
    scheme = parts.scheme.lower()
    local = scheme in ("", "file") or (len(scheme) == 1 and re.match(r"^[a-zA-Z]:[\\/]", href) is not None)
    if not local and scheme in get_settings().allowed_href_schemes:
        return
    root_parts = urlparse(str(root)) if root else None
    if not local and root_parts is not None and root_parts.scheme in ("http", "https") \
            and parts.hostname == root_parts.hostname:
        return
    if local and not href.startswith("/vsi"):
        path = os.path.realpath(parts.path if scheme == "file" else href)
        if root is None or "file" in get_settings().allowed_href_schemes:
            return
        for allowed in item.properties.get(ASSET_ROOTS_PROPERTY) or ():
            folder = os.path.realpath(str(allowed))
            if os.path.commonpath([path, folder]) == folder:
                return
        if root_parts.scheme in ("", "file"):
            folder = os.path.realpath(root_parts.path if root_parts.scheme == "file" else str(root))
            if os.path.commonpath([path, folder]) == folder:
                return
    where = (f"files under {root}" if root and root_parts.scheme in ("", "file")
             else f"its catalog's host {root_parts.hostname}" if root else "local files")
    if local and root:
        where += " (a catalog serving local files names their folders in its config's catalog.asset_roots)"
    raise ForbiddenHrefError(
        f"item {item.id} asset {key!r}: href {href} is not allowed; assets may be "
        f"{', '.join(sorted(get_settings().allowed_href_schemes))} URLs (CROPMAP_ASSET_HREF_SCHEMES) or {where}")


_AWS_KEYS = {"AWS_ACCESS_KEY_ID": "aws_access_key_id", "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key"}


def rio_settings(env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str] | None]:
    """``(GDAL options, AWS session arguments)`` of a :meth:`CatalogProfile.gdal_env`: rasterio refuses S3
    keys as GDAL options, they go into its ``AWSSession`` (``odc.stac.configure_rio(aws=...)``)."""
    options = {k: v for k, v in env.items() if k not in _AWS_KEYS}
    aws = {_AWS_KEYS[k]: v for k, v in env.items() if k in _AWS_KEYS}
    if aws and "AWS_S3_ENDPOINT" in options:
        aws["endpoint_url"] = options["AWS_S3_ENDPOINT"]
    return options, aws or None


def rasterio_env(env: Mapping[str, str]):
    """A ``rasterio.Env`` for reading with ``env`` (:func:`rio_settings`)."""
    import rasterio
    from rasterio.session import AWSSession

    options, aws = rio_settings(env)
    return rasterio.Env(session=AWSSession(**aws) if aws else None, **options)


@functools.lru_cache(maxsize=8192)
def _median_dn(href: str, nodata: float | None, env: tuple[tuple[str, str], ...], size: int) -> float | None:
    with rasterio_env(dict(env)), rasterio.open(href) as src:
        # a decimated read (an overview where the file has one): the median needs no full resolution
        values = src.read(1, out_shape=(min(size, src.height), min(size, src.width)))
        missing = nodata if nodata is not None else (src.nodata if src.nodata is not None else 0)
    valid = values[(values != missing) & np.isfinite(values)]
    return float(np.median(valid)) if valid.size else None


def reflectance_problem(item: pystac.Item, key: str, href: str, *, env: Mapping[str, str],
                        size: int = 256) -> str:
    """"" when the median of the valid values of the asset ``key`` (read at about ``size`` px), scaled
    by :func:`asset_scale_offset`, lies in :data:`REFLECTANCE_RANGE`; else why not (raw DNs, a wrong
    scale). Not a reflectance band, or no valid value: "". Reads are cached per href."""
    band = asset_band(item, key)
    if band is None or band == SCL:
        return ""
    scale, offset = asset_scale_offset(item, key)
    fields = item.assets[key].extra_fields
    nodata = (fields.get("raster:bands") or [{}])[0].get("nodata", fields.get("nodata"))
    dn = _median_dn(href, None if nodata is None else float(nodata), tuple(sorted(env.items())), size)
    if dn is None:
        return ""
    low, high = REFLECTANCE_RANGE
    value = dn * scale + offset
    if low <= value <= high:
        return ""
    return (f"item {item.id} asset {key!r} ({band}): median reflectance {value:.4g} (median DN {dn:g} x {scale:g} "
            f"+ {offset:g}, profile {item_profile(item).name!r}) is outside {low:g}..{high:g}")


def implausible_band(band: str, problems: list[str]) -> ReflectanceRangeError:
    """The error for ``band`` whose assets gave ``problems`` (:func:`reflectance_problem`): what to do."""
    more = f" (and {len(problems) - 1} more item(s))" if len(problems) > 1 else ""
    return ReflectanceRangeError(
        f"band {band}: {problems[0]}{more}. The scale/offset rule does not fit these assets: set the "
        f"config's catalog.profile ({', '.join(PROFILES)}; docs/catalogs.md) or fix the items' raster:bands")
