"""The build-cube flow of :mod:`cropmap.flows.build_cube` (deployments run it; ``cropmap cube`` builds cubes from the
command line)."""

from cropmap.flows.build_cube import build_cube

__all__ = ["build_cube"]
