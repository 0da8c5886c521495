"""The data variants of an experiment grid: the seasons and class selections its axes multiply."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from cropmap.core.season import Season, shift_months
from cropmap.errors import ConfigError, one_line
from cropmap.research.config import Axes, ExperimentConfig, Minority

__all__ = ["Variant", "variants", "window_start", "minority_subsample"]


@dataclass(frozen=True)
class Variant:
    """One point of the axes grid: the season it composites onto and the class selection it trains on."""

    values: tuple[tuple[str, str], ...]  # (axis, value name), in axis order; empty without axes
    season: Season  # the source's (the model's)
    context: Season
    target_season: Season  # the target's: the source's, or six months later across hemispheres
    classes: tuple[str, ...] | None = None
    minority: Minority | None = None
    target_year: int | None = None  # keep only the target's samples of this season year

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values)

    @property
    def slug(self) -> str:
        return "_".join(f"{k}-{v}" for k, v in self.values).replace("/", "-").replace(" ", "")


def window_start(context: Season, season: Season, year: int) -> int:
    edges, inner = context.bin_edges(year), season.bin_edges(year)
    hit = np.flatnonzero(edges[:-1] == inner[0])
    if hit.size == 0 or hit[0] + season.n_bins > context.n_bins or season.bin_days != context.bin_days:
        raise ConfigError(f"season {season.describe()} does not sit on the bins of the context season "
                          f"{context.describe()}")
    return int(hit[0])


def variants(cfg: ExperimentConfig) -> list[Variant]:
    """The grid's data variants: the product of the config's axes (one variant, the base, without).

    The season of a variant takes ``span`` (northern months; both moved by six months when the base
    season is southern and ``hemisphere_offset`` is on, the default) and ``bin_days``; without a span
    axis it keeps the base season's window. The target's season is the same, unless the target lies in
    the other hemisphere (``target.hemisphere``): then it is six months later (offset on) or the same
    months (off). Its context (the series augmentation reads) is the config's ``context_season`` with
    the variant's bin length, else the season itself. The season year is always the data spec's
    ``year``. Raises :class:`ConfigError` for a season that sits off its context's bins, or a target
    season of another length.
    """
    base, axes = cfg.season, cfg.axes or Axes()
    options: list[tuple[str, list[tuple[str, Any]]]] = []
    if axes.span:
        options.append(("span", list(axes.span.items())))
    if axes.hemisphere_offset:
        options.append(("hemisphere_offset", [("on" if v else "off", v) for v in axes.hemisphere_offset]))
    if axes.bin_days:
        options.append(("bin_days", [(str(b), b) for b in axes.bin_days]))
    if axes.classes:
        options.append(("classes", list(axes.classes.items())))
    if axes.minority:
        options.append(("minority", list(axes.minority.items())))
    if axes.target_year:
        options.append(("target_year", [(str(y), y) for y in axes.target_year]))
    north = (base.start, base.end) if base.hemisphere == "north" else (
        shift_months(base.start, 6), shift_months(base.end, 6))
    out = []
    for combo in itertools.product(*(values for _, values in options)):
        chosen = {axis: value for (axis, _), (_, value) in zip(options, combo)}
        bins = int(chosen.get("bin_days", base.bin_days))
        if "span" in chosen or "hemisphere_offset" in chosen:
            start, end = chosen.get("span", north)
            if base.hemisphere == "south" and chosen.get("hemisphere_offset", True):
                start, end = shift_months(start, 6), shift_months(end, 6)
        else:
            start, end = base.start, base.end
        try:
            season = Season(start=start, end=end, bin_days=bins, hemisphere=base.hemisphere)
        except ValidationError as err:
            raise ConfigError(f"experiment {cfg.name}: bad season {start}..{end}: {one_line(err)}") from err
        target_season = season
        target_hemisphere = cfg.target.hemisphere or base.hemisphere
        if target_hemisphere != base.hemisphere:
            offset = 6 if chosen.get("hemisphere_offset", True) else 0
            target_season = Season(start=shift_months(start, offset), end=shift_months(end, offset),
                                   bin_days=bins, hemisphere=target_hemisphere)
            if target_season.n_bins != season.n_bins:
                raise ConfigError(f"experiment {cfg.name}: the target season {target_season.describe()} has "
                                  f"another length than the source's {season.describe()}")
        if cfg.context_season is not None:
            context = cfg.context_season.model_copy(update={"bin_days": bins})
            window_start(context, season, cfg.source.year)
        else:
            context = season
        classes = chosen.get("classes")
        out.append(Variant(values=tuple((axis, name) for (axis, _), (name, _) in zip(options, combo)),
                           season=season, context=context, target_season=target_season,
                           classes=None if classes is None else tuple(classes),
                           minority=chosen.get("minority"), target_year=chosen.get("target_year")))
    return out


def minority_subsample(labels: np.ndarray, minority: Minority, class_names: list[str],
                       rng: np.random.Generator) -> np.ndarray:
    """Indices (sorted) of the samples kept when ``minority.class_name`` is cut to ``minority.fraction``
    of the kept samples: all samples of the other classes and ``k`` random members of the class,
    ``k / (others + k) ~ fraction`` (at least 2, so a stratified validation split still works)."""
    if minority.class_name not in class_names:
        raise ConfigError(f"minority class {minority.class_name!r} is not among the classes {class_names}")
    c = class_names.index(minority.class_name)
    members, others = np.flatnonzero(labels == c), np.flatnonzero(labels != c)
    k = max(2, int(round(minority.fraction * len(others) / (1 - minority.fraction))))
    if k < len(members):
        members = rng.choice(members, k, replace=False)
    return np.sort(np.concatenate([others, members]))
