"""A run's plan before any tile, what it costs, and the checks every run makes before its first tile.

- :func:`plan_run`: tiles per UTM zone and hemisphere, each hemisphere's season and search window, the
  100 km block searches (:func:`cropmap.jobs.searches.search_blocks`), the checkpoint's bands and season
  alignment (:func:`cropmap.jobs.tiles.check_model_fits`), whether the catalog answers
  (:func:`probe_catalog`, a few seconds at most) and a :class:`cropmap.jobs.cost_model.Estimate` from the
  measured cost figures (:func:`cropmap.jobs.cost_model.estimate_cost`);
  :func:`plan_lines` says it as text (after :func:`cropmap.jobs.reports.plan_table`'s lines);
- :func:`check_limits`: ``max_tiles`` / ``max_dollars`` (or ``$CROPMAP_MAX_TILES`` / ``$CROPMAP_MAX_DOLLARS``)
  refuse a plan that exceeds them;
- :func:`preflight`: the limits, then the catalog answers and one item of the season is readable, before
  :func:`cropmap.jobs.mapping.map_country` / ``train_country`` start a tile.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice

import pystac

from cropmap.errors import AssetReadError, CatalogError, ConfigError, CropmapError, IncompatibleInputError, MissingBandError
from cropmap.io import storage
from cropmap.io.catalogs import asset_href, implausible_band, item_profile, reflectance_problem
from cropmap.io.config import CatalogConfig
from cropmap.io.stac import band_assets, season_search_window
from cropmap.jobs.cost_model import (DEFAULT_GPUS, DEFAULT_VCPUS, Estimate, estimate_cost, estimate_lines,
                                     figures_path)
from cropmap.jobs.country_run import CountryRun
from cropmap.jobs.searches import items_for_tile, search_block, search_blocks
from cropmap.jobs.tiles import check_model_fits, zones_of
from cropmap.settings import get_settings
from cropmap.stages.model_ref import ModelRef
from cropmap.stages.reading import gdal_env

__all__ = ["DEFAULT_VCPUS", "DEFAULT_GPUS", "ModelFit", "RunPlan", "plan_run", "plan_lines", "check_limits",
           "probe_catalog", "check_catalog", "preflight"]


@dataclass(frozen=True)
class ModelFit:
    """The checkpoint against the plan: its bands, season and bins, and the offset per hemisphere, or why
    it does not fit (``problem``)."""

    path: str
    name: str
    bands: tuple[str, ...]
    season: str
    n_bins: int
    offsets: dict[str, int] = field(default_factory=dict)
    problem: str = ""


@dataclass(frozen=True)
class RunPlan:
    """What a run would do (see the module docstring); ``catalog_problem`` is "" when the catalog answered,
    None when it was not asked."""

    code: str
    year: int
    purpose: str  # "map" | "train"
    tiles: int
    tile_px: int
    zones: dict[int, int]  # EPSG -> tiles
    seasons: dict[str, tuple[str, dt.date, dt.date, dt.date, dt.date]]  # hemisphere -> (season, window, searched)
    searches: int
    catalog: str
    catalog_problem: str | None
    estimate: Estimate
    model: ModelFit | None = None


def _catalog_name(catalog: CatalogConfig) -> str:
    return str(catalog.path) if catalog.path is not None else f"{catalog.url} ({catalog.collection})"


def probe_catalog(catalog: CatalogConfig, *, timeout_s: float | None = None) -> str:
    """"" when the catalog answers within ``timeout_s`` (default ``$CROPMAP_CATALOG_TIMEOUT_S``): a STAC
    API's landing page, a static catalog's file; else why not, as one line naming it."""
    timeout_s = get_settings().catalog_timeout_s if timeout_s is None else timeout_s
    where = _catalog_name(catalog)
    if catalog.path is not None:
        try:
            pystac.read_file(str(catalog.path))
        except Exception as err:  # noqa: BLE001 - any failure to read it means the same to the user
            return f"static STAC catalog {where} cannot be read: {' '.join(str(err).split())[:200]}"
        return ""
    import requests

    answer: list[str] = []

    def ask() -> None:
        try:
            response = requests.get(str(catalog.url), timeout=timeout_s)
            response.raise_for_status()
            response.json()
            answer.append("")
        except Exception as err:  # noqa: BLE001 - network stacks raise many types; all mean "no answer"
            text = " ".join(str(err).split())
            # urllib3 nests the cause in a long message: keep its kind and errno, not the whole repr
            cause, errno = re.search(r"Caused by (\w+)", text), re.search(r"\[Errno -?\d+\] [^'\")]*", text)
            short = ", ".join(m.group(0 if m is errno else 1) for m in (cause, errno) if m) or text[:160]
            answer.append(f"{type(err).__name__}: {short}")

    # a thread with a deadline: name resolution is not bound by the socket timeout
    thread = threading.Thread(target=ask, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout_s + 1)
    if answer and not answer[0]:
        return ""
    why = answer[0] if answer else f"no answer in {time.monotonic() - started:.0f} s"
    return f"STAC catalog {where} is unreachable ({why})"


def plan_run(run: CountryRun, *, tile_limit: int | None = None, model: ModelRef | None = None,
             labels: storage.Location | None = None, probe: bool = True, vcpus: int = DEFAULT_VCPUS,
             gpus: int = DEFAULT_GPUS) -> RunPlan:
    """The :class:`RunPlan` of mapping the run (with ``model``, resolved: :func:`cropmap.jobs.tiles.run_model`),
    or of training it from ``labels`` (the tiles under them); ``probe``: ask the catalog (:func:`probe_catalog`).
    Reads nothing but the outline and the labels' extent."""
    if labels is not None:
        from cropmap.jobs.mapping import training_tiles  # mapping calls preflight: imported when used

        tile_ids = training_tiles(run, reference=labels)[:tile_limit]
    else:
        tile_ids = run.tiles(tile_limit=tile_limit)
    zones = {e: len(ids) for e, ids in zones_of(tile_ids).items()}
    catalog = run.config.catalog
    seasons = {}
    for hemisphere, season in run.seasons(tile_ids).items():
        first, last = season.window(run.year)
        seasons[hemisphere] = (season.describe(), first, last,
                               *season_search_window(season, run.year, catalog.margin_days))
    fit = None
    if model is not None:
        try:
            offsets, problem = check_model_fits(run, model, tile_ids), ""
        except (IncompatibleInputError, ConfigError) as err:
            offsets, problem = {}, str(err)
        fit = ModelFit(model.location, model.model_name, model.bands, model.season.describe(), model.n_bins,
                       offsets, problem)
    return RunPlan(run.code, run.year, "train" if labels is not None else "map", len(tile_ids), run.config.tile_size,
                   zones, seasons, len(search_blocks(tile_ids)), _catalog_name(catalog),
                   probe_catalog(catalog) if probe else None,
                   estimate_cost(len(tile_ids), run.config.tile_size, inference=labels is None, vcpus=vcpus,
                                 gpus=gpus, zone_tiles=list(zones.values())), fit)


def plan_lines(plan: RunPlan) -> list[str]:
    """The plan as text, one fact a line; the cost figures with their sources (``estimate_lines``)."""
    hemis = {e: "south" if e // 100 == 327 else "north" for e in plan.zones}
    lines = [f"{plan.purpose} {plan.code} {plan.year}: {plan.tiles:,} tiles of {plan.tile_px} px in "
             f"{len(plan.zones)} UTM zone(s)"]
    for epsg, n in plan.zones.items():
        lines.append(f"  EPSG:{epsg} (UTM {epsg % 100}{hemis[epsg][0].upper()}, {hemis[epsg]}): {n:,} tiles")
    for hemisphere, (season, first, last, s0, s1) in plan.seasons.items():
        n = sum(v for e, v in plan.zones.items() if hemis[e] == hemisphere)
        lines.append(f"  {hemisphere}: {n:,} tiles, season {season}, window {first}..{last}, searched {s0}..{s1}")
    lines.append(f"block searches: {plan.searches:,} (one per 100 km block and zone)")
    answer = ("not asked" if plan.catalog_problem is None else "answers" if not plan.catalog_problem
              else f"UNREACHABLE: {plan.catalog_problem}")
    lines.append(f"catalog: {plan.catalog}: {answer}")
    if plan.model is not None:
        m = plan.model
        fits = (f"fits: season offset " + ", ".join(f"{h} {o} months" for h, o in m.offsets.items())
                if not m.problem else f"DOES NOT FIT: {m.problem}")
        lines.append(f"model: {m.path}: {m.name}, bands {', '.join(m.bands)}, season {m.season}, {m.n_bins} bins; {fits}")
    lines.append(f"cost figures: {figures_path()}")
    lines += estimate_lines(plan.estimate, plan.purpose)
    return lines


def check_limits(plan: RunPlan, *, max_tiles: int | None = None, max_dollars: float | None = None) -> None:
    """Raise :class:`ConfigError` when the plan has more tiles than ``max_tiles`` or costs more than
    ``max_dollars`` (defaults ``$CROPMAP_MAX_TILES``, ``$CROPMAP_MAX_DOLLARS``; unset: no limit)."""
    settings = get_settings()
    max_tiles = settings.max_tiles if max_tiles is None else max_tiles
    max_dollars = settings.max_dollars if max_dollars is None else max_dollars
    if max_tiles is not None and plan.tiles > max_tiles:
        raise ConfigError(f"{plan.code}: the plan has {plan.tiles:,} tiles, more than max_tiles {max_tiles:,}; "
                          "map fewer tiles (parts, tile_limit) or raise the limit")
    if max_dollars is not None and plan.estimate.dollars > max_dollars:
        raise ConfigError(f"{plan.code}: the plan's estimate is ${plan.estimate.dollars:,.0f} for {plan.tiles:,} "
                          f"tiles, more than max_dollars ${max_dollars:,.0f}; see `cropmap plan {plan.code}`")


def _season_item(run: CountryRun, path: str, tile_ids: Sequence[str]) -> pystac.Item | None:
    for tile_id in islice(tile_ids, 5):  # a few tiles of the block: an edge tile may lie off the scenes
        first, last = run.season_of(tile_id).window(run.year)
        for item in items_for_tile(path, run.tile(tile_id)):
            when = item.datetime or item.common_metadata.start_datetime
            if when is not None and first <= when.date() <= last:
                return item
    return None


def check_catalog(run: CountryRun, tile_ids: Sequence[str]) -> str:
    """Raise a :class:`CatalogError` (or the read's error) unless the run's catalog answers in seconds
    (:func:`probe_catalog`), its first block searches (kept: the run reuses them) hold an item of the
    season, and one band asset of that item reads as plausible reflectance; returns what was read."""
    catalog = run.config.catalog
    problem = probe_catalog(catalog)
    if problem:
        raise CatalogError(f"{problem}; nothing was computed. Check the network, or point the config's catalog "
                           "at one that answers")
    blocks = list(islice(search_blocks(tile_ids).items(), 3))
    item = None
    for block, ids in blocks:
        item = _season_item(run, search_block(run, block, ids).path, ids)
        if item is not None:
            break
    if item is None:
        raise CatalogError(f"{_catalog_name(catalog)} holds no item of the {run.year} season over the first "
                           f"{len(blocks)} block(s) of {run.code}; check the collection, the year and the season")
    keys = band_assets(item, list(run.cube.bands))
    if not keys:
        raise MissingBandError(f"item {item.id} of {_catalog_name(catalog)} has no asset of the bands "
                               f"{list(run.cube.bands)} (its assets: {sorted(item.assets)})")
    band, key = next(iter(keys.items()))
    href = asset_href(item, key)
    # one GDAL retry, not the tiles' four: a dead asset host should fail the check in seconds
    env = {**gdal_env(), **item_profile(item).gdal_env(), "GDAL_HTTP_MAX_RETRY": "1"}
    try:
        problem = reflectance_problem(item, key, href, env=env)
    except CropmapError:
        raise
    except Exception as err:  # noqa: BLE001 - GDAL and its HTTP layer raise many types
        raise AssetReadError(f"item {item.id} asset {key!r} of {_catalog_name(catalog)} cannot be read ({href}): "
                             f"{' '.join(str(err).split())[:200]}") from err
    if problem:
        raise implausible_band(band, [problem])
    return f"{item.id} {key}"


def preflight(run: CountryRun, tile_ids: Sequence[str], *, purpose: str = "map", max_tiles: int | None = None,
              max_dollars: float | None = None) -> RunPlan:
    """Before any tile: the plan within ``max_tiles`` / ``max_dollars`` (:func:`check_limits`), then
    :func:`check_catalog`. Returns the plan."""
    plan = RunPlan(run.code, run.year, purpose, len(tile_ids), run.config.tile_size, {}, {}, 0,
                   _catalog_name(run.config.catalog), None,
                   estimate_cost(len(tile_ids), run.config.tile_size, inference=purpose == "map"))
    check_limits(plan, max_tiles=max_tiles, max_dollars=max_dollars)
    check_catalog(run, tile_ids)
    return plan
