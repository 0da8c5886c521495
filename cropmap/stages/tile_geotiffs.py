"""A predicted tile's GeoTIFFs: their names (:func:`tile_path`), which products a run writes
(:func:`tile_products`), writing one (:func:`write_tile_geotiff`) and whether a tile is done
(:func:`tile_is_finished`).

Every product is a uint8 GeoTIFF ``<tile id>.<product>.tif`` on the cube's grid (its CRS and transform),
nodata :data:`~cropmap.stages.inference.NODATA` (255), DEFLATE, 256 x 256 blocks when the tile is at least
that big, published whole (:func:`cropmap.io.outputs.output_file`: temporary name then rename locally,
scratch file then one PUT in an object store) after a read-back check. The class map carries a colour
table and the class names (band tags ``class_<i>``); :func:`cropmap.stages.predict.write_tile_predictions` writes it
last, so its ``cropmap_run_key`` tag says the tile is complete. The other products are in ``percent`` (band
unit); the probability GeoTIFF has one band per class, in class order, each described by its class name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import matplotlib
import numpy as np
import rasterio

from cropmap.errors import StorageError
from cropmap.io import downloads, outputs, storage
from cropmap.stages.inference import NODATA
from cropmap.stages.predict_options import PredictOptions

__all__ = ["PRODUCTS", "PRODUCT_VARIABLE", "tile_path", "tile_products", "tile_is_finished", "write_tile_geotiff"]

#: Products written per tile; ``probability`` only with ``PredictOptions.probabilities``.
PRODUCTS = ("class", "confidence", "probability")
#: Dataset variable of each product (:func:`~cropmap.stages.inference.infer_cube`'s maps; "class" is the
#: dim of the probabilities).
PRODUCT_VARIABLE = {"class": "label", "confidence": "confidence", "probability": "probability", "ood": "ood"}


def tile_path(out_dir: storage.Location, tile_id: str, product: str) -> storage.Location:
    """``<out_dir>/<tile_id>.<product>.tif`` (a ``Path``, or a URL for an object store)."""
    return storage.join(out_dir, f"{tile_id}.{product}.tif")


def tile_products(options: PredictOptions) -> tuple[str, ...]:
    """The products a tile gets under ``options`` (``ood`` decided for the checkpoint), class first."""
    return (PRODUCTS if options.probabilities else PRODUCTS[:2]) + (("ood",) if options.ood else ())


def tile_is_finished(out_dir: storage.Location, tile_id: str, options: PredictOptions, key: str) -> bool:
    """Whether every product of the tile is in ``out_dir`` and its class map was written under ``key``."""
    paths = [tile_path(out_dir, tile_id, p) for p in tile_products(options)]
    if not all(storage.exists(p) for p in paths):
        return False
    with downloads.open_raster(paths[0]) as src:  # the class map is written last: it carries the key
        return src.tags().get("cropmap_run_key") == key


def _colormap(colours: Sequence[str] | None, n: int) -> dict[int, tuple[int, int, int, int]]:
    """Colour table entries for classes 0..n-1 (``#rrggbb``), nodata transparent."""
    if colours is None:
        colours = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors[:n]]
    cmap = {i: (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16), 255) for i, c in enumerate(colours)}
    cmap[NODATA] = (0, 0, 0, 0)
    return cmap


def write_tile_geotiff(path: storage.Location, data: np.ndarray, *, crs, transform, tags: dict, product: str,
                       checkpoint) -> None:
    """Publish ``data`` ``(band, y, x)`` uint8 as the ``product`` GeoTIFF at ``path`` (a path or URL).

    ``tags`` go on the dataset with ``product``; the class map also gets its colour table and
    ``class_<i>`` band tags from ``checkpoint`` (only read for ``class`` and ``probability``). A failed
    write (disk full, quota) is one :class:`~cropmap.errors.StorageError` and leaves no file under ``path``.
    """
    ny, nx = data.shape[1:]
    profile = {
        "driver": "GTiff", "dtype": "uint8", "count": data.shape[0], "height": ny, "width": nx,
        "crs": crs, "transform": transform, "nodata": NODATA, "compress": "deflate",
    }
    if ny >= 256 and nx >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with outputs.output_file(path) as tmp, _write_errors(path):
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data)
            dst.update_tags(**tags, product=product)
            if product == "class":
                dst.write_colormap(1, _colormap(checkpoint.class_colours, len(checkpoint.class_names)))
                dst.update_tags(1, **{f"class_{i}": n for i, n in enumerate(checkpoint.class_names)})
                dst.set_band_description(1, "crop class")
            elif product == "confidence":
                dst.set_band_description(1, "confidence (max calibrated softmax, percent)")
            elif product == "ood":
                dst.set_band_description(1, "distance from the training features (percent of the training threshold)")
            else:  # band i = class i - 1: its name, as GDAL, rioxarray (long_name) and QGIS show a band
                for i, name in enumerate(checkpoint.class_names, start=1):
                    dst.set_band_description(i, name)
            if product != "class":
                for i in range(1, data.shape[0] + 1):
                    dst.set_band_unit(i, "percent")
        outputs.check_raster(tmp, data, what=str(path))  # before the rename: never a truncated final file


@contextlib.contextmanager
def _write_errors(path: storage.Location):
    """GDAL's write errors (``RasterioIOError``, ``OSError``) as one :class:`StorageError` naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except (rasterio.errors.RasterioError, OSError) as err:
        raise StorageError(f"could not write {path} (disk full or quota?): "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
