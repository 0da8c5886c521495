"""``python -m flows.map_country ARGS`` in a checkout = ``cropmap map --prefect ARGS`` (:mod:`cropmap.cli.jobs`): the
map-country flow of :mod:`cropmap.flows.map_country`, run in this process."""

import sys

from cropmap.cli import app
from cropmap.flows.map_country import map_country

__all__ = ["map_country"]

if __name__ == "__main__":
    app(["map", "--prefect", *sys.argv[1:]], prog_name="python -m flows.map_country")
