"""``python -m flows.transfer`` in a checkout: the flow of :mod:`cropmap.flows.transfer`, run in this process."""

import sys

from cropmap.flows.transfer import transfer, main

__all__ = ["transfer"]

if __name__ == "__main__":
    sys.exit(main())
