"""Scenarios: prepared cases as data (the offline DEMO, ...), and a country run resolved from a code.

A country config names its scenario (``scenario: demo`` in ``configs/countries/DEMO.yaml``);
:func:`resolve_run` loads the config, lets the scenario prepare itself (the DEMO builds its catalog and
points the config there) and returns the one :class:`~cropmap.jobs.country_run.CountryRun` that flows
and CLI hand to every task. Nothing outside this package knows any scenario by name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cropmap.errors import ScenarioError
from cropmap.io.config import CountryConfig, load_country
from cropmap.jobs.country_run import (
    CountryRun,
    Scenario,
    output_root,
    resolve_country_run,
)
from cropmap.scenarios import demo
from cropmap.stages.cube import CubeOptions
from cropmap.stages.predict import PredictOptions

__all__ = ["SCENARIOS", "DEFAULT_COUNTRY", "prepare_scenario", "resolve_run"]

#: Scenario name -> how it prepares a config: ``(config, options) -> (config, Scenario)``.
SCENARIOS: dict[str, Callable[[CountryConfig, dict], tuple[CountryConfig, Scenario]]] = {
    "demo": demo.prepare,
}
#: The country the flows and ``cropmap demo run`` map when none is given: the offline DEMO.
DEFAULT_COUNTRY = demo.COUNTRY


def prepare_scenario(config: CountryConfig) -> tuple[CountryConfig, Scenario | None]:
    """The config as its scenario prepares it, and the scenario (``None`` when the config names none)."""
    if config.scenario is None:
        return config, None
    name = config.scenario.name
    if name not in SCENARIOS:
        raise ScenarioError(f"{config.code}: unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return SCENARIOS[name](config, dict(config.scenario.options))


def resolve_run(country: str, *, year: int | None = None, out_dir: str | None = None,
                configs_dir: str | Path | None = None, cube: CubeOptions = CubeOptions(),
                predict: PredictOptions = PredictOptions(), cube_dir: str | None = None,
                parts: list[str] | None = None) -> CountryRun:
    """The run of ``country`` (an ISO3 code with a config; ``year`` overrides the config's), outputs under
    ``out_dir`` (else the environment's output location, :func:`~cropmap.jobs.country_run.output_root`);
    ``parts``: the outline parts to map (default: the config's default parts).

    An unknown country, a malformed setting or an unwritable output location fails here, before any
    task: :class:`~cropmap.errors.UnknownCountryError` lists the known codes.
    """
    config = load_country(country, configs_dir)
    if year is not None:
        config = config.model_copy(update={"year": int(year)})
    root = output_root(out_dir)
    config, scenario = prepare_scenario(config)
    return resolve_country_run(config, out_root=root, scenario=scenario, cube=cube, predict=predict,
                               cube_dir=cube_dir, parts=parts)
