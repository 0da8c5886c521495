"""Checkpoint + one tile cube -> the tile's class, confidence (and probability, OOD) GeoTIFFs.

The entry point of one tile's prediction (many tiles are fanned out by :mod:`cropmap.jobs.tiles`, which
checks every cube against the checkpoint first). :func:`write_tile_predictions` is wiring only, each job in its
own module, whose public names this module re-exports:

- :mod:`cropmap.stages.model_ref`: :class:`ModelRef`, the checkpoint resolved once for a run
  (:func:`resolve_model`: location, prediction key, bands, season, bins, classes), what every tile receives;

- :mod:`cropmap.stages.predict_options`: :class:`PredictOptions`, the ``predict`` section of a config;
- :mod:`cropmap.stages.predict_inputs`: the cube store opened (:func:`open_cube`) and checked against the
  checkpoint (:func:`check_cube`: bands, season, bins), metadata only;
- :mod:`cropmap.stages.inference`: :func:`infer_cube`, one composite cube in memory -> an
  :class:`xarray.Dataset` of uint8 maps ``(y, x)`` (nodata :data:`NODATA`), features exactly as in training;
- :mod:`cropmap.stages.predict_provenance`: the checkpoint loaded once per process (:func:`load_model`),
  the prediction key (:func:`prediction_key`), ``run.json`` (:func:`write_run_file`, :data:`RUN_FILE`);
- :mod:`cropmap.stages.tile_geotiffs`: the tile's files (:func:`tile_path`, :data:`PRODUCTS`), written and
  published whole; a finished tile (same checkpoint and options) is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import rioxarray  # noqa: F401 - registers the .rio accessor (CRS and transform of the cube)

from cropmap.core.season import Season
from cropmap.errors import EmptyMapError, IncompatibleInputError
from cropmap.io import outputs, storage
from cropmap.stages.inference import NODATA, empty_map_reason, infer_cube
from cropmap.stages.model_ref import ModelRef, resolve_model
from cropmap.stages.predict_inputs import check_cube, open_cube
from cropmap.stages.predict_options import PredictOptions
from cropmap.stages.predict_provenance import RUN_FILE, load_model, prediction_key, write_run_file
from cropmap.stages.tile_geotiffs import (
    PRODUCT_VARIABLE,
    PRODUCTS,
    tile_is_finished,
    tile_path,
    tile_products,
    write_tile_geotiff,
)

__all__ = [
    "NODATA",
    "PRODUCTS",
    "PredictOptions",
    "ModelRef",
    "resolve_model",
    "TileResult",
    "open_cube",
    "check_cube",
    "infer_cube",
    "write_tile_predictions",
    "load_model",
    "tile_path",
    "prediction_key",
    "write_run_file",
    "RUN_FILE",
]


@dataclass(frozen=True)
class TileResult:
    """What :func:`write_tile_predictions` did: ``status`` is ``"done"`` (computed now) or ``"skipped"``."""

    tile_id: str
    status: Literal["done", "skipped"]
    paths: dict[str, storage.Location]


def write_tile_predictions(
    model: ModelRef,
    cube_path: storage.Location,
    out_dir: storage.Location,
    *,
    force: bool = False,
) -> TileResult:
    """Predict one tile cube with the resolved ``model`` (:func:`resolve_model`: its key and options are
    taken from it, not derived again) and write ``<tile_id>.{class,confidence[,probability]}.tif`` in
    ``out_dir``. Both locations are local paths or fsspec URLs (:mod:`cropmap.io.storage`); the weights are
    loaded once per process (:func:`load_model`), and only when the tile is computed.

    GeoTIFFs on the cube's grid (CRS and transform from the cube), uint8, nodata 255, DEFLATE.
    The class map carries a colour table and the class names (band tags ``class_names`` as JSON and
    ``class_<i>``) and is written last, so its presence with this run's key means the tile is
    complete; such a tile is skipped unless ``force``. A map whose every pixel would be nodata (an empty
    cube, too few observed bins) is not written: :class:`~cropmap.errors.EmptyMapError` says why, and
    the next run tries the tile again.
    """
    out_dir = storage.as_location(out_dir)
    cube = open_cube(cube_path, stored=True)  # decoded on the device (stages.inference)
    tile_id = storage.safe_name(cube.attrs.get("tile_id", ""), "tile id")  # it names the outputs
    options, key = model.output_options, model.key
    paths = {p: tile_path(out_dir, tile_id, p) for p in tile_products(options)}
    if not force and tile_is_finished(out_dir, tile_id, options, key):
        return TileResult(tile_id, "skipped", paths)
    checkpoint = load_model(model.location)
    offset = check_cube(checkpoint, cube, what=f"tile {tile_id}")
    maps = infer_cube(checkpoint, cube, options=options)
    if not (maps["label"].values != NODATA).any():  # never a "done" tile without a mapped pixel
        raise EmptyMapError(empty_map_reason(tile_id, cube, options))
    crs, transform = cube.rio.crs, cube.rio.transform(recalc=True)
    if crs is None:
        raise IncompatibleInputError(f"tile {tile_id}: the cube has no CRS; write it with rioxarray")
    source_items = cube.attrs.get("source_items", cube.attrs.get("source_item_ids", []))
    source_items = [source_items] if isinstance(source_items, str) else [str(s) for s in source_items]
    tags = {
        "tile_id": tile_id,
        "cropmap_run_key": key,
        "model_name": checkpoint.model_name,
        "class_names": json.dumps(list(checkpoint.class_names)),
        # what the map depicts (the cube's season), the model's, and the months between them
        "season": json.dumps(Season.from_attrs(cube.attrs).model_dump()),
        "season_year": str(cube.attrs.get("season_year", "")),
        "model_season": json.dumps(checkpoint.season.model_dump()),
        "model_season_year": "" if checkpoint.year is None else str(checkpoint.year),  # training year ("": none)
        "season_offset_months": str(offset),
        "source_items": json.dumps(source_items),
    }
    hrefs = cube.attrs.get("source_hrefs", [])
    hrefs = [hrefs] if isinstance(hrefs, str) else [str(h) for h in hrefs]
    if any(hrefs):  # the scenes' STAC items, for the map item's derived_from links
        tags["source_hrefs"] = json.dumps(sorted({h for h in hrefs if h}))
    for product in [p for p in paths if p != "class"] + ["class"]:
        data = maps[PRODUCT_VARIABLE[product]].values
        write_tile_geotiff(paths[product], data if data.ndim == 3 else data[None], crs=crs, transform=transform,
                           tags=tags, product=product, checkpoint=checkpoint)
    # temporaries of this tile left by a killed run were removed when each product was written
    # (cropmap.io.outputs.atomic_path: only those of dead processes, never a concurrent run's)
    return TileResult(tile_id, "done", paths)

