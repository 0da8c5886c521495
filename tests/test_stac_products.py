"""The maps' STAC Item and Collection validate offline against the JSON Schemas of
../shared/data/stac_schemas (core, projection, raster, classification, file), and fail on an item with
a required field removed."""

from __future__ import annotations

import copy
import hashlib
import json

import pystac
import pytest
import zarr
from builders import predict_tiles, victoria_tiles

from cropmap.errors import DataNotFoundError, InvalidInputError
from cropmap.io.stac_validation import schema_file, validate_stac
from cropmap.stages.gis_styles import sidecars
from cropmap.stages.mosaic import mosaic_tiles
from cropmap.stages.predict import NODATA, PredictOptions
from cropmap.stages.stac_item import CLASSIFICATION_SCHEMA

SCENES = "https://earth-search.aws.element84.com/v1/collections/sentinel-2-l2a/items/"


@pytest.fixture(scope="module")
def stac_run(tiny_checkpoint, tmp_path_factory, shared_data):
    from test_gis_styles import ood_copy  # the tiny model with OOD statistics: all four products

    root = tmp_path_factory.mktemp("stac")
    model = ood_copy(tiny_checkpoint, root / "ood.pt")
    cubes, _ = victoria_tiles(root / "cubes", rows=1, cols=2, ny=10, nx=10, split="all")
    for k, cube in enumerate(cubes):  # as cropmap.stages.cube records them: the scenes' self hrefs
        zarr.open_group(str(cube), mode="r+").attrs["source_hrefs"] = [f"{SCENES}S2A_{k}", f"{SCENES}S2B_{k}"]
    predict_tiles(model, cubes, root / "tiles", options=PredictOptions(probabilities=True))
    return mosaic_tiles(root / "tiles", root / "maps", name="vic", blocksize=16), shared_data / "stac_schemas"


def test_item_and_collection_validate_offline(stac_run):
    result, schemas = stac_run
    used = validate_stac(result.stac_item, schemas)
    assert CLASSIFICATION_SCHEMA in used
    assert {"file", "projection", "raster", "classification"} <= {u.split("/")[3] for u in used}
    assert any("schemas.stacspec.org/v1.1.0/item-spec" in u for u in used)
    assert validate_stac(result.collection, schemas)
    item = pystac.Item.from_file(str(result.stac_item))
    assert item.collection_id == "vic"
    collection = pystac.Collection.from_file(str(result.collection))
    assert [link.href.rsplit("/", 1)[-1] for link in collection.get_item_links()] == ["vic.json"]
    assert collection.extent.spatial.bboxes[0] == item.bbox


def test_item_declares_files_nodata_sources_season_and_model(stac_run):
    result, _ = stac_run
    data = json.loads(result.stac_item.read_text())
    for key, asset in data["assets"].items():
        path = result.stac_item.parent / asset["href"]
        assert asset["file:size"] == path.stat().st_size, key
        assert asset["file:checksum"] == "1220" + hashlib.sha256(path.read_bytes()).hexdigest(), key
    assert "class_style" in data["assets"]
    classes = data["assets"]["class"]["classification:classes"]
    assert classes[-1] == {"value": NODATA, "description": "no data", "name": "nodata", "nodata": True}
    assert data["assets"]["class"]["raster:bands"][0]["nodata"] == NODATA
    derived = sorted(link["href"] for link in data["links"] if link["rel"] == "derived_from")
    assert derived == sorted(f"{SCENES}S2{s}_{k}" for s in "AB" for k in range(2))
    props = data["properties"]
    assert props["cropmap:model_name"] == "cropnet" and isinstance(props["cropmap:season"], dict) and props["cropmap:season"]
    assert props["cropmap:season_year"] and props["license"]


def test_every_sidecar_is_an_asset_with_its_role_and_the_probabilities_name_their_bands(stac_run):
    """A bare download of the item's assets holds every COG's .qml and .aux.xml (names, colours, units), each
    with its role and media type; the probability asset names its bands by class (raster bands, classes)."""
    result, schemas = stac_run
    data = json.loads(result.stac_item.read_text())
    assets = data["assets"]
    assert set(result.cogs) == {"class", "confidence", "probability", "ood"}
    by_href = {a["href"]: (key, a) for key, a in assets.items()}
    for product, cog in result.cogs.items():
        files = sidecars(cog)
        assert {f.suffix for f in files} == {".qml", ".xml"}, product
        for f in files:
            key, asset = by_href[f"./{f.name}"]
            assert key == f"{product}_{'style' if f.suffix == '.qml' else 'aux'}"
            assert "metadata" in asset["roles"] and asset["type"] in ("text/xml", "application/xml")
            assert ("style" in asset["roles"]) == (f.suffix == ".qml")
        assert assets[product]["roles"] == ["data"]
    listed = {a["href"][2:] for a in assets.values()}
    beside = {p.name for p in result.stac_item.parent.iterdir() if p.suffix in (".tif", ".qml", ".xml", ".png")}
    assert beside <= listed  # nothing of the map folder left out of the item
    prob = assets["probability"]
    names = [c["description"] for c in assets["class"]["classification:classes"] if not c.get("nodata")]
    bands = prob["raster:bands"]
    assert [b["name"] for b in bands] == [c["name"] for c in assets["class"]["classification:classes"][:-1]]
    assert [b["description"] for b in bands] == [f"probability of {n} (percent)" for n in names]
    assert {b["unit"] for b in bands} == {"percent"} and prob["classification:classes"][:len(names)] == \
        assets["class"]["classification:classes"][:len(names)]
    assert assets["ood"]["raster:bands"][0]["unit"] == "percent"
    validate_stac(result.stac_item, schemas)


@pytest.mark.parametrize("remove", ["geometry", "assets.class.href", "assets.class.classification:classes.0.value",
                                    "assets.class.file:size"])
def test_an_item_without_a_required_field_fails(stac_run, remove):
    result, schemas = stac_run
    data = copy.deepcopy(json.loads(result.stac_item.read_text()))
    *parents, last = remove.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if last == "file:size":
        node[last] = "large"  # a wrong type: the file extension's schema rejects it
    else:
        del node[int(last) if last.isdigit() else last]
    with pytest.raises(InvalidInputError, match="is invalid"):
        validate_stac(data, schemas)


def test_a_schema_out_of_reach_is_an_error_not_a_pass(stac_run):
    _, schemas = stac_run
    with pytest.raises(DataNotFoundError, match="mgrs"):
        schema_file("https://stac-extensions.github.io/mgrs/v1.0.0/schema.json", schemas)
    data = json.loads(stac_run[0].stac_item.read_text())
    data["stac_extensions"].append("https://stac-extensions.github.io/mgrs/v1.0.0/schema.json")
    with pytest.raises(Exception, match="mgrs"):
        validate_stac(data, schemas)
