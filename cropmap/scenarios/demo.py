"""The offline DEMO country: a small Sentinel-2-like L2A static STAC catalog built from REAL spectra.

The LAYOUT is synthetic; the SPECTRA are real. A square area near Horsham (Victoria, Australia; UTM zone
54 south, EPSG:32754, 10 m pixels) is cut into rectangular fields of a few hectares. Each field gets one
class of the Victoria data set (``victoria_s2``: bare ground, canola, cereals, legumes, forest, grassland,
water, urban) and ONE real pixel time series of that class, read with
:func:`cropmap.samples.victoria.read_victoria`; every pixel of the field carries that series plus small Gaussian
noise. The WEST half of the area uses series of the Victoria *train* split (it serves for training), the
EAST half series of the *test* split (it is only mapped and scored), so a model trained on the west and
scored on the east sees the same split as the Victoria experiment.

Scenes are written every 5 days (the dates of the Victoria series: 2017-08-01 + 5 k) over the southern
season window of season year 2017 (:data:`cropmap.core.season.SOUTH`, 1 Nov 2017 - 31 May 2018) plus a
margin. Clouds are injected as smooth blobs on some dates (one date fully overcast), with brightened
reflectance, SCL 8/9 and a displaced cloud shadow (SCL 3, darkened); clear pixels get SCL 4 (vegetation,
NDVI > 0.35), 5 (not vegetated) or 6 (water). One date has a strip of no data (0) at the scene edge.

What it writes (folder from ``$CROPMAP_DEMO_DIR``, default ``~/.cache/cropmap/demo``)::

    catalog.json                      STAC catalog (relative links)
    sentinel-2-l2a/collection.json    collection, one item per date covering the whole area
    sentinel-2-l2a/<id>/<id>.json     item like Earth Search v1 (proj:epsg AND proj:code, raster:bands,
                                      eo:bands, eo:cloud_cover)
    sentinel-2-l2a/<id>/<key>.tif     uint16 COGs: blue green red rededge1 rededge2 rededge3 nir nir08
                                      swir16 swir22 (reflectance x 10000, nodata 0) and scl
    reference.tif                     reference crop map, uint8 class ids (Victoria order), 255 = nodata,
                                      colour table, band tags class_<id> = name
    demo.json                         the layout: grid, tiles, dates, classes, fields, cloudy dates

The build is deterministic (same spec, same bytes of data) and is skipped when the folder is complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cropmap.errors import ConfigError
from cropmap.io.config import CountryConfig, load_country
from cropmap.io.outputs import atomic_path
from cropmap.jobs.country_run import Scenario
from cropmap.jobs.training import TrainingSettings
from cropmap.scenarios.demo_scenes import (
    EARTH_SEARCH_KEYS,
    LAYOUT_FILE,
    DemoSpec,
    write_demo,
)
from cropmap.settings import get_settings
from cropmap.io import outputs

__all__ = ["COUNTRY", "DemoSpec", "DemoPaths", "EARTH_SEARCH_KEYS", "DEMO_TRAINING", "build_demo", "default_demo_dir",
           "demo_country", "PARTS", "part_bounds", "read_layout", "prepare"]

#: CPU-sized training settings of the DEMO: a few hundred samples (one per 0.0005 degree cell and class,
#: 60 m eroded), 30 epochs, all three phenology augmentations (the west half holds only ~68 distinct
#: series: augmentation is what keeps the net from memorising them; see docs/demo.md) and a SLIM CropNet
#: (32-64 channels, stride 2: ~0.1M parameters, not the paper's 4.7M) so that training takes well under a
#: minute on 2 shared cores; a constant rate, 20 % held out and the best-validation epoch kept, the settings
#: its documented figures were measured with. A real country trains CropNet v1 with the TrainingSettings defaults.
#: The country config of the DEMO scenario (``configs/countries/DEMO.yaml``).
COUNTRY = "DEMO"

DEMO_TRAINING = TrainingSettings(
    cell_deg=0.0005, per_cell=1, epochs=30, lr=1e-3, schedule="constant", batch_size=64, augment="all",
    val_fraction=0.2, epoch_choice="best",
    model_options={"channels": [32, 32, 64, 64], "first_stride": 2, "pool_after": [], "dropout": 0.2})


@dataclass(frozen=True)
class DemoPaths:
    """Where a built demo lies."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser())

    @property
    def catalog(self) -> Path:
        return self.root / "catalog.json"

    @property
    def collection(self) -> Path:
        return self.root / "sentinel-2-l2a" / "collection.json"

    @property
    def reference(self) -> Path:
        return self.root / "reference.tif"

    @property
    def layout(self) -> Path:
        return self.root / LAYOUT_FILE


def default_demo_dir() -> Path:
    """``$CROPMAP_DEMO_DIR``, else ``~/.cache/cropmap/demo``."""
    return get_settings().demo_root


def read_layout(root: str | Path) -> dict:
    """The ``demo.json`` of a built demo (grid, tiles, dates, classes, fields)."""
    path = DemoPaths(Path(root)).layout
    if not path.exists():
        raise ConfigError(f"{path} missing: {root} is not a complete demo; run `cropmap demo build`")
    return json.loads(path.read_text())


#: The parts of a demo area a scenario can train on or score on.
PARTS = ("west", "east", "all")


def part_bounds(layout: dict, part: str) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) in metres of the ``"west"`` half (by default the training one), the
    ``"east"`` half (scoring) or ``"all"`` of the area."""
    if part not in PARTS:
        raise ConfigError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    left, bottom, _, top = layout["bounds"]
    c0, c1 = (0, layout["width"]) if part == "all" else layout[f"{part}_cols"]
    res = layout["transform"][0]
    return left + c0 * res, bottom, left + c1 * res, top



def build_demo(out: str | Path | None = None, *, spec: DemoSpec = DemoSpec(), force: bool = False) -> DemoPaths:
    """Write the demo catalog, reference map and layout into ``out`` (default :func:`default_demo_dir`).

    Skipped when ``out`` already holds a complete demo of the same ``spec`` (unless ``force``). The demo is
    built in a sibling temporary folder and renamed into place (:func:`cropmap.io.outputs.atomic_path`),
    so ``out`` is either complete or absent. A non-empty ``out`` that is not a demo folder is never
    overwritten (:class:`ConfigError`).
    """
    root = Path(out).expanduser() if out is not None else default_demo_dir()
    paths = DemoPaths(root)
    if root.exists():
        if paths.layout.exists():
            if not force and json.loads(paths.layout.read_text()).get("token") == spec.token():
                return paths
        elif any(root.iterdir()):
            raise ConfigError(f"{root} exists and is not a cropmap demo folder; choose another output folder")
    with atomic_path(root) as tmp:
        write_demo(tmp, spec)
    return paths


def demo_country(paths: DemoPaths | str | Path | None = None, *, configs_dir: str | Path | None = None
                 ) -> CountryConfig:
    """The ``DEMO`` country config (``configs/countries/DEMO.yaml``) with its catalog at a built demo.

    ``paths``: a built demo (:class:`DemoPaths` or its folder); default :func:`default_demo_dir`, which
    is NOT built here (call :func:`build_demo` first).
    """
    root = paths.root if isinstance(paths, DemoPaths) else Path(paths or default_demo_dir()).expanduser()
    return _with_catalog(load_country(COUNTRY, configs_dir), DemoPaths(root))


def _with_catalog(config: CountryConfig, paths: DemoPaths) -> CountryConfig:
    catalog = config.catalog.model_copy(update={"path": paths.catalog, "url": None})
    return config.model_copy(update={"catalog": catalog})


def prepare(config: CountryConfig, options: dict | None = None) -> tuple[CountryConfig, Scenario]:
    """The DEMO scenario of a country config that names it: the demo built (if missing), the config's
    catalog pointed there, and the scenario: the reference map, the WEST half for training, the EAST half
    for scoring, :data:`DEMO_TRAINING`.

    ``options`` are :class:`DemoSpec` fields (another place, e.g. astride a UTM zone border or the
    equator, another hemisphere, moved dates), plus ``train_part`` and ``score_part`` (one of
    :data:`PARTS`; default west and east; ``none``: no training from this reference (a transfer target,
    mapped with a model trained elsewhere), or no scoring) and ``description``. The
    default spec is built in :func:`default_demo_dir`, another one beside it, named by its hash."""
    options = dict(options or {})
    train_part, score_part = options.pop("train_part", "west"), options.pop("score_part", "east")
    spec = _spec(options)
    description = options.pop("description", None) or (
        f"{config.code}: trained on the {train_part} part (Victoria {_split_of(spec, train_part)}-split series), "
        f"scored on the {score_part} part ({_split_of(spec, score_part)}-split series) against the reference map")
    root = default_demo_dir()
    if spec != DemoSpec():
        root = root.parent / f"{root.name}-{spec.token()}"
    paths = build_demo(root, spec=spec)
    layout = read_layout(paths.root)
    scenario = Scenario(name="demo", reference=str(paths.reference),
                        train_bounds=None if train_part == "none" else part_bounds(layout, train_part),
                        trains=train_part != "none",
                        score_bounds=None if score_part == "none" else part_bounds(layout, score_part),
                        bounds_crs=f"EPSG:{spec.epsg}", training=DEMO_TRAINING, description=description)
    return _with_catalog(config, paths), scenario


def _split_of(spec: DemoSpec, part: str) -> str:
    west, east = spec.halves
    return {"west": west, "east": east}.get(part, west if west == east else f"{west}+{east}")


def _spec(options: dict) -> DemoSpec:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items() if k != "description"}
    unknown = set(fields) - set(DemoSpec.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown DEMO scenario option(s) {sorted(unknown)}; use DemoSpec's fields")
    return DemoSpec(**fields)
