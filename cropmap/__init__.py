"""cropmap: country-scale crop type mapping from Sentinel-2 with the invariant 2D median features and CropNet.

Stages, one module each (see docs/design.md): :mod:`cropmap.season`, :mod:`cropmap.composite`,
:mod:`cropmap.features`, :mod:`cropmap.samples` / :mod:`cropmap.readers`, ...
"""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("cropmap")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
