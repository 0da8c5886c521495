"""``python -m flows.transfer ARGS`` in a checkout = ``cropmap transfer ARGS`` (:mod:`cropmap.cli.jobs`): the
transfer flow of :mod:`cropmap.flows.transfer`, run in this process."""

import sys

from cropmap.cli import app
from cropmap.flows.transfer import transfer

__all__ = ["transfer"]

if __name__ == "__main__":
    app(["transfer", *sys.argv[1:]], prog_name="python -m flows.transfer")
