"""cropmap: country-scale crop type mapping from Sentinel-2 with the invariant 2D median features and CropNet.

One folder per layer, each importing only the layers below it (docs/architecture.md; checked by
``lint-imports``): :mod:`cropmap.core` (values and pure computations) < :mod:`cropmap.io` (storage, STAC,
data, configs, outlines) < :mod:`cropmap.samples` | :mod:`cropmap.ml` < :mod:`cropmap.stages` (cube,
predict, mosaic) < :mod:`cropmap.jobs` (a country run, per-tile jobs, executors) < :mod:`cropmap.scenarios`
| :mod:`cropmap.research` < :mod:`cropmap.cli`; ``flows/`` (Prefect) on top. :mod:`cropmap.errors` and
:mod:`cropmap.settings` serve every layer.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("cropmap")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
