"""``python -m flows.train_model ARGS`` in a checkout = ``cropmap train --prefect ARGS`` (:mod:`cropmap.cli.jobs`): the
train-model flow of :mod:`cropmap.flows.train_model`, run in this process."""

import sys

from cropmap.cli import app
from cropmap.flows.train_model import train_model

__all__ = ["train_model"]

if __name__ == "__main__":
    app(["train", "--prefect", *sys.argv[1:]], prog_name="python -m flows.train_model")
