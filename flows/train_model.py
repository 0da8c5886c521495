"""``python -m flows.train_model`` in a checkout: the flow of :mod:`cropmap.flows.train_model`, run in this process."""

from cropmap.flows.train_model import train_model

__all__ = ["train_model"]

if __name__ == "__main__":
    train_model()
