"""transfer: train-model on a labelled source country, then map-country on a target with that checkpoint.

Wiring only: the two flows run as subflows, one after the other, exactly as a user runs them by hand
(``prefect deployment run train-model/train-model --param country=TSRC``, then
``prefect deployment run map-country/map-country --param country=TTGT --param model=<its checkpoint>``).
The default pair is the offline TRANSFER scenario (``configs/countries/TSRC.yaml``, ``TTGT.yaml``): real
Victoria spectra, the source in the northern May-Nov season, the target in the south across two UTM zones
with a 15-day phenology shift; the target's map is scored against a reference training never saw.

    cropmap transfer [--source TSRC] [--target TTGT] [--augment all|none|...] [--out DIR] [--training '{"seed": 1}']
"""

from __future__ import annotations

from prefect import flow

from cropmap.flows.map_country import map_country
from cropmap.flows.train_model import train_model

__all__ = ["transfer"]

#: The offline TRANSFER scenario's source and target countries.
SOURCE, TARGET = "TSRC", "TTGT"


@flow(name="transfer", log_prints=True)
def transfer(source: str = SOURCE, target: str = TARGET, augment: str | None = None,
             out_dir: str | None = None, training: dict | None = None) -> dict:
    """Train on a source country's scenario labels, then map a target country with that checkpoint.

    Args:
        source: The country trained on (its scenario's labels and settings).
        target: The country mapped with the source's checkpoint (and scored when its scenario holds a
            reference back).
        augment: The phenology augmentation, e.g. none or all (default: the scenario's).
        out_dir: Output root, a folder or an fsspec URL; default $CROPMAP_OUTPUT_URL, else $CROPMAP_OUTPUT_DIR.
        training: Other TrainingSettings fields, e.g. {"seed": 1, "epochs": 10}.

    Returns:
        map-country's result with source added.
    """
    overrides = {**(training or {}), **({"augment": augment} if augment is not None else {})}
    checkpoint = train_model(country=source, out_dir=out_dir, training=overrides or None)
    result = map_country(country=target, model=checkpoint, out_dir=out_dir)
    return {**result, "source": source, "target": target}

