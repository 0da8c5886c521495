"""``python -m flows.map_country`` in a checkout: the flow of :mod:`cropmap.flows.map_country`, run in this process."""

import sys

from cropmap.flows.map_country import map_country, main

__all__ = ["map_country"]

if __name__ == "__main__":
    sys.exit(main())
