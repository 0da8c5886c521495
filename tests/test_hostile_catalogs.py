"""Hostile and unlucky catalogs (issue 33, round three): malformed items and slow answers.

Guards that one malformed item (a ``datetime`` of "2017-13-45", or null; no footprint) is skipped and
named instead of failing the whole search as "the network", that a catalog of only malformed items says
so in one line and is not retried, that a search or cube task stops at its time limit with an error
naming the block or tile and the setting, that the flows' tasks on the Dask task runner no longer log
Prefect's "cannot interrupt" warning, and that API requests keep to the polite rate. Real Earth Search items (../shared/data/s2_l2a_stac) behind a real STAC API
(rustac) on 127.0.0.1, with a proxy that edits or holds back its answers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import threading
import time
import warnings
from collections.abc import Iterator

import pytest

from cropmap import errors
from cropmap.io import stac, time_limits
from cropmap.io.config import CatalogConfig
from conftest import use_prefect_env
from http_servers import counting_proxy, stac_api_server

BOTH_TILES = (15.7, 45.9, 15.8, 46.7)  # 33TWL and 33TWM: all 10 items
AUGUST = (dt.date(2023, 8, 1), dt.date(2023, 8, 31))
BAD_DATE, NULL_DATE, NO_FOOTPRINT = "S2A_33TWL_20230815_0_L2A", "S2B_33TWM_20230820_0_L2A", "S2A_33TWM_20230818_0_L2A"


@pytest.fixture(autouse=True)
def fast_requests(monkeypatch):
    """No polite pause between requests to the local API (one test sets its own rate)."""
    monkeypatch.setenv("CROPMAP_STAC_REQUESTS_PER_SECOND", "1000")


@pytest.fixture(scope="module")
def api(shared_data, tmp_path_factory) -> Iterator[str]:
    """The 10 real items behind rustac on 127.0.0.1."""
    with stac_api_server(shared_data / "s2_l2a_stac/catalog.json", None, tmp_path_factory.mktemp("api")) as (url, _):
        yield url


def _search(url: str, **kwargs):
    return stac.search_items(CatalogConfig(url=url), bbox=BOTH_TILES, start=AUGUST[0], end=AUGUST[1], **kwargs)


def _warned(caught: list[warnings.WarningMessage]) -> list[str]:
    """The texts of the malformed-item warnings among ``caught``, sorted."""
    return sorted(str(w.message) for w in caught if w.category.__name__ == "MalformedItemWarning")


def _break_three(feature: dict) -> None:
    """Three items broken as catalogs break them: a date out of range, a null date, no footprint."""
    if feature["id"] == BAD_DATE:
        feature["properties"]["datetime"] = "2017-13-45"
    elif feature["id"] == NULL_DATE:
        feature["properties"]["datetime"] = None
    elif feature["id"] == NO_FOOTPRINT:
        feature["geometry"], feature["bbox"] = None, None


def test_one_malformed_item_of_an_api_search_is_skipped_and_named(api):
    """A STAC API answering one item dated "2017-13-45", one dated null and one without a footprint:
    each skipped and named."""
    with counting_proxy(api, edit=_break_three) as (url, _), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = _search(url)
    assert len(items) == 7 and {BAD_DATE, NULL_DATE, NO_FOOTPRINT}.isdisjoint(it.id for it in items)
    assert _warned(caught) == [
        f"item {BAD_DATE}: datetime '2017-13-45' is not a date (month must be in 1..12); skipped (STAC catalog {url})",
        f"item {NO_FOOTPRINT}: no geometry and no bbox; skipped (STAC catalog {url})",
        f"item {NULL_DATE}: datetime is null and start_datetime/end_datetime are missing; skipped (STAC catalog {url})"]


def test_a_search_whose_items_are_all_malformed_says_so_once_and_is_not_retried(api):
    """A STAC API whose every item is dated "2017-13-45": one line saying so, not "network", no retry."""
    def break_all(feature: dict) -> None:
        feature["properties"]["datetime"] = "2017-13-45"

    with counting_proxy(api, edit=break_all) as (url, log), pytest.raises(errors.CropmapError) as err:
        _search(url, retries=3, backoff_s=0.05)
    text = str(err.value)
    assert text.startswith(f"STAC catalog {url}: all 10 item(s) it gave are malformed, item ")
    assert "datetime '2017-13-45' is not a date (month must be in 1..12) (and 9 more)" in text
    assert "\n" not in text and "network" not in text and "attempt" not in text
    assert sum(path.startswith("/search") for _, path in log) == 1  # asked once: a parse error is no outage
    assert isinstance(err.value, errors.MalformedItemError)
    assert not errors.is_transient(err.value)  # and Prefect's retry condition does not retry it either


def test_a_malformed_item_file_of_a_static_catalog_is_skipped_and_named(shared_data, tmp_path):
    """A static catalog one of whose item files has a datetime of "2017-13-45": that item skipped and named."""
    catalog = tmp_path / "s2_l2a_stac"
    shutil.copytree(shared_data / "s2_l2a_stac", catalog, ignore=shutil.ignore_patterns("*.tif", "*.xml"))
    path = catalog / "sentinel-2-l2a" / BAD_DATE / f"{BAD_DATE}.json"
    doc = json.loads(path.read_text())
    doc["properties"]["datetime"] = "2017-13-45"
    path.write_text(json.dumps(doc))
    config = CatalogConfig(path=catalog / "catalog.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = stac.search_items(config, bbox=BOTH_TILES, start=AUGUST[0], end=AUGUST[1])
    assert len(items) == 9 and BAD_DATE not in {it.id for it in items}
    assert _warned(caught) == [f"item {BAD_DATE}: datetime '2017-13-45' is not a date (month must be in 1..12); "
                               f"skipped (STAC catalog {config.path})"]


def test_a_search_slower_than_its_time_limit_stops_at_the_limit_naming_it(api):
    """A STAC API that holds its answer back 3 s under a 0.5 s limit: the search stops at ~0.5 s, named."""
    with counting_proxy(api, delay_s=3.0) as (url, _):
        t0 = time.monotonic()
        with time_limits.time_limit(0.5, what="search of block 32633_5_51", setting="CROPMAP_SEARCH_TIMEOUT_S"), \
                pytest.raises(errors.TimeLimitError) as err:
            _search(url, retries=3, backoff_s=0.05)
        elapsed = time.monotonic() - t0
    assert str(err.value).startswith("search of block 32633_5_51 ran past its time limit of 0.5 s "
                                     "(CROPMAP_SEARCH_TIMEOUT_S)")
    assert elapsed < 2.0  # the waiting request was cut at the limit, not left to the 3 s answer
    assert errors.is_transient(err.value)  # a slow catalog may answer on the task's retry


def test_time_limits_nest_and_stay_in_their_own_thread():
    """An inner limit that would outlast the outer one ends with it; another thread sees no limit."""
    seen: list[float | None] = []
    with time_limits.time_limit(0.05, what="tile A", setting="CROPMAP_CUBE_TIMEOUT_S"):
        with time_limits.time_limit(3600, what="search of block B", setting="CROPMAP_SEARCH_TIMEOUT_S"):
            assert time_limits.time_left() < 0.06
        worker = threading.Thread(target=lambda: seen.append(time_limits.time_left()))
        worker.start()
        worker.join()
        time.sleep(0.06)
        with pytest.raises(errors.TimeLimitError, match=r"^tile A ran past its time limit of 0\.05 s"):
            time_limits.check_time_limit()
    assert seen == [None] and time_limits.time_left() is None
    time_limits.check_time_limit()  # no limit any more: nothing to raise


def test_stac_api_requests_keep_to_the_polite_rate(api, monkeypatch):
    """A search against a public API sends at most $CROPMAP_STAC_REQUESTS_PER_SECOND requests a second."""
    monkeypatch.setenv("CROPMAP_STAC_REQUESTS_PER_SECOND", "4")
    times: list[float] = []
    with counting_proxy(api, times=times) as (url, _):
        assert len(_search(url)) == 10
    assert len(times) >= 2 and min(b - a for a, b in zip(times, times[1:])) >= 0.2


def test_the_flows_io_tasks_stop_at_their_limits_on_the_dask_task_runner_without_prefects_warning(
        prefect_server, demo_run, tmp_path, monkeypatch):
    """Search and cube tasks on the Dask task runner past their limits: they fail naming the block or
    tile and the setting, and Prefect logs no "cannot interrupt" warning (its own timeout, set on a
    control task, still does: the log is watched)."""
    from prefect import flow, task

    from cropmap.flows import tasks
    from cropmap.flows._runner import task_runner
    from cropmap.jobs import searches, tiles

    use_prefect_env(monkeypatch, {"PREFECT_API_URL": prefect_server[0]})
    monkeypatch.setenv("CROPMAP_SEARCH_TIMEOUT_S", "1e-9")
    monkeypatch.setenv("CROPMAP_CUBE_TIMEOUT_S", "1e-9")
    run = demo_run.model_copy(update={"root": str(tmp_path / "run")})  # no search or cube of the session's
    tile_id = run.tiles()[0]
    (block, ids), = list(searches.search_blocks([tile_id]).items())
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)

    @task(timeout_seconds=600)
    def control() -> str:
        return "ok"

    def outcome(future) -> str:
        try:
            return str(future.result())
        except Exception as err:  # noqa: BLE001 - the test compares the errors
            return f"{type(err).__name__}: {err}"

    @flow(task_runner=task_runner(threads=1))
    def limited() -> list[str]:
        io_tasks = tasks.executor().tasks
        return [outcome(io_tasks[searches.search_block].with_options(retries=0).submit(run, block, ids)),
                outcome(io_tasks[tiles.cube_tile].with_options(retries=0).submit(run, tile_id)),
                outcome(control.submit())]

    try:
        searched, cubed, controlled = limited()
    finally:
        logger.removeHandler(handler)
    assert searched.startswith(f"TimeLimitError: search of block {block} ran past its time limit of 1e-09 s "
                               "(CROPMAP_SEARCH_TIMEOUT_S)")
    assert cubed.startswith(f"TimeLimitError: tile {tile_id} ran past its time limit of 1e-09 s "
                            "(CROPMAP_CUBE_TIMEOUT_S)")
    assert controlled == "ok"
    interrupt = [r.getMessage() for r in records if "worker thread" in r.getMessage()]
    assert len(interrupt) == 1 and interrupt[0].startswith("Timeout of 600.0 seconds")  # the control task's only
    assert not (tmp_path / "run" / "searches").exists()  # nothing published by the stopped search
