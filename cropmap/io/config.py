"""Country and region configs: YAML files in ``configs/countries/<ISO3>.yaml`` validated into typed models.

A config names everything the cube stage needs for one area: the outline (a Natural Earth country
name, a GeoJSON file or a lon/lat bbox), the season and year, the STAC catalog and the tile size.
Outlines work offline: Natural Earth 1:110m ships in the shared data folder
(``naturalearth_lowres/naturalearth_lowres.shp``, found with :func:`cropmap.io.data.data_file`).

>>> load_country("BEL").catalog.collection
'sentinel-2-l2a'
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pyproj
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cropmap.core.bands import S2_BANDS, SCL, canonical_band
from cropmap.core.harmonise import Legend
from cropmap.core.season import Season
from cropmap.errors import ConfigError, DataNotFoundError, UnknownCountryError, one_line
from cropmap.io.catalogs import get_profile, profile_for_url
from cropmap.settings import get_settings

__all__ = ["CatalogConfig", "OutlinePart", "OutlineConfig", "ScenarioRef", "CountryConfig", "load_country", "is_config_path", "known_countries", "configs_folder",
           "read_yaml_mapping", "load_legend", "DEFAULT_CONFIGS_DIR", "EARTH_SEARCH"]

#: ``configs/countries`` of the installed package.
DEFAULT_CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs" / "countries"
#: Earth Search v1, the default STAC API (Sentinel-2 L2A COGs on AWS, no credentials needed).
EARTH_SEARCH = "https://earth-search.aws.element84.com/v1"
_CODE = re.compile(r"^[A-Z]{3,4}$")


class CatalogConfig(BaseModel):
    """Where the Sentinel-2 L2A items come from: a STAC API ``url`` or a static catalog ``path``.

    ``profile`` (:mod:`cropmap.io.catalogs`: ``earth-search``, ``earth-search-c1``,
    ``planetary-computer``, ``cdse``, ``generic``) says how that catalog serves the bands: asset keys,
    scale and offset, signing or credentials. Unset, it follows from the URL (and the collection:
    Earth Search's ``sentinel-2-c1-l2a`` is ``earth-search-c1``); a static catalog without one is read
    per item. A profile without a ``url`` uses the profile's API, without a ``collection`` its collection.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str | None = EARTH_SEARCH
    path: Path | None = None
    profile: str | None = None
    collection: str = "sentinel-2-l2a"
    max_cloud_cover: float = Field(80.0, ge=0, le=100)  # percent, scene-level eo:cloud_cover
    margin_days: int = Field(15, ge=0, le=180)  # searched before and after the season window
    # local folders the items of this catalog may point into (file:// hrefs of a STAC API that serves
    # local files, as a static catalog's own folder is): none by default, so that an API's items never
    # make cropmap read local files (cropmap.io.catalogs.check_asset_href)
    asset_roots: tuple[Path, ...] = ()

    @model_validator(mode="after")
    def _one_source(self) -> "CatalogConfig":
        named = get_profile(self.profile) if self.profile is not None else None  # ConfigError: not a profile
        if named is not None and "collection" not in self.model_fields_set and named.collection:
            object.__setattr__(self, "collection", named.collection)
        if self.path is not None:
            object.__setattr__(self, "url", None)  # a static catalog replaces the default API
        elif named is not None and "url" not in self.model_fields_set and named.url:
            object.__setattr__(self, "url", named.url)
        elif not self.url:
            raise ValueError("catalog needs a 'url' (STAC API) or a 'path' (static catalog.json)")
        if named is None and self.url:
            found = profile_for_url(self.url, self.collection)
            object.__setattr__(self, "profile", found.name if found else None)
        return self


class OutlinePart(BaseModel):
    """A named part of an outline: the outline clipped to ``bbox`` (lon/lat degrees), or its ``largest``
    polygon. ``default`` parts are mapped unless a run names its parts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    bbox: tuple[float, float, float, float] | None = None
    largest: bool = False
    default: bool = True

    @model_validator(mode="after")
    def _one_selector(self) -> "OutlinePart":
        if (self.bbox is not None) == self.largest:
            raise ValueError(f"outline part {self.name!r} needs exactly one of bbox or largest: true")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise ValueError(f"part {self.name!r}: bbox must be west < east, south < north, got {self.bbox}")
        return self


class OutlineConfig(BaseModel):
    """The area outline: exactly one of a Natural Earth country name, a GeoJSON file, a lon/lat bbox; and
    optionally its named ``parts`` (France: metropolitan by default, overseas parts when asked)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    natural_earth: str | None = None  # the ``name`` column (France carries iso_a3 -99: names always work)
    geojson: Path | None = None
    bbox: tuple[float, float, float, float] | None = None  # west, south, east, north (degrees)
    parts: tuple[OutlinePart, ...] = ()

    def selected_parts(self, names: tuple[str, ...] | None = None) -> tuple[OutlinePart, ...]:
        """The parts a run maps: those named (all must exist), else the default ones."""
        if names is None:
            return tuple(p for p in self.parts if p.default)
        known = {p.name: p for p in self.parts}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"unknown outline part(s) {', '.join(unknown)}; this outline has "
                              f"{', '.join(known) or 'no named parts'}")
        return tuple(known[n] for n in names)

    @model_validator(mode="after")
    def _exactly_one(self) -> "OutlineConfig":
        given = [k for k in ("natural_earth", "geojson", "bbox") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"outline needs exactly one of natural_earth, geojson, bbox; got {given or 'none'}")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
                raise ValueError(f"bbox must be west < east, south < north in degrees, got {self.bbox}")
        if len({p.name for p in self.parts}) != len(self.parts):
            raise ValueError("outline part names must be unique")
        return self


class ScenarioRef(BaseModel):
    """A scenario a config belongs to (:mod:`cropmap.scenarios`) and the options it is prepared with."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class CountryConfig(BaseModel):
    """One country (or region) to map. ``code`` is ISO 3166 alpha-3 (or a 4-letter region code)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(pattern=_CODE.pattern)
    name: str
    outline: OutlineConfig
    hemisphere: Literal["north", "south"]
    season: Season
    year: int = Field(ge=2015, le=2100)  # the season year: the calendar year in which the window starts
    catalog: CatalogConfig = CatalogConfig()
    # pixels (10 m) per tile side; below 64 only for benchmarks of orchestration (bench/scale.py)
    tile_size: int = Field(1024, ge=16, le=8192)
    # the CRS of the national products: equal-area, so that pixel counts are areas (EPSG:6933, the global
    # EASE-Grid 2.0 cylindrical equal-area, unless a national equal-area CRS is better: LAEA Europe 3035,
    # CONUS Albers 5070, Australian Albers 3577)
    output_crs: str = "EPSG:6933"
    # a prepared case this config belongs to (cropmap.scenarios: "demo" builds the offline DEMO catalog
    # and supplies its reference labels, training and scoring areas); real countries have none
    scenario: ScenarioRef | None = None
    # the reflectance bands this country's cubes and models use, in order (canonical names, e.g. [B02, B03,
    # B04, B08]); None: the ten of cropmap.core.bands.S2_BANDS. Training takes them; a map takes its
    # checkpoint's (cropmap.scenarios.resolve_run)
    bands: tuple[str, ...] | None = None
    # how this country's maps are predicted: the fields of cropmap.stages.predict_options.PredictOptions
    # (probabilities, ood, precision, max_filled_fraction, ...), checked when a run is resolved
    # (cropmap.scenarios.resolve_run; this layer does not know the predict stage); a caller's options
    # (CLI flags, the flow's ``predict`` parameter) override them key by key
    predict: dict[str, Any] = Field(default_factory=dict)

    @field_validator("scenario", mode="before")
    @classmethod
    def _scenario_by_name(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("output_crs")
    @classmethod
    def _projected_crs(cls, value: str) -> str:
        try:
            crs = pyproj.CRS.from_user_input(value)
        except pyproj.exceptions.CRSError as err:
            raise ValueError(f"output_crs {value!r} is not a CRS: {err}") from err
        if not crs.is_projected:
            raise ValueError(f"output_crs {value!r} is not a projected CRS in metres")
        return value

    @field_validator("bands")
    @classmethod
    def _canonical_bands(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            bad = [b for b in value if canonical_band(b) != b or b == SCL]
            if bad or not value or len(set(value)) != len(value):
                raise ValueError(f"bands must be distinct canonical reflectance bands like {', '.join(S2_BANDS)}; "
                                 f"got {list(value)}")
        return value

    def season_for(self, hemisphere: Literal["north", "south"]) -> Season:
        """The season of a part of the country in ``hemisphere``: the config's, or six months later in
        the other hemisphere (:meth:`cropmap.core.season.Season.in_hemisphere`)."""
        return self.season.in_hemisphere(hemisphere)

    @model_validator(mode="after")
    def _season_matches_hemisphere(self) -> "CountryConfig":
        if self.season.hemisphere != self.hemisphere:
            raise ValueError(f"season hemisphere {self.season.hemisphere!r} != country hemisphere "
                             f"{self.hemisphere!r}")
        return self


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps the
    last one silently, which merges or drops a legend's classes or a config's settings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base" may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (first on line {first_line[key]}); YAML would keep "
                        "only the last: remove one", key_node.start_mark)
                first_line[key] = line
            except TypeError:  # an unhashable key: the constructor below names it
                continue
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of the YAML file ``path`` (an empty file: ``{}``): the one reader of every
    cropmap config (country, legend, experiment). A key given twice, a syntax error, a file that is not
    text or whose top level is not a mapping raise :class:`ConfigError` in one line naming the file and line.
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - safe: it builds no objects
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}" if mark is not None else ""
        what = " ".join(filter(None, (err.context, err.problem)))
        raise ConfigError(f"{path}: not valid YAML{where}: {' '.join(what.split())}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {one_line(err)}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (YAML expected)") from err
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror or err}") from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got a {type(raw).__name__}")
    return raw


def _case_clash(names: list[str]) -> list[str]:
    """The first names of ``names`` that differ from another only by case (empty when there are none)."""
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            return [other, name]
    return []


def load_legend(path: str | Path) -> Legend:
    """The legend YAML ``path`` (``configs/legends/*.yaml``) validated into a :class:`Legend`.

    Refused in one line naming the file (:class:`ConfigError`): a missing file, a key given twice, and
    classes or mapping entries whose names differ only by case (the legend matches names
    case-insensitively, so one of them would silently win).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"legend file {path} not found")
    try:
        legend = Legend.model_validate(read_yaml_mapping(path))
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid legend: {one_line(err)}") from err
    for section, names in (("classes", legend.classes), ("mapping", list(legend.mapping))):
        clash = _case_clash(names)
        if clash:
            raise ConfigError(f"{path}: invalid legend: {section} {clash[0]!r} and {clash[1]!r} differ only by case, "
                              "and legend names are matched case-insensitively: keep one")
    return legend


def configs_folder(configs_dir: str | Path | None = None) -> Path:
    """``configs_dir``, else ``$CROPMAP_CONFIGS_DIR``, else the package's own ``configs/countries``."""
    if configs_dir is not None:
        return Path(configs_dir).expanduser()
    return get_settings().configs_dir or DEFAULT_CONFIGS_DIR


def known_countries(configs_dir: str | Path | None = None) -> list[str]:
    """Codes that have a config file, sorted."""
    folder = configs_folder(configs_dir)
    return sorted(p.stem for p in folder.glob("*.yaml") if _CODE.match(p.stem))


def is_config_path(country: object) -> bool:
    """Whether ``country`` names a config file (``.yaml`` / ``.yml``, a path or an fsspec URL) rather than a code."""
    return isinstance(country, str) and country.lower().endswith((".yaml", ".yml"))


def load_country(code: str, configs_dir: str | Path | None = None) -> CountryConfig:
    """The validated config of ``code`` (e.g. ``"ARG"``) from ``configs_dir`` (default :func:`configs_folder`),
    or of the config file ``code`` names (:func:`is_config_path`: a path, or a URL fetched once into the
    cache; its ``code:`` field, else its file name, is the country's code).

    A malformed or unknown code raises :class:`UnknownCountryError` listing the known ones (the code
    is checked before it touches the file system, so ``"../x"`` never escapes the folder); a file
    that does not validate raises :class:`ConfigError` naming the file and the field.
    """
    if is_config_path(code):
        from cropmap.io import downloads, storage

        if not storage.exists(code):
            raise DataNotFoundError(f"country config {code} not found")
        path = Path(downloads.local_copy(code)) if storage.is_remote(code) else Path(code).expanduser().resolve()
        folder, raw = path.parent, read_yaml_mapping(path)
        raw.setdefault("code", path.stem)
        return _validated(raw, path, folder)
    folder = configs_folder(configs_dir)
    known = known_countries(folder)
    if not isinstance(code, str) or not _CODE.match(code) or code not in known:
        raise UnknownCountryError(
            f"unknown country {code!r}: expected an upper-case ISO3 code with a config in {folder} or the path "
            f"of a config file (.yaml); known: {', '.join(known) or 'none'}"
        )
    path = folder / f"{code}.yaml"
    raw = read_yaml_mapping(path)
    raw.setdefault("code", code)
    if raw["code"] != code:
        raise ConfigError(f"{path}: code {raw['code']!r} does not match the file name {code!r}")
    return _validated(raw, path, folder)


def _validated(raw: dict[str, Any], path: Path, folder: Path) -> CountryConfig:
    for section, key in (("outline", "geojson"), ("catalog", "path")):
        value = (raw.get(section) or {}).get(key)
        if value is not None:  # "~" expanded; relative paths are relative to the config file
            raw[section][key] = str(folder / Path(value).expanduser())
    roots = (raw.get("catalog") or {}).get("asset_roots")
    if isinstance(roots, list):
        raw["catalog"]["asset_roots"] = [str(folder / Path(str(r)).expanduser()) for r in roots]
    try:
        return CountryConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{path}: {one_line(err)}") from err
