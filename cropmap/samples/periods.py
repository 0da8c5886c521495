"""Dates of composited inputs: a value that is itself a monthly or dekadal median is dated by its period.

Extraction files store the period start as local midnight converted to UTC, e.g. ``2016-12-31 23:00``
for January 2017 (CET) and ``2017-04-30 22:00`` for May (CEST). Read literally, every value lands in
the previous month's bins and the season window loses its first month. :func:`snap_to_periods` moves
each timestamp to the NEAREST period start (month starts, or dekad starts on days 1, 11 and 21) when
every timestamp lies within ``tolerance`` of one, or to the period the reader call declares, and warns
when it moved any. Placement in the composite stays the period start (the bin it falls in); the
periods are not spread over the bins they cover.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd

from cropmap.errors import ConfigError, InvalidInputError

__all__ = ["Period", "snap_to_periods", "period_starts_near"]

Period = Literal["auto", "month", "dekad", "none"]


def _starts_around(times: pd.DatetimeIndex, period: str) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """For each time, the period start at or before it and the next one."""
    month = times.to_period("M").to_timestamp()
    if period == "month":
        return month, month + pd.DateOffset(months=1)
    day = times.day.to_numpy()
    k = np.minimum((day - 1) // 10, 2)  # dekad of the month: 0, 1, 2
    before = month + pd.to_timedelta(10 * k, unit="D")
    after = pd.DatetimeIndex(np.where(k < 2, before + pd.Timedelta(days=10), month + pd.DateOffset(months=1)))
    return pd.DatetimeIndex(before), after


def period_starts_near(times: pd.DatetimeIndex, period: Literal["month", "dekad"]) -> tuple[pd.DatetimeIndex, np.ndarray]:
    """The nearest ``period`` start of each time ``(time,)`` and the offset to it in hours (time - start)."""
    times = pd.DatetimeIndex(times)
    before, after = _starts_around(times, period)
    to_before = (times - before).total_seconds().to_numpy()
    to_after = (after - times).total_seconds().to_numpy()
    nearest = pd.DatetimeIndex(np.where(to_before <= to_after, before, after))
    return nearest, (times - nearest).total_seconds().to_numpy() / 3600.0


def snap_to_periods(
    times: pd.DatetimeIndex | np.ndarray,
    period: Period = "auto",
    *,
    tolerance_hours: float = 14.0,
    where: str = "timestamps",
) -> tuple[pd.DatetimeIndex, str]:
    """Timestamps of period composites moved to their period starts; returns (times, the period used).

    ``period``: ``"month"`` / ``"dekad"`` (declared: every time goes to its nearest start; one more than
    ``tolerance_hours`` away raises), ``"none"`` (as given) or ``"auto"``: the first of month and dekad
    whose starts every time lies within ``tolerance_hours`` of (14 h covers every time zone) AND whose
    spacing matches (median step 28-31 days, or 8-11 days), else ``"none"``. Moving any time warns, once,
    with an example. Times are naive (UTC as stored).
    """
    times = pd.DatetimeIndex(times)
    if period not in ("auto", "month", "dekad", "none"):
        raise ConfigError(f"period must be 'auto', 'month', 'dekad' or 'none', got {period!r}")
    if period == "none" or len(times) == 0:
        return times, "none"
    step = float(np.median(np.diff(np.unique(times.to_numpy())).astype("timedelta64[s]").astype(float))) / 86400 \
        if len(np.unique(times)) > 1 else np.nan
    options = ("month", "dekad") if period == "auto" else (period,)
    for option in options:
        snapped, offset = period_starts_near(times, option)
        if np.abs(offset).max() > tolerance_hours:
            if period != "auto":
                worst = int(np.abs(offset).argmax())
                raise InvalidInputError(f"{where}: {times[worst]} is {abs(offset[worst]):.0f} h from a {option} start "
                                        f"(tolerance {tolerance_hours:g} h): not {option} composites")
            continue
        if period == "auto" and not np.isnan(step) and not (
                (option == "month" and 27 <= step <= 32) or (option == "dekad" and 8 <= step <= 11.5)):
            continue
        moved = offset != 0
        if moved.any():
            i = int(np.flatnonzero(moved)[0])
            warnings.warn(f"{where}: {int(moved.sum())} of {len(times)} timestamps look like {option} starts shifted "
                          f"by a time zone (e.g. {times[i]} for {snapped[i].date()}); moved to the nearest {option} "
                          "start", UserWarning, stacklevel=2)
        return snapped, option
    return times, "none"
