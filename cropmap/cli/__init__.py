"""The ``cropmap`` command line: one module per group of commands, each a thin layer over the library.

Every command turns a :class:`~cropmap.errors.CropmapError` (and the OS and raster errors of a bad
location) into one line on stderr and exit code 2 (:func:`cropmap.cli.common.command`); SIGTERM into
``error: interrupted (SIGTERM); rerun the same command to resume``, this process's temporaries removed,
and exit code 143 (128 + 15, as a shell reports a SIGTERM, not 2, a bad input).
"""

from __future__ import annotations

from cropmap.cli import area, data, jobs, stages  # noqa: F401 - each module registers its commands on `app`
from cropmap.cli.common import app

__all__ = ["app"]
