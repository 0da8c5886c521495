"""Sentinel-2 L2A items from STAC: a STAC API through pystac-client, a static catalog through pystac.

Both paths apply the same filters (AOI bbox, date window, scene cloud cover) and return the same
thing: ``pystac.Item`` objects sorted by date and id, asset hrefs absolute. The cloud-cover filter is
always applied here, locally, because not every API honours ``query``/``filter`` (rustac's server
silently returns nothing for them; see ../shared/notes/stack.md).

Band names: :func:`band_assets` maps asset keys to canonical names: first the keys of the item's
catalog profile (:mod:`cropmap.io.catalogs`: Earth Search ``blue ... swir22 scl``, Planetary Computer
``B02 ... B12 SCL``, CDSE ``B02_10m ... SCL_20m``), then any key or ``eo:bands`` name that
:func:`cropmap.core.bands.canonical_band` knows. Scale and offset: :func:`asset_scale_offset`, the one
rule of :func:`cropmap.io.catalogs.reflectance_scale_offset`. Every item found is marked with the
catalog's profile (``cropmap:catalog``) when the config names or implies one.

Malformed items (a ``datetime`` that is no date, a null one without ``start_datetime``/``end_datetime``,
neither geometry nor bbox) are skipped, each named in a :class:`MalformedItemWarning`; a search that
finds only malformed items is a :class:`~cropmap.errors.MalformedItemError`, never retried as if the
network had failed.

Searches keep to the caller's time limit (:mod:`cropmap.io.time_limits`): checked before each attempt and
between pages, a request's timeout and the backoff capped at the time left.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import pystac
import shapely
from pystac.utils import str_to_datetime
from shapely.geometry import shape

from cropmap.core.bands import canonical_band
from cropmap.core.season import Season
from cropmap.errors import CatalogError, CropmapError, MalformedItemError, one_line
from cropmap.settings import get_settings
from cropmap.io.catalogs import ASSET_ROOTS_PROPERTY, PROFILE_PROPERTY, ROOT_PROPERTY, asset_scale_offset, item_profile
from cropmap.io.config import CatalogConfig
from cropmap.io.time_limits import check_time_limit, time_left

__all__ = ["search_items", "season_search_window", "band_assets", "asset_scale_offset", "MalformedItemWarning"]

#: Seconds one request to a STAC API may wait for its answer (less when a time limit ends sooner).
REQUEST_TIMEOUT_S = 60.0
#: Malformed items named one by one in warnings; the rest are counted in one more.
NAMED_MALFORMED = 10


class MalformedItemWarning(UserWarning):
    """A catalog item could not be read as a STAC item (its id and why); the search goes on without it."""


def season_search_window(season: Season, year: int, margin_days: int) -> tuple[dt.date, dt.date]:
    """The season window widened by ``margin_days`` on both sides (for augmentation and interpolation)."""
    first, last = season.window(year)
    margin = dt.timedelta(days=margin_days)
    return first - margin, last + margin


def search_items(
    catalog: CatalogConfig,
    *,
    bbox: tuple[float, float, float, float],
    start: dt.date,
    end: dt.date,
    max_cloud_cover: float | None = None,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> list[pystac.Item]:
    """Items of ``catalog.collection`` over ``bbox`` (lon/lat degrees) dated ``start..end`` (inclusive).

    ``max_cloud_cover`` (percent, ``eo:cloud_cover``) defaults to the catalog's; items without the
    property are kept. A catalog that cannot be reached or read after ``retries`` attempts
    (exponential backoff from ``backoff_s``) raises one :class:`CatalogError`. Malformed items are
    skipped with a :class:`MalformedItemWarning` each; when every item read is malformed,
    :class:`~cropmap.errors.MalformedItemError`. Within a :func:`time_limit`, the attempts, their
    backoff and each request end with it (:class:`~cropmap.errors.TimeLimitError`).
    """
    limit = catalog.max_cloud_cover if max_cloud_cover is None else max_cloud_cover
    if start > end:
        raise CatalogError(f"search window starts after it ends: {start} > {end}")
    where = str(catalog.path) if catalog.path is not None else str(catalog.url)
    last_err: Exception | None = None
    for attempt in range(max(retries, 1)):
        check_time_limit()
        try:
            if catalog.path is not None:
                found, n_read, malformed = _search_static(Path(catalog.path), catalog.collection, bbox, start, end)
            else:
                found, n_read, malformed = _search_api(str(catalog.url), catalog.collection, bbox, start, end)
            break
        except CropmapError:  # a verdict (no such collection, a time limit), not a failed connection
            raise
        except Exception as err:  # noqa: BLE001 - network stacks raise many types; all mean "unreachable"
            last_err = err
            if attempt + 1 < retries:
                left = time_left()
                time.sleep(max(0.0, min(backoff_s * 2**attempt, float("inf") if left is None else left)))
    else:
        check_time_limit()  # attempts cut short by the limit: say so, not "network"
        raise CatalogError(
            f"STAC catalog {where} could not be searched after {retries} attempt(s): {last_err}. "
            "Check the URL/path and the network, or point the config's catalog at a static catalog."
        ) from last_err
    _report_malformed(where, n_read, malformed)
    keep = [it for it in found if it.properties.get("eo:cloud_cover", 0.0) <= limit]
    for it in keep:
        if it.get_self_href():
            it.make_asset_hrefs_absolute()
        if catalog.profile is not None:  # read with the catalog's rule, wherever the item goes next
            it.properties[PROFILE_PROPERTY] = catalog.profile
        # where its assets may point (cropmap.io.catalogs.check_asset_href), wherever the item goes next
        it.properties[ROOT_PROPERTY] = (str(Path(catalog.path).expanduser().resolve().parent)
                                        if catalog.path is not None else str(catalog.url))
        if catalog.asset_roots:  # local folders the config lets this catalog's file hrefs point into
            it.properties[ASSET_ROOTS_PROPERTY] = [str(Path(r).expanduser().resolve()) for r in catalog.asset_roots]
    return sorted(keep, key=lambda it: (_item_time(it), it.id))


def _item_time(item: pystac.Item) -> dt.datetime:
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise CatalogError(f"item {item.id} has no datetime")
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _in_window(item: pystac.Item, start: dt.date, end: dt.date) -> bool:
    return start <= _item_time(item).date() <= end


_DATE_FIELDS = ("datetime", "start_datetime", "end_datetime")


def _checked(item: pystac.Item) -> tuple[pystac.Item, shapely.Geometry]:
    """``(item, footprint)`` (its geometry, else its bbox) when its date and footprint can be read, else
    an error: pystac accepts both missing, and ``start_datetime`` parses only when asked for."""
    if (item.datetime or item.common_metadata.start_datetime) is None:
        raise ValueError("no datetime and no start_datetime")
    if item.geometry:
        return item, shape(item.geometry)
    if item.bbox:
        return item, shapely.box(*item.bbox)
    raise ValueError("no geometry and no bbox")


def _malformed(name: object, dates: dict | None, err: Exception) -> str:
    """``item <name>: why``, the date field at fault named where one is (``dates``: the item's date
    properties as the catalog gave them)."""
    why = one_line(err.__cause__ or err)  # pystac wraps a static item's error in "does not resolve"
    if isinstance(dates, dict):
        bad = [(k, v, _date_error(v)) for k, v in dates.items() if v is not None]
        bad = [b for b in bad if b[2]]
        if bad:
            why = f"{bad[0][0]} {bad[0][1]!r} is not a date ({bad[0][2]})"
        elif dates.get("datetime") is None and None in (dates.get("start_datetime"), dates.get("end_datetime")):
            why = "datetime is null and start_datetime/end_datetime are missing"
    return f"item {name}: {why}"


def _date_error(value: object) -> str:
    """Why ``value`` is not a STAC date, or ""."""
    try:
        str_to_datetime(value)  # type: ignore[arg-type]
    except Exception as err:  # noqa: BLE001 - any failure means "not a date"
        return one_line(err) or type(err).__name__
    return ""


def _date_fields(feature: object) -> dict | None:
    props = feature.get("properties") if isinstance(feature, dict) else None
    return {k: props.get(k) for k in _DATE_FIELDS} if isinstance(props, dict) else None


def _report_malformed(where: str, n_read: int, malformed: list[str]) -> None:
    """Warn of each malformed item (the first :data:`NAMED_MALFORMED` by name); none read well: the error."""
    if not malformed:
        return
    if n_read == 0:
        more = f" (and {len(malformed) - 1} more)" if len(malformed) > 1 else ""
        raise MalformedItemError(
            f"STAC catalog {where}: all {len(malformed)} item(s) it gave are malformed, {malformed[0]}{more}; "
            "fix the catalog's items or point the config's catalog at another catalog")
    for line in malformed[:NAMED_MALFORMED]:
        warnings.warn(f"{line}; skipped (STAC catalog {where})", MalformedItemWarning, stacklevel=3)
    if len(malformed) > NAMED_MALFORMED:
        warnings.warn(f"{len(malformed) - NAMED_MALFORMED} more malformed item(s) of STAC catalog {where} skipped",
                      MalformedItemWarning, stacklevel=3)


def _static_items(catalog: pystac.Catalog, malformed: list[str]) -> Iterator[tuple[pystac.Item, shapely.Geometry]]:
    """``(item, footprint)`` of ``catalog`` and its children, as ``get_items(recursive=True)``, but an
    item file that cannot be parsed is named in ``malformed`` instead of ending the walk."""
    root = catalog.get_root()
    for link in catalog.get_links(pystac.RelType.ITEM):
        check_time_limit()
        href = link.get_absolute_href()
        try:
            link.resolve_stac_object(root=root)
            found = _checked(link.target)
        except OSError:  # the file cannot be read: a storage problem, retried as one
            raise
        except Exception as err:  # noqa: BLE001 - JSON and pystac raise many types for "not an item"
            try:
                raw = pystac.StacIO.default().read_json(href)
            except Exception:  # noqa: BLE001 - not JSON: the parse error says so
                raw = None
            name = raw.get("id", href) if isinstance(raw, dict) else href
            malformed.append(_malformed(name, _date_fields(raw), err))
            continue
        yield found
    for child in catalog.get_children():
        yield from _static_items(child, malformed)


def _search_static(path: Path, collection: str, bbox, start, end) -> tuple[list[pystac.Item], int, list[str]]:
    """``(items in the window and area, items read well, malformed items)``: every item of the
    collection is read, so the last two count the whole collection."""
    if not path.exists():
        raise CatalogError(f"static STAC catalog {path} does not exist")
    root = pystac.read_file(str(path))
    if isinstance(root, pystac.Collection) and root.id == collection:
        coll = root
    elif isinstance(root, pystac.Catalog):
        coll = root.get_child(collection)
        if coll is None:
            ids = [c.id for c in root.get_children()]
            raise CatalogError(f"static catalog {path} has no collection {collection!r} (has: {', '.join(ids)})")
    else:
        raise CatalogError(f"{path} is not a STAC catalog or collection")
    area = shapely.box(*bbox)
    out, n_read, malformed = [], 0, []
    for item, footprint in _static_items(coll, malformed):
        n_read += 1
        if _in_window(item, start, end) and footprint.intersects(area):
            out.append(item)
    return out, n_read, malformed


def _search_api(url: str, collection: str, bbox, start, end) -> tuple[list[pystac.Item], int, list[str]]:
    """``(items in the window, items read well, malformed items)`` of every page of the answer."""
    from pystac_client import Client  # imported here: static catalogs do not need it
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    # HTTP 429 (and 5xx) are retried with exponential backoff, honouring the server's Retry-After;
    # a refused connection is not: search_items' own attempts handle an unreachable catalog
    retry = Retry(total=None, connect=0, read=0, other=0, status=6, backoff_factor=1.0,
                  status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None, respect_retry_after_header=True)
    left = time_left()
    # the modifier goes to open(), not to StacApiIO(): open() replaces the io's modifier with its own
    client = Client.open(url, stac_io=StacApiIO(max_retries=retry), request_modifier=_polite,
                         timeout=REQUEST_TIMEOUT_S if left is None else max(0.1, min(REQUEST_TIMEOUT_S, left)))
    search = client.search(
        collections=[collection],
        bbox=list(bbox),
        datetime=f"{start.isoformat()}T00:00:00Z/{end.isoformat()}T23:59:59Z",
        limit=100,
    )
    out, n_read, malformed = [], 0, []
    for page in search.pages_as_dicts():
        check_time_limit()
        for feature in page.get("features", []):
            # taken before parsing: from_dict(preserve_dict=False) takes the feature apart
            name = feature.get("id", "without an id") if isinstance(feature, dict) else repr(feature)[:40]
            dates = _date_fields(feature)
            try:
                item, _ = _checked(pystac.Item.from_dict(feature, root=client, preserve_dict=False))
            except Exception as err:  # noqa: BLE001 - pystac raises many types for "not an item"
                malformed.append(_malformed(name, dates, err))
                continue
            n_read += 1
            # the server's datetime filter is trusted for paging, re-checked here for servers that round
            if _in_window(item, start, end):
                out.append(item)
    return out, n_read, malformed


_RATE_LOCK = threading.Lock()
_LAST_REQUEST = [0.0]


def _polite(request):
    """At most ``$CROPMAP_STAC_REQUESTS_PER_SECOND`` requests a second from this process (every page of
    every search): public APIs such as Earth Search ask for it."""
    interval = 1.0 / get_settings().stac_requests_per_second
    with _RATE_LOCK:
        wait = _LAST_REQUEST[0] + interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        _LAST_REQUEST[0] = time.monotonic()
    return request


def band_assets(item: pystac.Item, bands: Sequence[str] | None = None) -> dict[str, str]:
    """``{canonical band: asset key}`` for the raster assets of ``item`` (``B02`` ... ``SCL``).

    The keys of the item's catalog profile come first, in its order of preference (CDSE: ``B02_10m``
    before ``B02_20m``); then asset keys (``blue``, ``B02``, ``B05_20m``: the finest resolution wins),
    then single-band ``eo:bands`` / ``bands`` names; keys that are not S2 bands (``blue-jp2``,
    ``visual``, ``aot``, ``TCI_10m``) are ignored. With ``bands``, only those are returned (missing
    ones are simply absent: the caller decides whether that is fatal).
    """
    found: dict[str, str] = {}
    for band, keys in item_profile(item).asset_keys.items():
        key = next((k for k in keys if k in item.assets), None)
        if key is not None:
            found[band] = key
    by_name: dict[str, tuple[int, str]] = {}
    for key, asset in item.assets.items():
        match = _RESOLUTION.search(key)
        base, metres = (key[:match.start()], int(match[1])) if match else (key, 0)
        band = canonical_band(base)
        if band is None:
            eo = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
            band = canonical_band(eo[0].get("name", "")) if len(eo) == 1 else None
            if band is not None and canonical_band(key.split("-")[0]) is not None and key != key.split("-")[0]:
                band = None  # "blue-jp2": an alternative encoding of an asset already matched
        if band is not None and (band not in by_name or metres < by_name[band][0]):
            by_name[band] = (metres, key)
    for band, (_, key) in by_name.items():
        found.setdefault(band, key)
    if bands is not None:
        return {b: found[b] for b in bands if b in found}
    return found


_RESOLUTION = re.compile(r"_(\d+)m$")
