"""Scenarios: prepared cases as data (the offline DEMO, ...), and a country run resolved from a code.

A country config names its scenario (``scenario: demo`` in ``configs/countries/DEMO.yaml``);
:func:`resolve_run` loads the config, lets the scenario prepare itself (the DEMO builds its catalog and
points the config there) and returns the one :class:`~cropmap.jobs.country_run.CountryRun` that flows
and CLI hand to every task. Nothing outside this package knows any scenario by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cropmap.core.bands import canonical_band
from cropmap.errors import ConfigError, IncompatibleInputError, ScenarioError
from cropmap.io.config import CountryConfig, load_country
from cropmap.jobs.country_run import (
    CountryRun,
    Scenario,
    output_root,
    resolve_country_run,
)
from cropmap.jobs.training import CheckpointResult
from cropmap.scenarios import demo, real
from cropmap.stages.cube import CubeOptions
from cropmap.stages.predict import PredictOptions, load_model

__all__ = ["SCENARIOS", "SCENARIO_MODELS", "DEFAULT_COUNTRY", "prepare_scenario", "resolve_run", "run_bands",
           "run_predict_options", "scenario_model"]

#: Scenario name -> how it prepares a config: ``(config, options) -> (config, Scenario or None)``.
SCENARIOS: dict[str, Callable[[CountryConfig, dict], tuple[CountryConfig, Scenario | None]]] = {
    "demo": demo.prepare,
    "real": real.prepare,
}
#: Scenario name -> how it trains its own checkpoint without cubes: ``(out, config=, epochs=) -> CheckpointResult``.
SCENARIO_MODELS: dict[str, Callable[..., CheckpointResult]] = {
    "real": real.train_real_checkpoint,
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
                predict: Mapping[str, Any] | None = None, cube_dir: str | None = None,
                parts: list[str] | None = None, bands: Sequence[str] | None = None,
                model: str | None = None, keep_cubes: bool = True) -> CountryRun:
    """The run of ``country`` (an ISO3 code with a config; ``year`` overrides the config's), outputs under
    ``out_dir`` (else the environment's output location, :func:`~cropmap.jobs.country_run.output_root`);
    ``parts``: the outline parts to map (default: the config's default parts); ``keep_cubes`` false: the
    mapped tiles' cubes are built in each worker's scratch and deleted once predicted; ``predict``: predict
    options over the config's ``predict:`` section, key by key (:func:`run_predict_options`).

    The cubes' bands (:func:`run_bands`): those of the checkpoint ``model`` when a run maps with one,
    else ``bands`` (``cropmap train --bands``), else the config's ``bands:``, else ``cube``'s (the ten).
    An unknown country, a malformed setting, an unreadable checkpoint or an unwritable output location
    fails here, before any task: :class:`~cropmap.errors.UnknownCountryError` lists the known codes.
    """
    config = load_country(country, configs_dir)
    if year is not None:
        config = config.model_copy(update={"year": int(year)})
    options = run_predict_options(config, predict)  # a bad option fails before the output is probed
    root = output_root(out_dir)
    config, scenario = prepare_scenario(config)
    chosen = run_bands(config, bands=bands, model=model)
    if chosen is not None and tuple(chosen) != cube.bands:
        cube = dataclasses.replace(cube, bands=tuple(chosen))  # CubeOptions checks the names
    return resolve_country_run(config, out_root=root, scenario=scenario, cube=cube, predict=options,
                               cube_dir=cube_dir, parts=parts, keep_cubes=keep_cubes)


def run_predict_options(config: CountryConfig, given: Mapping[str, Any] | None = None) -> PredictOptions:
    """The predict options of a run of ``config``: its ``predict:`` section, then ``given`` (CLI flags, the
    flow's ``predict`` parameter; None values left out) key by key. An unknown key or a bad value raises
    :class:`~cropmap.errors.ConfigError` naming it and the keys there are."""
    merged = {**config.predict, **{k: v for k, v in (given or {}).items() if v is not None}}
    try:
        return PredictOptions(**merged)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{config.code}: predict option{'s' if not where else ' ' + where}: {first['msg']} "
                          f"(given {first.get('input')!r}); "
                          f"options: {', '.join(PredictOptions.model_fields)}") from None


def run_bands(config: CountryConfig, *, bands: Sequence[str] | None = None,
              model: str | None = None) -> tuple[str, ...] | None:
    """The bands a run of ``config`` builds its cubes with: the checkpoint ``model``'s (read once, here;
    ``bands`` given as well must be the same), else ``bands``, else the config's; None: the default."""
    given = None if bands is None else tuple(canonical_band(b) or b for b in bands)
    if model is None:
        return given if given is not None else config.bands
    checkpoint = load_model(model)
    if given is not None and given != tuple(checkpoint.bands):
        raise IncompatibleInputError(f"bands {list(given)} differ from the checkpoint's {list(checkpoint.bands)} "
                                     f"({model}); a map takes the checkpoint's bands, leave bands unset")
    return tuple(checkpoint.bands)


def scenario_model(country: str, out: str | Path, *, epochs: int | None = None,
                   configs_dir: str | Path | None = None) -> CheckpointResult:
    """The checkpoint the scenario of ``country`` trains itself (:data:`SCENARIO_MODELS`: the REAL scenario's
    4-band model from the Victoria series), written to ``out`` (kept when already there)."""
    config = load_country(country, configs_dir)
    name = config.scenario.name if config.scenario is not None else None
    if name not in SCENARIO_MODELS:
        raise ScenarioError(f"{country}: its scenario ({name or 'none'}) trains no model of its own; scenarios "
                            f"that do: {', '.join(SCENARIO_MODELS)} (others: `cropmap train`)")
    return SCENARIO_MODELS[name](out, config=config, epochs=epochs)
