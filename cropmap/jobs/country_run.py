"""A country run, resolved once: config, season, grid, run folder and key, and the scenario if any.

The flows and the CLI turn their parameters (a country code, a year, an output location) into one
frozen :class:`CountryRun` before any task starts, and hand tasks that object and tile ids; no task
resolves the country again. Outputs are keyed by the run's hash: ``<root>/<code>/<key>/...``, so a
changed config never reuses stale tiles, and a rerun of the same config resumes. ``root`` and every
output location may be a local folder or an fsspec URL such as ``s3://bucket/runs``
(:mod:`cropmap.io.storage`).

A :class:`Scenario` is data a run may carry: the reference labels, the training and scoring areas and
the training settings of an offline or documented case (the DEMO is one; :mod:`cropmap.scenarios`
prepares them). A real country has none: it is trained from the labels a user gives, with the paper's
settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from rasterio.errors import RasterioIOError
from rasterio.warp import transform_bounds

from cropmap.core.grid import Tile, tile_from_id, tiles_meeting
from cropmap.core.season import Season
from cropmap.io import downloads, storage
from cropmap.io.config import CountryConfig
from cropmap.io.outlines import PartPlan, part_plans, plan_tiles, tiles_for_aoi
from cropmap.errors import InvalidInputError
from cropmap.jobs.training import TrainingSettings
from cropmap.samples.reference_labels import VECTOR_SUFFIXES, is_vector, label_extent, label_geometry
from cropmap.settings import get_settings
from cropmap.stages.cube import CubeOptions
from cropmap.stages.predict import PredictOptions

__all__ = ["Scenario", "CountryRun", "resolve_country_run", "output_root", "hemisphere_of", "Bounds"]

#: ``(left, bottom, right, top)`` in metres of the tiles' CRS.
Bounds = tuple[float, float, float, float]


class Scenario(BaseModel):
    """What a prepared scenario supplies to a run (all locations are paths or URLs as strings)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    reference: str  # reference labels: a categorical raster (or vector parcels, see cropmap.samples)
    legend: str | None = None  # configs/legends YAML mapping the reference's classes
    train_bounds: Bounds | None = None  # the part of the reference used for training
    trains: bool = True  # False: the reference is held back for scoring only (a transfer target)
    score_bounds: Bounds | None = None  # the part held back, to score the map against
    bounds_crs: str | None = None  # the CRS of both bounds (default: the reference map's)
    training: TrainingSettings = Field(default_factory=TrainingSettings)


class CountryRun(BaseModel):
    """One resolved run of one country (frozen, small, picklable: what every task receives).

    ``root`` is the run folder (``<output root>/<code>/<key>``); the stages' outputs lie in
    :attr:`cube_dir`, :meth:`tile_dir` and :meth:`map_dir` (one folder per model: the predictions' key,
    so that the tiles of two models never mix), :attr:`model_dir` and :attr:`training_dir`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    config: CountryConfig
    root: str
    key: str
    cube: CubeOptions = Field(default_factory=CubeOptions)
    predict: PredictOptions = Field(default_factory=PredictOptions)
    scenario: Scenario | None = None
    parts: tuple[str, ...] | None = None  # the outline parts mapped (None: the config's default ones)
    cube_root: str | None = None  # cubes elsewhere than <root>/cubes (the `cropmap cube --out` folder)
    # False: a mapped tile's cube lives only in its worker's scratch while the tile is predicted
    # (cropmap.jobs.tiles.map_tile); it changes where cubes are, never a pixel, so not the key
    keep_cubes: bool = True

    @property
    def code(self) -> str:
        return self.config.code

    @property
    def season(self) -> Season:
        return self.config.season

    @property
    def year(self) -> int:
        return self.config.year

    @property
    def cube_dir(self) -> storage.Location:
        return storage.as_location(self.cube_root) if self.cube_root else storage.join(self.root, "cubes")

    def tile_dir(self, prediction_key: str) -> storage.Location:
        """The tile predictions of one model and options (:func:`cropmap.stages.predict.run_key`)."""
        return storage.join(self.root, "tiles", prediction_key)

    def map_dir(self, prediction_key: str) -> storage.Location:
        """The mosaics (per zone and national) of one model and options."""
        return storage.join(self.root, "maps", prediction_key)

    @property
    def model_dir(self) -> storage.Location:
        return storage.join(self.root, "models")

    @property
    def training_dir(self) -> storage.Location:
        return storage.join(self.root, "training")

    def tiles(self, *, tile_limit: int | None = None, bounds: Bounds | None = None, bounds_crs: str | None = None,
              reference: storage.Location | None = None) -> list[str]:
        """Ids of the run's tiles (sorted by zone, row, col), optionally only those intersecting ``bounds``
        (in ``bounds_crs``; default the tiles' own CRS) or ``reference``: a raster's extent, or the
        footprints of vector labels (the tiles a parcel or point meets, not their bounding box; vectors that
        meet no tile are an error), and at most ``tile_limit`` of them: without ``reference``, the tiles after
        those are never made, so a few tiles of a huge plan cost what they cost (refused above
        ``$CROPMAP_MAX_PLAN_TILES``, :func:`cropmap.io.outlines.check_plan_size`)."""
        if reference is None and bounds is None:
            return [t.id for t in tiles_for_aoi(self.config, parts=self.parts, limit=tile_limit)]
        if reference is None:
            # bounds filter the tiles as they are made: the limit counts the tiles inside them
            inside = _within(plan_tiles(self.config, parts=self.parts), bounds, bounds_crs)
            return [t.id for t in islice(inside, tile_limit)]
        tiles = tiles_for_aoi(self.config, parts=self.parts)
        if is_vector(reference):
            geometry, crs = label_geometry(reference)
            tiles, _ = tiles_meeting(geometry, crs, tiles)
            if not tiles:
                box = tuple(float(v) for v in label_extent(reference)[0])
                raise InvalidInputError(f"the labels {reference} (extent {tuple(round(b, 4) for b in box)}, "
                                        f"{crs.to_string()}) do not intersect {self.code}'s tiles")
        else:
            try:
                with downloads.open_raster(reference) as ds:
                    tiles = list(_within(tiles, tuple(ds.bounds), ds.crs))
            except RasterioIOError as err:
                if not storage.exists(reference):
                    raise
                raise InvalidInputError(f"labels {reference}: neither a raster GDAL reads nor a vector file "
                                        f"({', '.join(VECTOR_SUFFIXES)})") from err
        if bounds is not None:
            tiles = list(_within(tiles, bounds, bounds_crs))
        return [t.id for t in tiles][:tile_limit]

    def parts_plan(self) -> list[PartPlan]:
        """Part, hemisphere, tiles and season of every selected outline part (what a run prints first)."""
        return part_plans(self.config, self.parts)

    @staticmethod
    def tile(tile_id: str) -> Tile:
        return tile_from_id(tile_id)

    def season_of(self, tile: Tile | str) -> Season:
        """The season of a tile: the config's for its hemisphere (UTM north 326zz / south 327zz), six
        months later on the other side of the equator (:meth:`CountryConfig.season_for`)."""
        tile = tile_from_id(tile) if isinstance(tile, str) else tile
        return self.config.season_for(hemisphere_of(tile))

    def seasons(self, tile_ids: Sequence[str]) -> dict[str, Season]:
        """``{hemisphere: season}`` of the hemispheres the tiles lie in."""
        return {h: self.config.season_for(h) for h in sorted({hemisphere_of(tile_from_id(t)) for t in tile_ids})}


def hemisphere_of(tile: Tile) -> str:
    """"south" for a tile on a southern UTM grid (EPSG 327zz), else "north"."""
    return "south" if 32701 <= tile.grid.epsg <= 32760 else "north"


def _within(tiles: Iterable[Tile], bounds: Sequence[float], crs) -> Iterator[Tile]:
    boxes: dict[int, Sequence[float]] = {}
    for t in tiles:
        e = t.grid.epsg
        if e not in boxes:
            boxes[e] = bounds if crs is None else transform_bounds(crs, f"EPSG:{e}", *bounds, densify_pts=21)
        if _overlaps(t.bounds, boxes[e]):
            yield t


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and a[2] > b[0] and a[1] < b[3] and a[3] > b[1]


def run_key(config: CountryConfig, cube: CubeOptions = CubeOptions()) -> str:
    """16 hex digits of what changes a run's outputs: the config, and the cube options when they are
    not the defaults (so default runs keep the key they always had)."""
    dump = config.model_dump(mode="json")
    # fields added later, at their defaults, are left out: the runs made before they existed keep their keys
    if dump.get("bands") is None:
        dump.pop("bands", None)
    if not dump["catalog"].get("asset_roots"):
        dump["catalog"].pop("asset_roots", None)
    # predict options name the predictions' own folder (cropmap.stages.predict_provenance.prediction_key),
    # not the run's: cubes are the same whatever a map is predicted with
    dump.pop("predict", None)
    parts: list[object] = [dump]
    if _plain(cube) != _plain(CubeOptions()):
        parts.append({"cube": _plain(cube)})
    return storage.stable_hash(parts)


def _plain(options: CubeOptions) -> dict:
    # threads change how fast a tile is computed, never its values
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(options).items() if k != "threads"}


def resolve_country_run(config: CountryConfig, *, out_root: storage.Location, scenario: Scenario | None = None,
                        cube: CubeOptions = CubeOptions(), predict: PredictOptions = PredictOptions(),
                        cube_dir: storage.Location | None = None, parts: Sequence[str] | None = None,
                        keep_cubes: bool = True) -> CountryRun:
    """The :class:`CountryRun` of ``config`` under ``out_root`` (checked writable by :func:`output_root`);
    ``parts`` names the outline parts to map (default: the config's default parts); ``keep_cubes`` false:
    the mapped tiles' cubes are not written to the run's store (:attr:`CountryRun.keep_cubes`)."""
    selected = None if parts is None else tuple(p.name for p in config.outline.selected_parts(tuple(parts)))
    # the parts choose tiles, not what a tile holds: runs of other parts share the run folder (and
    # every finished tile), and each run's mosaics take the tiles of its own plan
    key = run_key(config, cube)
    return CountryRun(config=config, root=str(storage.join(out_root, config.code, key)), key=key, cube=cube,
                      predict=predict, scenario=scenario, parts=selected, keep_cubes=keep_cubes,
                      cube_root=None if cube_dir is None else str(storage.as_location(cube_dir)))


def output_root(out_dir: str | None = None) -> storage.Location:
    """Where a run's outputs go, checked writable before any task runs.

    ``out_dir`` (a flow parameter or CLI option), else ``$CROPMAP_OUTPUT_URL``, else
    ``$CROPMAP_OUTPUT_DIR``, else ``~/.cache/cropmap/runs``; empty strings count as unset. A local
    folder (returned as a ``Path``) or an fsspec URL such as ``s3://bucket/runs`` (returned as a ``str``;
    credentials and endpoint from the environment, see :mod:`cropmap.io.storage`). A location that cannot
    be written raises :class:`~cropmap.errors.StorageError` naming it and where it came from, here in the
    calling process, not later inside a task.
    """
    settings = get_settings()
    for value, source in ((out_dir, "the out_dir parameter"), (settings.output_url, "$CROPMAP_OUTPUT_URL"),
                          (settings.output_dir, "$CROPMAP_OUTPUT_DIR")):
        if value and str(value).strip():
            return storage.check_writable(str(value).strip(), source=source)
    return storage.check_writable(Path.home() / ".cache" / "cropmap" / "runs", source="the default")
