"""cropmap: country-scale crop type mapping from Sentinel-2 with the invariant 2D median features and CropNet.

One module per stage, each a plain function testable without Prefect (README.md lists them):
:mod:`cropmap.season`, :mod:`cropmap.composite`, :mod:`cropmap.features`, :mod:`cropmap.samples` /
:mod:`cropmap.readers`, :mod:`cropmap.grid`, :mod:`cropmap.stac`, :mod:`cropmap.cube`,
:mod:`cropmap.models`, :mod:`cropmap.augment`, :mod:`cropmap.train`, :mod:`cropmap.evaluate`,
:mod:`cropmap.predict`, :mod:`cropmap.mosaic`, :mod:`cropmap.labels`, :mod:`cropmap.demo`.
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("cropmap")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
