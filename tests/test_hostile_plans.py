"""Plans bounded before they are built (issue 33): a tile size or outline that would plan millions of tiles
is refused from its area in one line, ``--tile-limit N`` makes only N tiles, and a GeoJSON outline across the
antimeridian plans the land on both sides of it, not the globe between."""

from __future__ import annotations

import json
import re
import resource
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from cropmap.cli import app  # imported here: its imports must not count against the bounds below
import cropmap.jobs.mapping, cropmap.jobs.plan, cropmap.jobs.reports, cropmap.jobs.tiles, cropmap.scenarios  # noqa: E401,F401,I001 - the commands import these lazily
from cropmap.errors import ConfigError
from cropmap.io.config import DEFAULT_CONFIGS_DIR, load_country
from cropmap.io.outlines import tiles_for_aoi


@contextmanager
def _bounded(seconds: float, megabytes: int) -> Iterator[None]:
    """Fail unless the block takes at most ``seconds`` of this process's CPU (not wall time: a loaded
    machine does not fail it) and allocates at most ``megabytes`` (Python and NumPy, traced). The address space is capped a GiB above its size, so that a plan built whole fails with a
    MemoryError instead of taking the machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = psutil.Process().memory_info().vms + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    tracemalloc.start()
    started = time.process_time()
    try:
        yield
    finally:
        elapsed = time.process_time() - started
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert elapsed < seconds, f"took {elapsed:.1f} CPU s"
    assert peak < megabytes, f"allocated {peak:.0f} MB"


@pytest.fixture
def fine_arg(tmp_path, monkeypatch) -> Path:
    """Argentina's real outline cut into 16 px tiles (~108 million), its static catalog missing."""
    folder = tmp_path / "configs"
    folder.mkdir()
    text = (DEFAULT_CONFIGS_DIR / "ARG.yaml").read_text()
    text = re.sub(r"(?m)^tile_size: .*$", "tile_size: 16", text)
    text = text.replace("url: https://earth-search.aws.element84.com/v1", f"path: {tmp_path / 'gone' / 'catalog.json'}")
    (folder / "ARG.yaml").write_text(re.sub(r"(?m)^  collection: .*\n", "", text))
    monkeypatch.setenv("CROPMAP_CONFIGS_DIR", str(folder))
    monkeypatch.setenv("CROPMAP_OUTPUT_DIR", str(tmp_path / "runs"))
    for name in ("CROPMAP_MAX_PLAN_TILES", "CROPMAP_MAX_TILES", "CROPMAP_MAX_DOLLARS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_a_tile_size_of_16_over_a_country_is_refused_from_its_area(fine_arg):
    """tile_size 16 on Argentina (~108 million tiles): one line naming the estimate, the limit and the setting."""
    with _bounded(seconds=5, megabytes=100):
        result = CliRunner().invoke(app, ["map", "ARG"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert re.search(r"ARG's outline plans about 108,\d{3},\d{3} tiles of 16 px, .*CROPMAP_MAX_PLAN_TILES=1,000,000"
                     r".*raise CROPMAP_MAX_PLAN_TILES", line), line


def test_a_tile_limit_of_one_on_a_huge_plan_makes_one_tile(fine_arg):
    """`cropmap map ARG --tile-limit 1` with 16 px tiles: one tile planned, the run reaches its catalog check."""
    with _bounded(seconds=5, megabytes=100):
        result = CliRunner().invoke(app, ["map", "ARG", "--tile-limit", "1"])
    assert result.exit_code == 2, result.output
    assert "cannot be read" in result.output and "nothing was computed" in result.output  # its catalog, after the plan
    with _bounded(seconds=5, megabytes=100):
        result = CliRunner().invoke(app, ["plan", "ARG", "--tile-limit", "1"])
    assert result.exit_code == 0, result.output
    assert "map ARG 2023: 1 tiles of 16 px in 1 UTM zone(s)" in result.output


def test_a_tile_limit_takes_the_first_tiles_of_the_whole_plan():
    """A tile limit makes the full plan's first tiles in its order, not others (Argentina, 1024 px)."""
    config = load_country("ARG", DEFAULT_CONFIGS_DIR)
    whole = [t.id for t in tiles_for_aoi(config)]
    assert [t.id for t in tiles_for_aoi(config, limit=700)] == whole[:700]


def test_the_plan_limit_is_a_setting(monkeypatch):
    """CROPMAP_MAX_PLAN_TILES=100 refuses Belgium's ~340 tiles, but not its first 50."""
    monkeypatch.setenv("CROPMAP_MAX_PLAN_TILES", "100")
    config = load_country("BEL", DEFAULT_CONFIGS_DIR)
    with pytest.raises(ConfigError, match=r"BEL's outline plans about 3\d\d tiles of 1024 px.*=100;") as refused:
        tiles_for_aoi(config)
    assert type(refused.value).__name__ == "PlanTooLargeError"
    assert len(tiles_for_aoi(config, limit=50)) == 50


def test_a_geojson_box_across_the_antimeridian_plans_fiji_not_the_globe(tmp_path):
    """A box round Taveuni written 179.8 -> -179.8: the tiles of its two halves, in UTM 60S and 1S only."""
    path = tmp_path / "taveuni.geojson"
    ring = [[179.8, -17.0], [-179.8, -17.0], [-179.8, -16.6], [179.8, -16.6], [179.8, -17.0]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}]}))
    tiles = tiles_for_aoi(path)
    halves = tiles_for_aoi((179.8, -17.0, 180.0, -16.6)) + tiles_for_aoi((-180.0, -17.0, -179.8, -16.6))
    assert {t.grid.epsg for t in tiles} == {32760, 32701}
    assert sorted(t.id for t in tiles) == sorted(t.id for t in halves)


def test_a_geojson_ring_round_a_pole_is_refused(tmp_path):
    """A ring whose longitudes go once round the globe (it encloses a pole): one line naming the file."""
    path = tmp_path / "pole.geojson"
    ring = [[0, -80], [100, -80], [-150, -80], [-50, -80], [0, -80]]
    path.write_text(json.dumps({"type": "Polygon", "coordinates": [ring]}))
    with pytest.raises(ConfigError, match=r"pole\.geojson: a ring goes round the globe .*split at the antimeridian"):
        tiles_for_aoi(path)
