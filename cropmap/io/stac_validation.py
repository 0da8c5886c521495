"""Validate STAC JSON offline against local copies of the STAC JSON Schemas.

``pystac.Item.validate()`` downloads every schema from schemas.stacspec.org and
stac-extensions.github.io; :class:`OfflineValidator` reads them from a folder instead (the layout of
``../shared/data/stac_schemas``, see its README) and raises for a schema it does not hold: an object is
never reported valid because a schema was out of reach. Mapping of schema URIs to files:

- ``https://geojson.org/schema/{Feature,Geometry}.json``: the copies pystac ships;
- ``https://schemas.stacspec.org/v1.0.0/<path>`` -> ``core-v1.0.0/<path>``;
- ``https://schemas.stacspec.org/v1.1.0/<path>`` -> ``core-v1.1.0-beta.1/<path>`` (the newest core in
  reach; 1.1.0 final differs little), its ``stac_version`` constant read as ``1.1.0``, and
  ``v1.1.0-beta.1`` to the same files as they are;
- ``https://stac-extensions.github.io/<name>/v<version>/schema.json`` -> ``<name>-v<version>.json``;
  ``processing/v1.0.0`` -> ``processing-v1.1.0.json`` (the file whose ``$id`` says v1.0.0).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pystac
from pystac.validation import JsonSchemaSTACValidator, validate_dict

from cropmap.errors import DataNotFoundError, InvalidInputError

__all__ = ["OfflineValidator", "schema_file", "validate_stac", "default_schema_dir"]

_CORE = re.compile(r"^https?://schemas\.stacspec\.org/v(?P<version>[0-9][^/]*)/(?P<path>.+?)#?$")
_EXTENSION = re.compile(r"^https?://stac-extensions\.github\.io/(?P<name>[^/]+)/v(?P<version>[^/]+)/schema\.json#?$")
_CORE_FOLDERS = {"1.0.0": "core-v1.0.0", "1.1.0": "core-v1.1.0-beta.1", "1.1.0-beta.1": "core-v1.1.0-beta.1"}
_EXTENSION_FILES = {("processing", "1.0.0"): "processing-v1.1.0.json"}


def default_schema_dir() -> Path:
    """``<data dir>/stac_schemas`` (``../shared/data`` or ``$CROPMAP_DATA_DIR``)."""
    from cropmap.io.data import data_dir

    return data_dir() / "stac_schemas"


def schema_file(uri: str, schema_dir: Path) -> Path:
    """The local file standing for the schema ``uri``; raises :class:`DataNotFoundError` when the
    folder has none (no remote fetch, no silent pass)."""
    core, ext = _CORE.match(uri), _EXTENSION.match(uri)
    if core and core["version"] in _CORE_FOLDERS:
        path = schema_dir / _CORE_FOLDERS[core["version"]] / core["path"]
    elif ext:
        name = _EXTENSION_FILES.get((ext["name"], ext["version"]), f"{ext['name']}-v{ext['version']}.json")
        path = schema_dir / name
    else:
        raise DataNotFoundError(f"no local copy of STAC schema {uri} in {schema_dir} (only stacspec.org core "
                                "and stac-extensions.github.io schemas are mapped)")
    if not path.is_file():
        raise DataNotFoundError(f"STAC schema {uri} is not in {schema_dir} (looked for {path.name})")
    return path


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator reading every schema (and every ``$ref`` it follows) from
    ``schema_dir`` through :func:`schema_file`."""

    def __init__(self, schema_dir: str | Path | None = None) -> None:
        super().__init__()
        self.schema_dir = Path(schema_dir) if schema_dir is not None else default_schema_dir()
        # GeoJSON Feature/Geometry (referenced by the core item schema) from the copies pystac ships;
        # STAC core and extensions only from the folder
        self.schema_cache = {k: v for k, v in self.schema_cache.items() if k.startswith("https://geojson.org/")}

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        key = schema_uri.rstrip("#")
        if key not in self.schema_cache:
            text = schema_file(key, self.schema_dir).read_text()
            if "schemas.stacspec.org/v1.1.0/" in key:  # a 1.1.0 object checked by the beta schema
                text = text.replace('"const": "1.1.0-beta.1"', '"const": "1.1.0"')
            schema = json.loads(text)
            schema["$id"] = key  # refs resolve against the URI asked for (one file's $id has a typo)
            self.schema_cache[key] = schema
        return self.schema_cache[key]


def validate_stac(obj: pystac.STACObject | dict | str | Path, schema_dir: str | Path | None = None) -> list[str]:
    """Validate a STAC Item/Collection/Catalog (object, dict or JSON file) against its core schema and
    every extension it declares; returns the schema URIs used. Raises :class:`InvalidInputError`
    with the first (best) validation error in one line."""
    if isinstance(obj, (str, Path)):
        data = json.loads(Path(obj).read_text())
    elif isinstance(obj, dict):
        data = obj
    else:
        data = obj.to_dict(include_self_link=False)
    log = logging.getLogger("pystac.validation.stac_validator")
    level = log.level
    log.setLevel(logging.CRITICAL)  # pystac logs every failure with a traceback; the error below says it
    try:
        return validate_dict(data, validator=OfflineValidator(schema_dir))
    except pystac.STACValidationError as err:
        first = str(err).splitlines()
        raise InvalidInputError(f"STAC {data.get('type', '')} {data.get('id', '?')} is invalid: "
                                + " ".join(line.strip() for line in first[1:2] or first[:1])
                                + f" ({first[0].split('against schema at ')[-1]})") from err
    finally:
        log.setLevel(level)
