"""Country configs: the shipped YAML files validate, bad codes and bad files fail clearly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cropmap.core.season import Season
from cropmap.errors import ConfigError, UnknownCountryError
from cropmap.io.config import (
    CatalogConfig,
    CountryConfig,
    OutlineConfig,
    known_countries,
    load_country,
)

SHIPPED = ["ARG", "AUS", "BEL", "CHN", "FRA", "USA"]


def test_shipped_configs_validate():
    assert set(SHIPPED) <= set(known_countries())
    for code in SHIPPED:
        cfg = load_country(code)
        assert cfg.code == code and cfg.season.hemisphere == cfg.hemisphere
        assert cfg.catalog.url.startswith("https://earth-search") and cfg.catalog.collection == "sentinel-2-l2a"
        assert cfg.outline.natural_earth == cfg.name
    arg, usa = load_country("ARG"), load_country("USA")
    assert arg.season == Season.for_hemisphere("south") and arg.season.wraps_year
    assert usa.season == Season.for_hemisphere("north") and usa.tile_size == 1024


@pytest.mark.parametrize("code", ["../x", "", "arg", "ZZZ", "ABCDE", "US", "../../etc/passwd", "BEL "])
def test_unknown_or_malformed_code_lists_known_countries(code):
    with pytest.raises(UnknownCountryError, match="known: ") as err:
        load_country(code)
    assert all(c in str(err.value) for c in SHIPPED) and repr(code) in str(err.value)


def test_unknown_country_error_is_a_cropmap_config_error():
    with pytest.raises(ConfigError):
        load_country("XYZ")


def test_bad_files_name_the_file_and_field(tmp_path):
    shutil.copy(load_country.__globals__["DEFAULT_CONFIGS_DIR"] / "BEL.yaml", tmp_path / "BEL.yaml")
    assert load_country("BEL", configs_dir=tmp_path).name == "Belgium"
    text = (tmp_path / "BEL.yaml").read_text()
    (tmp_path / "NLD.yaml").write_text(text.replace("code: BEL", "code: NLD").replace("tile_size: 1024", "tile_size: 3"))
    with pytest.raises(ConfigError, match=r"(?s)NLD\.yaml.*tile_size"):
        load_country("NLD", configs_dir=tmp_path)
    (tmp_path / "LUX.yaml").write_text(text.replace("code: BEL", "code: LUX").replace("hemisphere: north\n", "hemisphere: south\n", 1))
    with pytest.raises(ConfigError, match="hemisphere"):
        load_country("LUX", configs_dir=tmp_path)
    (tmp_path / "DEU.yaml").write_text(text)  # code inside does not match the file name
    with pytest.raises(ConfigError, match="does not match"):
        load_country("DEU", configs_dir=tmp_path)
    (tmp_path / "ESP.yaml").write_text("code: [unclosed")
    with pytest.raises(ConfigError, match="ESP.yaml: not valid YAML"):
        load_country("ESP", configs_dir=tmp_path)


def test_outline_needs_exactly_one_source_and_paths_are_relative_to_config(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        OutlineConfig(natural_earth="Belgium", bbox=(2.5, 49.5, 6.4, 51.5))
    with pytest.raises(ValueError, match="west < east"):
        OutlineConfig(bbox=(6.4, 49.5, 2.5, 51.5))
    (tmp_path / "area.geojson").write_text('{"type": "Polygon", "coordinates": [[[4,50],[5,50],[5,51],[4,50]]]}')
    (tmp_path / "ABCD.yaml").write_text(
        "name: A region\noutline: {geojson: area.geojson}\nhemisphere: north\n"
        "season: {start: '05-01', end: '11-30'}\nyear: 2022\ncatalog: {path: stac/catalog.json}\n")
    cfg = load_country("ABCD", configs_dir=tmp_path)
    assert cfg.outline.geojson == tmp_path / "area.geojson"
    assert cfg.catalog.path == tmp_path / "stac/catalog.json" and cfg.catalog.url is None
    home = tmp_path / "ABCD.yaml"
    home.write_text(home.read_text().replace("stac/catalog.json", "~/x/catalog.json"))
    assert str(load_country("ABCD", configs_dir=tmp_path).catalog.path).startswith(str(Path.home()))


def test_catalog_needs_a_source():
    with pytest.raises(ValueError, match="url"):
        CatalogConfig(url=None)
    with pytest.raises(ValueError):
        CountryConfig(code="BEL", name="x", outline=OutlineConfig(bbox=(4, 50, 5, 51)), hemisphere="north",
                      season=Season(), year=2022, unknown_field=1)


def test_settings_follow_the_environment_and_are_parsed_once_per_state(monkeypatch):
    from cropmap.settings import get_settings

    monkeypatch.setenv("CROPMAP_TILES_IN_FLIGHT", "3")
    first = get_settings()
    assert first.tiles_in_flight == 3 and get_settings() is first  # a tile's reader asks per asset
    monkeypatch.setenv("CROPMAP_TILES_IN_FLIGHT", "5")
    assert get_settings().tiles_in_flight == 5
    monkeypatch.delenv("CROPMAP_TILES_IN_FLIGHT")
    assert get_settings().tiles_in_flight == 2
    monkeypatch.setenv("CROPMAP_TILES_IN_FLIGHT", "3")
    assert get_settings() is first
