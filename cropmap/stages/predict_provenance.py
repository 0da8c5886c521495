"""What a prediction was made from: the checkpoint (:func:`load_model`, cached), the prediction key
(:func:`prediction_key`) and the run's provenance file (:func:`write_run_file`, :data:`RUN_FILE`).
A run computes the key once, when its model is resolved (:func:`cropmap.stages.model_ref.resolve_model`).

The key is a hash of the checkpoint's bytes and of the options that change the written pixels
(:meth:`~cropmap.stages.predict_options.PredictOptions.output_key`): it names the run's tile folder
(``<run>/tiles/<key>/``), is a tag of every tile GeoTIFF (a tile whose class map has another key is
redone) and is recorded in ``run.json``, which the mosaic's STAC item reports.

Caches, per process: the checkpoint once per file version (``lru_cache`` of 2, keyed by path and mtime),
its SHA-256 once per path, size and mtime (8); a checkpoint in an object store is downloaded once per
machine and version (:func:`cropmap.io.downloads.local_copy`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cropmap import __version__
from cropmap.errors import DataNotFoundError
from cropmap.io import downloads, outputs, storage
from cropmap.io.storage import stable_hash
from cropmap.ml.checkpoint import Checkpoint, card_path, load_checkpoint
from cropmap.stages.predict_options import PredictOptions

if TYPE_CHECKING:
    from cropmap.stages.model_ref import ModelRef

__all__ = ["RUN_FILE", "load_model", "prediction_key", "write_run_file", "read_run_file"]

#: File with the run's provenance (checkpoint, model card, options), written beside the tiles.
RUN_FILE = "run.json"


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def prediction_key(checkpoint_path: storage.Location, options: PredictOptions) -> str:
    """Hash of the checkpoint's bytes and the output options (``ood`` decided for the checkpoint): a tile
    written under another key is redone. The checkpoint is loaded only to decide an unset ``ood``."""
    if options.ood is None:
        options = options.for_checkpoint(load_model(checkpoint_path))
    local = downloads.local_copy(checkpoint_path).resolve()
    st = local.stat()
    return stable_hash({"checkpoint": _file_sha256(str(local), st.st_size, st.st_mtime_ns),
                        "options": options.output_key()})


@functools.lru_cache(maxsize=2)
def _cached_checkpoint(path: str, mtime_ns: int):
    # one load per worker process and checkpoint version, not one per tile
    return load_checkpoint(path)


def load_model(path: storage.Location) -> Checkpoint:
    """The checkpoint at ``path`` (a file or URL), loaded once per process and version of the file."""
    try:  # a checkpoint in an object store is downloaded once per machine and version
        local = downloads.local_copy(path).resolve()
    except DataNotFoundError as err:
        raise DataNotFoundError(f"checkpoint {storage.canonical(path)} not found") from err
    return _cached_checkpoint(str(local), local.stat().st_mtime_ns)


def _card_of(location: str) -> dict:
    """The model card beside the checkpoint, else the checkpoint's name, scores and config."""
    card = card_path(location)
    if storage.exists(card):
        return json.loads(storage.read_bytes(card))
    ckpt = load_model(location)
    return {"model_name": ckpt.model_name, "scores": ckpt.scores, "config": ckpt.config}


def write_run_file(model: ModelRef, out_dir: storage.Location, *,
                   cube_paths: Sequence[storage.Location] = ()) -> storage.Location:
    """``<out_dir>/run.json``: the provenance the mosaic's STAC item reports, from the resolved ``model``
    (its location, key, classes and options as given; no timestamps: reruns write the same bytes)."""
    record = {
        "checkpoint": model.location,
        "run_key": model.key,
        "model_card": _card_of(model.location),
        "class_names": list(model.class_names),
        "class_colours": None if model.class_colours is None else list(model.class_colours),
        "options": model.options.model_dump(),
        "cubes": sorted(storage.canonical(p) for p in cube_paths),
        "software_version": __version__,
    }
    return outputs.write_text(storage.join(out_dir, RUN_FILE), json.dumps(record, indent=2, sort_keys=True))


def read_run_file(tile_dir: str | Path | None) -> dict | None:
    """The ``run.json`` of :func:`write_run_file` in the local folder ``tile_dir``; None when there is none."""
    path = Path(tile_dir) / RUN_FILE if tile_dir is not None else None
    return json.loads(path.read_text()) if path is not None and path.exists() else None
