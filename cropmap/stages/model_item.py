"""A STAC Item with the Machine Learning Model (MLM) extension describing a checkpoint and its ONNX
export (pystac's :mod:`pystac.extensions.mlm`, declared as MLM v1.5.2: pystac writes v1.4.0, whose
schema is not in reach; the fields used here are the same in both)."""

from __future__ import annotations

import json
from pathlib import Path

import pystac
from pystac.extensions.classification import Classification
from pystac.extensions.mlm import (
    AssetDetailedMLMExtension,
    InputStructure,
    ItemMLMExtension,
    ModelInput,
    ModelOutput,
    ResultStructure,
    TaskType,
)

from cropmap import __version__
from cropmap.io.outputs import atomic_path
from cropmap.ml.checkpoint import load_checkpoint
from cropmap.stages.stac_item import multihash_sha256

__all__ = ["MLM_SCHEMA", "write_mlm_item"]

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"


def write_mlm_item(checkpoint: str | Path, path: str | Path, *, onnx: str | Path | None = None,
                   checkpoint_href: str | None = None) -> Path:
    """Write ``path`` (JSON): the model (architecture, parameters, framework), its input (bands x time
    bins of reflectance 0..1, shape ``(-1, band, time)``), its output (class probabilities calibrated with
    the checkpoint's temperature, also ``cropmap:temperature``; the classes with their colours), the
    checkpoint and ONNX files as ``mlm:model`` assets with size and checksum, the training season as
    the item's datetimes, and the model card under ``cropmap:model_card``.
    Geometry: the training extent's box when the card records one, else null. ``checkpoint_href``: where
    the checkpoint asset points when the file is not beside ``path`` (a URL ``checkpoint`` is a local copy of),
    default the file's absolute path."""
    import torch

    ckpt = load_checkpoint(checkpoint)
    card = ckpt.card
    bounds = (card.get("training_data") or {}).get("bounds_lonlat")
    geometry = None if not bounds else {"type": "Polygon", "coordinates": [[
        [bounds[0], bounds[1]], [bounds[2], bounds[1]], [bounds[2], bounds[3]], [bounds[0], bounds[3]],
        [bounds[0], bounds[1]]]]}
    years = (card.get("training_data") or {}).get("years") or [2000]
    first, last = ckpt.season.window(min(years))[0], ckpt.season.window(max(years))[1]
    item = pystac.Item(id=Path(checkpoint).stem, geometry=geometry, bbox=bounds, datetime=None,
                       start_datetime=pystac.utils.str_to_datetime(f"{first.isoformat()}T00:00:00Z"),
                       end_datetime=pystac.utils.str_to_datetime(f"{last.isoformat()}T23:59:59Z"),
                       properties={"cropmap:model_card": card, "cropmap:software_version": __version__,
                                   "cropmap:temperature": ckpt.temperature,
                                   "description": card.get("intended_use", "")})
    n_bands, n_classes = len(ckpt.bands), len(ckpt.class_names)
    model_input = ModelInput.create(
        name="reflectance time series", bands=list(ckpt.bands),
        input=InputStructure.create(shape=[-1, n_bands, ckpt.n_bins], dim_order=["batch", "bands", "time"],
                                    data_type="float32"),
        description=f"Sentinel-2 L2A surface reflectance 0..1, {ckpt.n_bins} median bins of the season; "
                    "normalisation (log1p, per-band standardisation) inside the ONNX graph")
    colours = ckpt.class_colours or [None] * n_classes
    classes = [Classification.create(value=i, description=n, name=n.replace(" ", "_"),
                                     color_hint=None if c is None else c.lstrip("#").upper())
               for i, (n, c) in enumerate(zip(ckpt.class_names, colours))]
    output = ModelOutput.create(name="probabilities", tasks=[TaskType.CLASSIFICATION],
                                result=ResultStructure.create(shape=[-1, n_classes], dim_order=["batch", "class"],
                                                              data_type="float32"),
                                classes=classes,
                                description=f"calibrated class probabilities (sum 1): softmax(logits / T) with the "
                                            f"checkpoint's temperature T = {ckpt.temperature:g}, as in the maps "
                                            "(inside the ONNX graph)")
    ItemMLMExtension.ext(item, add_if_missing=True).apply(
        name=ckpt.model_name, architecture=ckpt.model_name, tasks=[TaskType.CLASSIFICATION], input=[model_input],
        output=[output], framework="pytorch", framework_version=torch.__version__.split("+")[0],
        total_parameters=sum(p.numel() for p in ckpt.model.parameters()), pretrained=False, accelerator="amd64",
        accelerator_constrained=False)
    files = [("checkpoint", Path(checkpoint), "application/octet-stream", "torch.save", "pytorch checkpoint")]
    if onnx is not None:
        files.append(("onnx", Path(onnx), "application/octet-stream; application=onnx", "onnx", "ONNX model"))
    for key, file, media, artifact, title in files:
        elsewhere = checkpoint_href if key == "checkpoint" and checkpoint_href else str(file.resolve())
        asset = pystac.Asset(href=f"./{file.name}" if file.parent == Path(path).parent else elsewhere,
                             media_type=media, roles=["mlm:model", "mlm:weights"], title=title)
        item.add_asset(key, asset)
        AssetDetailedMLMExtension.ext(asset, add_if_missing=True).artifact_type = artifact
        asset.extra_fields.update({"file:size": file.stat().st_size, "file:checksum": multihash_sha256(file)})
    data = item.to_dict(include_self_link=False)
    for key, _, _, _, _ in files:  # the band names mlm:input refers to (raster bands: MLM asks for names)
        data["assets"][key]["raster:bands"] = [{"name": b, "data_type": "float32"} for b in ckpt.bands]
    data["stac_extensions"] = sorted({MLM_SCHEMA if "/mlm/" in e else e for e in data["stac_extensions"]}
                                     | {FILE_SCHEMA, RASTER_SCHEMA})
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path
