"""``python -m flows.build_cube`` in a checkout: the flow of :mod:`cropmap.flows.build_cube`, run in this process."""

from cropmap.flows.build_cube import build_cube

__all__ = ["build_cube"]

if __name__ == "__main__":
    build_cube()
