"""The DEMO scenario's scenes: field layout, clouds and COGs made from REAL Victoria spectra.

What :func:`write_demo` writes and why is described in :mod:`cropmap.scenarios.demo`; this module holds
the spec (:class:`DemoSpec`) and the synthesis (fields, series, clouds, SCL, STAC items).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pystac
import rasterio
import xarray as xr
from pyproj import Transformer
from rasterio.transform import Affine
from scipy import ndimage

from cropmap.core.bands import S2_BANDS
from cropmap.core.season import NORTH, SOUTH, Season
from cropmap.errors import ConfigError
from cropmap.io.storage import stable_hash
from cropmap.samples.victoria import read_victoria

__all__ = ["DemoSpec", "EARTH_SEARCH_KEYS", "LAYOUT_FILE", "write_demo"]

#: Earth Search v1 asset key of each canonical band (the order of :data:`S2_BANDS`, then SCL).
EARTH_SEARCH_KEYS: dict[str, str] = {
    "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2", "B07": "rededge3",
    "B08": "nir", "B8A": "nir08", "B11": "swir16", "B12": "swir22", "SCL": "scl",
}
# (common_name, centre wavelength um, full width at half maximum um) as Earth Search publishes them
_EO = {
    "B02": ("blue", 0.49, 0.098), "B03": ("green", 0.56, 0.045), "B04": ("red", 0.665, 0.038),
    "B05": ("rededge", 0.704, 0.019), "B06": ("rededge", 0.74, 0.018), "B07": ("rededge", 0.783, 0.028),
    "B08": ("nir", 0.842, 0.145), "B8A": ("nir08", 0.865, 0.033), "B11": ("swir16", 1.61, 0.143),
    "B12": ("swir22", 2.19, 0.242),
}
_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
]
_COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
# Bump when the layout algorithm changes: a complete folder built by another version is rebuilt.
_LAYOUT_VERSION = 2
LAYOUT_FILE = "demo.json"


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of the demo area (all defaults give the documented DEMO country).

    ``origin`` is the upper-left corner (x, y) in metres of ``epsg``, on the lattice of
    :class:`cropmap.core.grid.Grid` (origin x = 0, y = 10 000 000 m; steps of ``tile_px * resolution``), so the
    grid splits the area into exactly ``tiles_x * tiles_y`` tiles. ``field_px`` bounds the side of a field in pixels (14-30 px = 140-300 m,
    2-9 ha). ``noise`` is the standard deviation of the per-pixel noise in reflectance (0..1) units.
    ``margin_days`` extends the season window on both sides (room for interpolation and augmentation).

    ``hemisphere`` picks the season window (:data:`~cropmap.core.season.NORTH` May-Nov or
    :data:`~cropmap.core.season.SOUTH` Nov-May of ``season_year``). ``date_shift_days`` moves every
    Victoria date (2017-08-01 + 5 k) by that many days: -184 puts the southern series into the northern
    window (1 Nov -> 1 May, the paper's six-month offset), +15 delays the phenology by 15 days.
    ``halves`` names the Victoria split whose series fill the west and the east half.
    """

    epsg: int = 32754
    origin: tuple[float, float] = (606720.0, 5936000.0)
    resolution: float = 10.0
    tile_px: int = 128
    tiles_x: int = 2
    tiles_y: int = 2
    season_year: int = 2017
    margin_days: int = 30
    field_px: tuple[int, int] = (14, 30)
    noise: float = 0.005
    cloudy_fraction: float = 0.35
    seed: int = 20170801
    hemisphere: str = "south"
    date_shift_days: int = 0
    halves: tuple[str, str] = ("train", "test")

    def __post_init__(self) -> None:
        if self.hemisphere not in ("north", "south"):
            raise ConfigError(f"hemisphere must be 'north' or 'south', got {self.hemisphere!r}")
        if len(self.halves) != 2 or not set(self.halves) <= {"train", "test"}:
            raise ConfigError(f"halves must name the Victoria split of the west and the east half "
                              f"('train' or 'test'), got {self.halves!r}")
        if self.tiles_x < 2 or self.tiles_x % 2:
            raise ConfigError(f"tiles_x must be even and >= 2 (west and east halves), got {self.tiles_x}")
        if self.tiles_y < 1 or self.tile_px < 2 * self.field_px[1]:
            raise ConfigError(f"tile_px ({self.tile_px}) must hold two of the largest fields ({self.field_px[1]} px)")
        if not 0 < self.field_px[0] <= self.field_px[1]:
            raise ConfigError(f"field_px must be (min, max) with 0 < min <= max, got {self.field_px}")

    @property
    def season(self) -> Season:
        return NORTH if self.hemisphere == "north" else SOUTH

    @property
    def width(self) -> int:
        return self.tile_px * self.tiles_x

    @property
    def height(self) -> int:
        return self.tile_px * self.tiles_y

    @property
    def transform(self) -> Affine:
        return Affine(self.resolution, 0.0, self.origin[0], 0.0, -self.resolution, self.origin[1])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in metres of ``epsg``."""
        x0, y0 = self.origin
        return x0, y0 - self.height * self.resolution, x0 + self.width * self.resolution, y0

    def token(self) -> str:
        """Hash of the spec and the layout version: a folder built from another spec is rebuilt."""
        return stable_hash({"v": _LAYOUT_VERSION, **dataclasses.asdict(self)})


# --- layout -----------------------------------------------------------------------------------------


def _split(length: int, lo: int, hi: int, rng: np.random.Generator) -> list[int]:
    """Cut ``length`` pixels into pieces of ``lo``..``hi`` (the last piece absorbs the remainder)."""
    edges = [0]
    while length - edges[-1] > hi:
        step = int(rng.integers(lo, hi + 1))
        if length - (edges[-1] + step) < lo:  # the remainder would be a sliver: stop here
            break
        edges.append(edges[-1] + step)
    return [*edges, length]


def _fields(spec: DemoSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Field id raster ``(y, x)`` int32 and the field table (rows, cols, part)."""
    field_id = np.full((spec.height, spec.width), -1, dtype=np.int32)
    fields: list[dict] = []
    half = spec.width // 2
    lo, hi = spec.field_px
    for part, col0 in (("west", 0), ("east", half)):
        rows = _split(spec.height, lo, hi, rng)
        for r0, r1 in zip(rows[:-1], rows[1:]):
            cols = _split(half, lo, hi, rng)  # each strip of rows gets its own column cuts
            for c0, c1 in zip(cols[:-1], cols[1:]):
                field_id[r0:r1, col0 + c0:col0 + c1] = len(fields)
                fields.append({"id": len(fields), "part": part, "rows": [r0, r1],
                               "cols": [col0 + c0, col0 + c1]})
    return field_id, fields


def _assign_series(fields: list[dict], splits: dict[str, xr.Dataset], halves: tuple[str, str],
                   rng: np.random.Generator) -> None:
    """Give each field a class (balanced within each half) and one real series of that class, from the
    Victoria split ``halves`` names for its half."""
    n_class = splits["train"].sizes["class"]
    for part, split in zip(("west", "east"), halves):
        mine = [f for f in fields if f["part"] == part]
        classes = rng.permutation(np.resize(np.arange(n_class), len(mine)))
        labels = splits[split]["label"].values
        pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in range(n_class)}
        for f, c in zip(mine, classes):
            pool = pools[int(c)]
            f.update({"class": int(c), "split": split, "series": int(pool.pop(0))})
            pool.append(f["series"])  # reused only when a class has more fields than series


def _dates(spec: DemoSpec, victoria_times: np.ndarray) -> np.ndarray:
    """Indices of the Victoria dates inside the season window plus the margin."""
    first, last = spec.season.window(spec.season_year)
    margin = np.timedelta64(spec.margin_days, "D")
    days = victoria_times.astype("datetime64[D]")
    keep = (days >= np.datetime64(first) - margin) & (days <= np.datetime64(last) + margin)
    if not keep.any():
        raise ConfigError(f"no Victoria date falls in the {spec.season_year} {spec.hemisphere} season window; "
                          f"the series cover 2017-08-01 .. 2018-07-27, moved by {spec.date_shift_days} days")
    return np.flatnonzero(keep)


def _cloud_plan(n_dates: int, spec: DemoSpec, rng: np.random.Generator) -> dict[int, float]:
    """Date index -> cloud cover fraction for the cloudy dates (one of them fully overcast)."""
    n_cloudy = max(2, round(spec.cloudy_fraction * n_dates))
    picks = np.sort(rng.choice(np.arange(1, n_dates - 1), size=min(n_cloudy, n_dates - 2), replace=False))
    cover = {int(k): float(rng.uniform(0.05, 0.6)) for k in picks}
    cover[int(picks[len(picks) // 2])] = 1.0
    return cover


# --- one scene ---------------------------------------------------------------------------------------


def _clouds(shape: tuple[int, int], cover: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cloud density (0..1 inside clouds, 0 outside) and a shadow mask, both ``(y, x)``."""
    h, w = shape
    coarse = rng.random((h // 32 + 3, w // 32 + 3))
    smooth = ndimage.zoom(coarse, 32, order=3)[:h, :w]
    if cover >= 1.0:
        density = np.clip((smooth - smooth.min()) / (np.ptp(smooth) + 1e-9), 0.05, 1.0)
    else:
        thr = np.quantile(smooth, 1.0 - cover)
        density = np.where(smooth > thr, (smooth - thr) / (smooth.max() - thr + 1e-9), 0.0)
    cloud = density > 0
    # Late-morning sun in the north-east: shadows fall to the south-west (rows down, columns left).
    dy, dx = 10, -14
    shifted = np.zeros_like(cloud)
    shifted[dy:, :w + dx] = cloud[:-dy, -dx:]
    return density, shifted & ~cloud


def _scene(series: np.ndarray, field_id: np.ndarray, water: np.ndarray, cover: float, nodata_cols: int,
           spec: DemoSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """One acquisition: ``(band, y, x)`` uint16 reflectance x 10000, ``(y, x)`` uint16 SCL, cloud %.

    ``series``: ``(field, band)`` reflectance 0..1 of every field on this date.
    """
    refl = series[field_id].transpose(2, 0, 1)  # (band, y, x)
    refl = refl + rng.normal(0.0, spec.noise, refl.shape).astype(np.float32)
    red, nir = refl[S2_BANDS.index("B04")], refl[S2_BANDS.index("B08")]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    scl = np.where(water[field_id], 6, np.where(ndvi > 0.35, 4, 5)).astype(np.uint16)
    cloud_pct = 0.0
    if cover > 0:
        density, shadow = _clouds(field_id.shape, cover, rng)
        cloud = density > 0
        # bright, flat spectra, a little darker in the SWIR
        swir_drop = np.array([1.0] * 8 + [0.85, 0.7], dtype=np.float32)[:, None, None]
        bright = (0.3 + 0.4 * density)[None] * swir_drop + rng.normal(0, 0.01, refl.shape)
        refl = np.where(cloud[None], bright, refl)
        refl = np.where(shadow[None], refl * 0.4, refl)
        scl = np.where(cloud, np.where(density > 0.4, 9, 8), np.where(shadow, 3, scl)).astype(np.uint16)
        cloud_pct = float(100.0 * cloud.mean())
    dn = np.clip(np.rint(refl * 10000.0), 1, 65535).astype(np.uint16)  # 0 is reserved for no data
    if nodata_cols:
        dn[:, :, -nodata_cols:] = 0
        scl[:, -nodata_cols:] = 0
    return dn, scl, cloud_pct


# --- writing -----------------------------------------------------------------------------------------


def _write_cog(path: Path, data: np.ndarray, spec: DemoSpec, *, nodata: int,
               colormap: dict | None = None, tags: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="COG", width=spec.width, height=spec.height, count=1, dtype=data.dtype.name,
                   crs=f"EPSG:{spec.epsg}", transform=spec.transform, nodata=nodata, compress="DEFLATE",
                   predictor=2, blocksize=spec.tile_px, overviews="NONE")
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data, 1)
        if colormap:
            ds.write_colormap(1, colormap)
        if tags:  # per band, like cropmap.stages.predict's class maps: class_<id> = name
            ds.update_tags(1, **tags)
            ds.set_band_description(1, "crop class")


def _geometry(spec: DemoSpec) -> tuple[dict, list[float]]:
    left, bottom, right, top = spec.bounds
    to_ll = Transformer.from_crs(spec.epsg, 4326, always_xy=True)
    ring = [to_ll.transform(x, y) for x, y in ((left, bottom), (right, bottom), (right, top), (left, top))]
    ring = [[round(lon, 7), round(lat, 7)] for lon, lat in ring]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}, [min(lons), min(lats), max(lons), max(lats)]


def _item(date: np.datetime64, k: int, cloud_pct: float, folder: Path, spec: DemoSpec) -> pystac.Item:
    day = dt.datetime.fromisoformat(str(date.astype("datetime64[D]")))
    platform = "sentinel-2a" if k % 2 == 0 else "sentinel-2b"
    item_id = f"S2{platform[-1].upper()}_DEMO_{day:%Y%m%d}_0_L2A"
    geometry, bbox = _geometry(spec)
    # Sentinel-2 passes over Victoria around 10:20 local time, i.e. about 00:20 UTC the same day.
    item = pystac.Item(item_id, geometry, bbox, day.replace(hour=0, minute=20, tzinfo=dt.timezone.utc), {
        "platform": platform, "constellation": "sentinel-2", "instruments": ["msi"],
        "eo:cloud_cover": round(cloud_pct, 4), "proj:epsg": spec.epsg, "proj:code": f"EPSG:{spec.epsg}",
        "proj:shape": [spec.height, spec.width], "proj:transform": list(spec.transform)[:6],
        "s2:processing_baseline": "02.06", "cropmap:synthetic_layout": True,
    }, stac_extensions=list(_EXTENSIONS))
    grid = {"proj:shape": [spec.height, spec.width], "proj:transform": list(spec.transform)[:6], "gsd": 10}
    for band, key in EARTH_SEARCH_KEYS.items():
        extra = dict(grid)
        if band == "SCL":
            extra["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "spatial_resolution": 10}]
            title = "Scene classification map (SCL)"
        else:
            common, centre, fwhm = _EO[band]
            extra["eo:bands"] = [{"name": key, "common_name": common, "description": f"{key} ({band})",
                                  "center_wavelength": centre, "full_width_half_max": fwhm}]
            extra["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "bits_per_sample": 15,
                                      "spatial_resolution": 10, "scale": 0.0001, "offset": 0}]
            title = f"{key} ({band}) - 10m"
        item.add_asset(key, pystac.Asset(str(folder / item_id / f"{key}.tif"), title=title, media_type=_COG_TYPE,
                                         roles=["data"], extra_fields=extra))
    return item


def write_demo(root: Path, spec: DemoSpec) -> None:
    """Write the whole demo (catalog, scenes, reference map, layout last) into the folder ``root``."""
    splits = {s: read_victoria(s) for s in ("train", "test")}
    rng = np.random.default_rng(spec.seed)
    field_id, fields = _fields(spec, rng)
    _assign_series(fields, splits, tuple(spec.halves), rng)
    times = splits["train"]["time"].values + np.timedelta64(spec.date_shift_days, "D")
    date_idx = _dates(spec, times)
    clouds = _cloud_plan(len(date_idx), spec, rng)
    clear = [k for k in range(len(date_idx)) if k not in clouds]
    nodata_date = clear[len(clear) // 3]  # one clear date has a no-data strip (the scene edge)

    # (field, time, band) reflectance of each field's series, 0..1
    series = np.stack([splits[f["split"]]["reflectance"].values[f["series"]] for f in fields])
    class_names = [str(c) for c in splits["train"]["class_name"].values]
    water = np.array([class_names[f["class"]] == "water" for f in fields])

    collection_dir = root / "sentinel-2-l2a"
    items, dates = [], []
    for k, t in enumerate(date_idx):
        scene_rng = np.random.default_rng([spec.seed, int(t)])
        nodata_cols = 20 if k == nodata_date else 0
        dn, scl, cloud_pct = _scene(series[:, t, :], field_id, water, clouds.get(k, 0.0), nodata_cols,
                                    spec, scene_rng)
        item = _item(times[t], k, cloud_pct, collection_dir, spec)
        for b, band in enumerate(S2_BANDS):
            _write_cog(collection_dir / item.id / f"{EARTH_SEARCH_KEYS[band]}.tif", dn[b], spec, nodata=0)
        _write_cog(collection_dir / item.id / "scl.tif", scl, spec, nodata=0)
        items.append(item)
        dates.append(str(times[t].astype("datetime64[D]")))

    _write_catalog(root, items, spec)
    classes = np.array([f["class"] for f in fields], dtype=np.uint8)[field_id]
    colours = [str(c) for c in splits["train"]["class_colour"].values]
    cmap = {i: (*(int(c[j:j + 2], 16) for j in (1, 3, 5)), 255) for i, c in enumerate(colours)}
    _write_cog(root / "reference.tif", classes, spec, nodata=255, colormap=cmap,
               tags={f"class_{i}": n for i, n in enumerate(class_names)})
    layout = _layout(spec, fields, dates, clouds, nodata_date, class_names, colours)
    (root / LAYOUT_FILE).write_text(json.dumps(layout, indent=1))  # written last: marks completion


def _write_catalog(root: Path, items: list[pystac.Item], spec: DemoSpec) -> None:
    _, bbox = _geometry(spec)
    times = [i.datetime for i in items]
    catalog = pystac.Catalog("cropmap-demo", "cropmap DEMO country: synthetic field layout, real Victoria "
                             "Sentinel-2 spectra (victoria_s2, charlotte-pel/igarss2019-dl4sits)")
    collection = pystac.Collection(
        "sentinel-2-l2a",
        "Sentinel-2-like L2A scenes of the cropmap DEMO country. The field layout, noise and clouds are "
        "synthetic; every field carries one REAL Victoria (Australia) Sentinel-2 pixel time series.",
        pystac.Extent(pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[min(times), max(times)]])),
        license="GPL-3.0-only", stac_extensions=list(_EXTENSIONS),
    )
    catalog.add_child(collection)
    collection.add_items(items)
    # a file href: pystac would take a folder name with a dot ("x.partial-1") for a file name
    catalog.normalize_hrefs(str(root / "catalog.json"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)


def _layout(spec: DemoSpec, fields: list[dict], dates: list[str], clouds: dict[int, float], nodata_date: int,
            class_names: list[str], colours: list[str]) -> dict:
    left, bottom, right, top = spec.bounds
    step = spec.tile_px * spec.resolution
    tiles = [{"row": r, "col": c, "part": "west" if c < spec.tiles_x // 2 else "east",
              "bounds": [left + c * step, top - (r + 1) * step, left + (c + 1) * step, top - r * step]}
             for r in range(spec.tiles_y) for c in range(spec.tiles_x)]
    return {
        "description": "cropmap DEMO country: the field layout, noise and clouds are SYNTHETIC; each field "
                       f"carries one REAL Victoria Sentinel-2 series (west: {spec.halves[0]} split, east: "
                       f"{spec.halves[1]} split; dates moved by {spec.date_shift_days} days)",
        "token": spec.token(), "spec": dataclasses.asdict(spec),
        "epsg": spec.epsg, "transform": list(spec.transform)[:6], "width": spec.width, "height": spec.height,
        "bounds": list(spec.bounds), "bbox_lonlat": _geometry(spec)[1], "tile_px": spec.tile_px,
        "tiles": tiles, "west_cols": [0, spec.width // 2], "east_cols": [spec.width // 2, spec.width],
        "season": spec.season.model_dump(), "season_year": spec.season_year, "dates": dates,
        "cloudy_dates": {dates[k]: round(v, 4) for k, v in sorted(clouds.items())},
        "nodata_strip_date": dates[nodata_date],
        "classes": [{"id": i, "name": n, "colour": c} for i, (n, c) in enumerate(zip(class_names, colours))],
        "fields": fields,
        "files": {"catalog": "catalog.json", "reference": "reference.tif"},
    }
