"""The season: which dates are composited, and on which bins.

A :class:`Season` is stored in every cube and every checkpoint. A model applies to a cube whose season
has the model's bin length and bin count and whose window is the model's window, or that window moved
six months into the other hemisphere (the paper's offset), in any year: :meth:`Season.require_aligned`
is that one rule, for the product and the experiments alike. Anything else is refused before any work,
naming the season to build.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cropmap.errors import IncompatibleInputError

__all__ = ["Season", "NORTH", "SOUTH", "FULL_YEAR", "shift_months"]

Hemisphere = Literal["north", "south"]


def _parse_month_day(value: str) -> tuple[int, int]:
    try:
        month, day = (int(v) for v in value.split("-"))
        dt.date(2001, month, day)  # a non-leap year: "02-29" is not a season boundary
    except (ValueError, TypeError) as err:
        raise ValueError(f"expected 'MM-DD', got {value!r}") from err
    return month, day


class Season(BaseModel):
    """A seasonal window composited into fixed-length bins.

    ``start`` and ``end`` are ``"MM-DD"`` (both inclusive). When ``end`` comes before ``start`` in the
    calendar the window wraps into the next year (the southern-hemisphere season). The *season year*
    is the calendar year in which the window starts.

    >>> NORTH.n_bins, SOUTH.n_bins, FULL_YEAR.n_bins
    (43, 43, 73)
    >>> SOUTH.window(2022)
    (datetime.date(2022, 11, 1), datetime.date(2023, 5, 31))
    """

    model_config = ConfigDict(frozen=True)

    start: str = "05-01"
    end: str = "11-30"
    bin_days: int = Field(5, ge=1, le=366)
    hemisphere: Hemisphere = "north"

    @field_validator("start", "end")
    @classmethod
    def _check_month_day(cls, v: str) -> str:
        _parse_month_day(v)
        return v

    @classmethod
    def for_hemisphere(cls, hemisphere: Hemisphere, *, start: str = "05-01", end: str = "11-30",
                       bin_days: int = 5) -> "Season":
        """The northern window given by ``start``/``end``; in the south, the same window 6 months later."""
        if hemisphere == "south":
            start, end = shift_months(start, 6), shift_months(end, 6)
        return cls(start=start, end=end, bin_days=bin_days, hemisphere=hemisphere)

    @property
    def wraps_year(self) -> bool:
        return _parse_month_day(self.end) < _parse_month_day(self.start)

    def window(self, year: int) -> tuple[dt.date, dt.date]:
        """First and last day (inclusive) of the season starting in ``year``."""
        sm, sd = _parse_month_day(self.start)
        em, ed = _parse_month_day(self.end)
        return dt.date(year, sm, sd), dt.date(year + int(self.wraps_year), em, ed)

    @property
    def n_bins(self) -> int:
        """Number of bins (the same every year: a Feb 29 never adds a bin)."""
        first, last = self.window(2001)
        return -(-((last - first).days + 1) // self.bin_days)

    def bin_edges(self, year: int) -> np.ndarray:
        """``n_bins + 1`` edges (``datetime64[D]``); bin *i* holds dates in ``[edge[i], edge[i+1])``.

        The last bin is closed at the season's last day, so it may be shorter than ``bin_days`` (or a day
        longer, when a Feb 29 falls in the window).
        """
        first, last = self.window(year)
        edges = np.datetime64(first, "D") + np.arange(self.n_bins + 1) * np.timedelta64(self.bin_days, "D")
        edges[-1] = np.datetime64(last, "D") + np.timedelta64(1, "D")
        return edges

    def bin_starts(self, year: int) -> np.ndarray:
        """Start date of each bin, ``datetime64[ns]`` (the ``time`` coordinate of a composite)."""
        return self.bin_edges(year)[:-1].astype("datetime64[ns]")

    def in_hemisphere(self, hemisphere: Hemisphere) -> "Season":
        """This season for ``hemisphere``: itself, or its window six months later in the other hemisphere
        (the paper's offset: May-Nov in the north is Nov-May in the south)."""
        if hemisphere == self.hemisphere:
            return self
        return Season(start=shift_months(self.start, 6), end=shift_months(self.end, 6), bin_days=self.bin_days,
                      hemisphere=hemisphere)

    def require_aligned(self, other: "Season", *, what: str) -> int:
        """The months ``other`` (a cube's season) is offset from this one (a model's): 0 for the same
        window, 6 for this window moved six months into the other hemisphere; any year either way.

        Anything else (another bin length or bin count, a window that is neither) raises
        :class:`IncompatibleInputError` naming the season to build.
        """
        if other == self:
            return 0
        if other.hemisphere != self.hemisphere and other == self.in_hemisphere(other.hemisphere):
            return 6
        build = self.in_hemisphere(other.hemisphere)
        raise IncompatibleInputError(
            f"{what}: season {other.describe()} does not fit the model's {self.describe()}; build the input "
            f"with season {build.describe()}" + ("" if build == self else f" (the model's window six months later, "
                                                  f"as the {other.hemisphere} takes it) or {self.describe()}")
        )

    def require_same(self, other: "Season", *, what: str) -> None:
        """Raise :class:`IncompatibleInputError` unless ``other`` is this season exactly (training sets)."""
        if self != other:
            raise IncompatibleInputError(
                f"{what}: season {other.describe()} differs from the expected {self.describe()}; "
                "rebuild the input with the model's season"
            )

    def describe(self) -> str:
        return f"{self.start}..{self.end} ({self.hemisphere}, {self.bin_days}-day bins, {self.n_bins} bins)"

    def to_attrs(self) -> dict[str, str | int]:
        """Flat attributes for netCDF/Zarr metadata (round-trips through :meth:`from_attrs`)."""
        return {f"season_{k}": v for k, v in self.model_dump().items()}

    @classmethod
    def from_attrs(cls, attrs: dict) -> "Season":
        return cls(**{k.removeprefix("season_"): v for k, v in attrs.items() if k.startswith("season_")})


def shift_months(month_day: str, months: int) -> str:
    """``"MM-DD"`` moved by ``months`` calendar months; a month's last day stays a month's last day."""
    m, d = _parse_month_day(month_day)
    was_month_end = d == _month_length(m)
    m = (m - 1 + months) % 12 + 1
    d = _month_length(m) if was_month_end else min(d, _month_length(m))
    return f"{m:02d}-{d:02d}"


def _month_length(month: int) -> int:
    return (dt.date(2001 + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day


NORTH = Season.for_hemisphere("north")
SOUTH = Season.for_hemisphere("south")
FULL_YEAR = Season(start="01-01", end="12-31")
