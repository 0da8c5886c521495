"""The maps users take say what they were made from and under which terms: the national STAC item carries
its zones' model card, options, run key, tiles and source scenes and links the model's STAC MLM item; every
item, the quicklook and the model card carry a data licence for the map (CC-BY-4.0, not the software's
Apache-2.0) and the Copernicus Sentinel credit of the scenes' years; zones of different runs make no
national map. Items are validated offline against ../shared/data/stac_schemas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import zarr
from PIL import Image
from builders import EPSG, predict_tiles, victoria_tiles

from cropmap.errors import IncompatibleInputError
from cropmap.io.stac_validation import validate_stac
from cropmap.jobs.reports import map_lines
from cropmap.stages.model_item import write_mlm_item
from cropmap.stages.mosaic import mosaic_tiles
from cropmap.stages.national import national_mosaic
from cropmap.stages.predict import PredictOptions

SCENES = "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/"
#: the Victoria season of tests/test_predict.py: 2017-08-01 .. 2018-07-31
CREDIT = "Contains modified Copernicus Sentinel data 2017-2018"
LICENSE = "CC-BY-4.0"
LEGAL_NOTICE = "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice"
#: the model's STAC MLM item in a map folder (cropmap.stages.stac_item.MODEL_ITEM)
MODEL_ITEM = "model.mlm.json"


def _item(location) -> dict:
    return json.loads(Path(location).read_text())


def _predicted(root: Path, checkpoint: Path, **options) -> Path:
    """Two real Victoria tiles predicted (run file and all) in ``root/tiles``, their cubes naming two scenes each."""
    cubes, _ = victoria_tiles(root / "cubes", rows=1, cols=2, ny=10, nx=10, split="all")
    for k, cube in enumerate(cubes):  # as cropmap.stages.cube records them: the scenes' self hrefs
        zarr.open_group(str(cube), mode="r+").attrs["source_hrefs"] = [f"{SCENES}S2A_{k}", f"{SCENES}S2B_{k}"]
    predict_tiles(checkpoint, cubes, root / "tiles", options=PredictOptions(**options))
    return root / "tiles"


@pytest.fixture(scope="module")
def maps(tiny_checkpoint, tmp_path_factory, shared_data):
    """A zone mosaic of real tiles and its national map in another CRS, in one folder."""
    root = tmp_path_factory.mktemp("provenance")
    tiles = _predicted(root, tiny_checkpoint, probabilities=True)
    zone = mosaic_tiles(tiles, root / "maps", name=f"vic_{EPSG}", quicklook=False)
    national = national_mosaic({EPSG: zone.cogs}, root / "maps", name="vic", crs="EPSG:3577")
    return zone, national, shared_data / "stac_schemas"


def _zone_copy(zone, folder: Path, *, item: bool = True) -> dict[str, Path]:
    """The zone's COGs copied into ``folder`` (with its STAC item, or without)."""
    folder.mkdir(parents=True, exist_ok=True)
    if item:
        shutil.copy(zone.stac_item, folder)
    return {p: Path(shutil.copy(c, folder / Path(c).name)) for p, c in zone.cogs.items()}


def test_the_national_item_carries_its_zones_provenance(maps):
    """The national item, the one users take, lacked the model card, options, run key, tiles and scenes."""
    zone, national, schemas = maps
    item, zone_item = _item(national.stac_item), _item(zone.stac_item)
    for key in ("cropmap:model_card", "cropmap:options", "cropmap:run_key", "cropmap:tiles", "cropmap:source_items"):
        assert item["properties"].get(key) == zone_item["properties"][key] and zone_item["properties"][key], key
    derived = sorted(link["href"] for link in item["links"] if link["rel"] == "derived_from")
    assert derived == sorted(f"{SCENES}S2{s}_{k}" for s in "AB" for k in range(2))
    assert validate_stac(national.stac_item, schemas)


def test_the_national_item_links_the_models_mlm_item_beside_it(maps, tiny_checkpoint, tmp_path):
    """No item linked the model's STAC MLM item; beside the maps, it even broke their collection."""
    zone, _, schemas = maps
    cogs = _zone_copy(zone, tmp_path / "maps")
    write_mlm_item(tiny_checkpoint, tmp_path / "maps" / MODEL_ITEM)
    national = national_mosaic({EPSG: cogs}, tmp_path / "maps", name="vic", crs="EPSG:3577")
    item = _item(national.stac_item)
    models = [link for link in item["links"] if link["rel"] == "derived_from" and "mlm:name" in link]
    assert [(m["href"], m["mlm:name"]) for m in models] == [(f"./{MODEL_ITEM}", "cropnet")]
    assert any("/mlm/" in e for e in validate_stac(tmp_path / "maps" / MODEL_ITEM, schemas))
    assert validate_stac(national.stac_item, schemas)
    assert [link["href"] for link in _item(national.collection)["links"] if link["rel"] == "item"] == [
        "./vic.json", f"./vic_{EPSG}.json"]  # the model's MLM item is no map of the collection


def test_every_map_item_has_a_data_licence_and_the_copernicus_credit(maps):
    """The maps said "Apache-2.0" (a software licence) and credited the Copernicus Sentinel data nowhere."""
    zone, national, schemas = maps
    for location in (zone.stac_item, national.stac_item):
        item = _item(location)
        props = item["properties"]
        assert props["license"] == LICENSE
        assert props.get("cropmap:attribution") == CREDIT
        licensor = next(p for p in props.get("providers", []) if "licensor" in p["roles"])
        assert CREDIT in licensor["description"] and licensor["url"] == LEGAL_NOTICE
        licences = {link["href"] for link in item["links"] if link["rel"] == "license"}
        assert {LEGAL_NOTICE, "https://creativecommons.org/licenses/by/4.0/"} <= licences
        assert validate_stac(location, schemas)
    collection = _item(national.collection)
    assert collection["license"] == LICENSE and validate_stac(national.collection, schemas)


def test_the_quicklook_carries_the_credit_and_the_licence(maps):
    """The quicklook, shared alone, named neither the Copernicus source nor the map's licence."""
    _, national, _ = maps
    with Image.open(national.quicklook) as png:
        assert png.text.get("Copyright") == f"{CREDIT}; map licence {LICENSE}"


def test_zones_of_two_runs_make_no_national_map(maps, tiny_checkpoint, tmp_path):
    """Zone COGs predicted with other options (another run key) would be one map of two runs, under one key."""
    zone, _, _ = maps
    other = mosaic_tiles(_predicted(tmp_path, tiny_checkpoint, probabilities=False), tmp_path / "maps",
                         name="other", quicklook=False)
    with pytest.raises(IncompatibleInputError, match="different checkpoints or options") as err:
        national_mosaic({EPSG: zone.cogs, EPSG + 1: other.cogs}, tmp_path / "national", name="mixed", crs="EPSG:3577")
    assert len(str(err.value).splitlines()) == 1 and "mosaic the zones of one run" in str(err.value)
    assert not (tmp_path / "national").exists() or not list((tmp_path / "national").iterdir())


def test_a_zone_without_its_item_is_named_in_the_national_item(maps, tmp_path):
    """Zone COGs copied without their STAC item: the national item must not pass for knowing their provenance."""
    zone, _, _ = maps
    cogs = _zone_copy(zone, tmp_path / "zone", item=False)
    item = _item(national_mosaic({EPSG: cogs}, tmp_path / "out", name="bare", crs="EPSG:3577").stac_item)
    assert item["properties"].get("cropmap:provenance_unknown") == [f"EPSG:{EPSG}"]
    assert "cropmap:run_key" not in item["properties"]
    assert item["properties"].get("cropmap:attribution") == CREDIT  # the season, from the COG, still dates the scenes


def test_a_two_zone_run_links_its_model_and_credits_its_scenes_everywhere(two_zone_run, shared_data):
    """map_country's national map of two UTM zones: both zones' tiles, the model's MLM item, the card's credit."""
    run, result = two_zone_run
    item = _item(result.mosaic.stac_item)
    tiles = set(item["properties"].get("cropmap:tiles", []))
    assert {t.split("-")[0] for t in tiles} == {str(e) for e in result.zones}
    assert tiles >= {t for z in result.zones.values() for t in z.tile_ids}
    assert item["properties"].get("cropmap:run_key") and item["properties"].get("cropmap:model_card")
    models = [link for link in item["links"] if link["rel"] == "derived_from" and "mlm:name" in link]
    assert [m["href"] for m in models] == [f"./{MODEL_ITEM}"]
    model_item = Path(result.mosaic.stac_item).parent / MODEL_ITEM
    assert validate_stac(model_item, shared_data / "stac_schemas")
    assert _item(model_item)["assets"]["checkpoint"]["href"] == str(Path(result.model).resolve())
    assert validate_stac(result.mosaic.stac_item, shared_data / "stac_schemas")
    credit = item["properties"].get("cropmap:attribution", "")
    assert credit.startswith("Contains modified Copernicus Sentinel data 2017")
    assert f"data licence:        {credit}; map licence {LICENSE}" in map_lines(result)
    assert result.accuracy is not None  # scored (the east half): the model card is written beside the map
    card = (Path(result.mosaic.stac_item).parent / "model_card.md").read_text()
    assert "## Data licence" in card and "Contains modified Copernicus Sentinel data 2017" in card and LICENSE in card
