"""Median compositing of observations onto a season's bins, with gaps interpolated along time.

One implementation for every input: pixel sample sets ``(sample, time, band)`` and image cubes
``(time, band, y, x)``, NumPy or Dask backed, at any acquisition cadence (raw 2-5 day revisits,
5-day, 10-day, monthly). The per-chunk kernels are plain NumPy over arrays whose first axis is time;
:func:`median_composite` lifts them onto xarray objects with ``apply_ufunc``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from cropmap.core.season import Season

__all__ = ["median_composite", "median_by_bin", "interpolate_gaps", "bin_index"]


def bin_index(dates: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin number of each date (``-1`` outside the season).

    ``dates``: ``(time,)`` datetime64; ``edges``: ``(n_bins + 1,)`` from :meth:`Season.bin_edges`.
    """
    days = np.asarray(dates).astype("datetime64[D]")
    idx = np.searchsorted(edges, days, side="right") - 1
    idx[(days < edges[0]) | (days >= edges[-1])] = -1
    return idx


def median_by_bin(values: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """NaN-aware median of ``values`` over the dates of each bin.

    ``values``: ``(time, ...)`` float, NaN (and ±inf) = no valid observation; ``bins``: ``(time,)`` from
    :func:`bin_index`. Returns ``(n_bins, ...)`` float32; a bin without a valid value is NaN.

    Equals ``np.nanmedian`` over each bin's dates (the mean of the two middle values for an even
    count), but sorts each bin once instead of masking, which is many times faster for the few
    dates a bin holds.
    """
    values = np.asarray(values, dtype=np.float32)
    out = np.full((n_bins, *values.shape[1:]), np.nan, dtype=np.float32)
    for b in np.unique(bins[bins >= 0]):
        members = values[bins == b]  # a copy: the input is never changed
        # ±inf is no data: as a value it would win every median and interpolation it touched
        members[np.isinf(members)] = np.nan
        if len(members) == 1:
            out[b] = members[0]
            continue
        ordered = np.sort(members, axis=0)  # NaN sorts last
        n_valid = np.count_nonzero(~np.isnan(ordered), axis=0)
        lower = np.take_along_axis(ordered, np.maximum(n_valid - 1, 0)[None] // 2, axis=0)[0]
        upper = np.take_along_axis(ordered, (n_valid // 2)[None], axis=0)[0]
        out[b] = np.where(n_valid > 0, (lower + upper) / np.float32(2), np.nan)
    return out


def interpolate_gaps(binned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fill NaN bins by linear interpolation along axis 0, nearest value at the edges.

    ``binned``: ``(n_bins, ...)``. Returns ``(filled, was_gap)``: the filled array (float32) and a
    boolean mask of the bins that had no observation. A series with no valid bin at all stays NaN
    (and is all ``was_gap``): cropmap never invents values for it.
    """
    binned = np.asarray(binned, dtype=np.float32)
    n = binned.shape[0]
    flat = binned.reshape(n, -1)
    if flat.shape[1] <= _INTERP_BLOCK:
        return _interpolate_block(binned)
    # a cube chunk in blocks of series: the temporaries stay a few MB whatever the chunk size
    filled, was_gap = np.empty_like(flat), np.empty(flat.shape, dtype=bool)
    for j in range(0, flat.shape[1], _INTERP_BLOCK):
        filled[:, j:j + _INTERP_BLOCK], was_gap[:, j:j + _INTERP_BLOCK] = _interpolate_block(flat[:, j:j + _INTERP_BLOCK])
    return filled.reshape(binned.shape), was_gap.reshape(binned.shape)


_INTERP_BLOCK = 1 << 15  # series per block of interpolate_gaps


def _interpolate_block(binned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    was_gap = np.isnan(binned)
    n = binned.shape[0]
    # small integer indices: a cube chunk holds ~10^7 values, and int64 temporaries dominated the
    # kernel's peak memory (the weights below are exact either way, so results do not change)
    t = np.arange(n, dtype=np.int16 if n < 2**14 else np.int32).reshape((n,) + (1,) * (binned.ndim - 1))
    t = np.broadcast_to(t, binned.shape)
    # index of the previous / next valid bin at every position (-1 / n when there is none)
    prev = np.maximum.accumulate(np.where(was_gap, t.dtype.type(-1), t), axis=0)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(was_gap, t.dtype.type(n), t), axis=0), axis=0), axis=0)
    has_prev, has_next = prev >= 0, nxt < n
    both = has_prev & has_next
    v_prev = np.take_along_axis(binned, np.clip(prev, 0, n - 1), axis=0)
    v_next = np.take_along_axis(binned, np.clip(nxt, 0, n - 1), axis=0)
    # weights in float32: quotients of integers below 2**14 round identically in float32 and float64
    w = (t - prev).astype(np.float32)
    w /= np.maximum(nxt - prev, 1)  # span 0 on observed bins, which keep their value
    w[~both] = 0
    # in place, same operations as v_prev + w * (v_next - v_prev): float32 temporaries only
    filled = v_next - v_prev
    filled *= w
    filled += v_prev
    np.copyto(filled, v_prev, where=has_prev & ~has_next)  # after the last observation: nearest
    np.copyto(filled, v_next, where=~has_prev)  # before the first one (NaN if none at all)
    np.copyto(filled, binned, where=~was_gap)
    return filled, was_gap


def _composite_kernel(values: np.ndarray, bins: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    # apply_ufunc puts the core (time) axis last; the kernels want it first.
    moved = np.moveaxis(values, -1, 0)
    filled, was_gap = interpolate_gaps(median_by_bin(moved, bins, n_bins))
    return np.moveaxis(filled, 0, -1), np.moveaxis(was_gap, 0, -1)


def median_composite(
    obs: xr.DataArray,
    season: Season,
    year: int,
    *,
    valid: xr.DataArray | None = None,
    dim: str = "time",
) -> xr.DataArray:
    """Composite observations into the season's median bins, gaps interpolated.

    Parameters
    ----------
    obs
        Observations with a ``time`` dim of real dates, e.g. ``(time, band, y, x)`` for a cube or
        ``(sample, time, band)`` for pixel samples; surface reflectance (0..1 float), NaN or ±inf = no data.
        May be Dask-backed: time is rechunked to one chunk, every other dim keeps its chunks, and
        nothing is computed.
    season, year
        The window and bin length (:class:`~cropmap.core.season.Season`); ``year`` is the season year
        (the calendar year in which the window starts).
    valid
        Optional boolean mask broadcastable to ``obs`` (False = cloud, shadow, ...); masked values
        are dropped before the median.

    Returns
    -------
    xr.DataArray
        float32, same dims as ``obs`` with ``time`` = bin start dates (``season.n_bins`` of them).
        Non-dim coordinate ``filled_fraction`` (dims of ``obs`` without ``time`` and ``band``): the
        fraction of bins (over all bands) that had no valid observation and were interpolated;
        1.0 flags a series with no valid observation at all, whose values stay NaN.
        ``attrs`` carry the season (:meth:`Season.to_attrs`) and ``season_year``.
    """
    if valid is not None:
        obs = obs.where(valid)
    edges = season.bin_edges(year)
    bins = bin_index(obs[dim].values, edges)
    in_season = bins >= 0
    obs = obs.isel({dim: np.flatnonzero(in_season)})
    bins = bins[in_season]
    if obs.chunks is not None:
        obs = obs.chunk({dim: -1})
    bin_dim = "_bin"
    values, was_gap = xr.apply_ufunc(
        _composite_kernel,
        obs,
        input_core_dims=[[dim]],
        output_core_dims=[[bin_dim], [bin_dim]],
        kwargs={"bins": bins, "n_bins": season.n_bins},
        dask="parallelized",
        output_dtypes=[np.float32, bool],
        dask_gufunc_kwargs={"output_sizes": {bin_dim: season.n_bins}},
        keep_attrs=False,
    )
    values = values.rename({bin_dim: dim}).assign_coords({dim: season.bin_starts(year)})
    was_gap = was_gap.rename({bin_dim: dim})
    spread_dims = [d for d in (dim, "band") if d in was_gap.dims]
    filled_fraction = was_gap.mean(spread_dims).astype(np.float32)
    values = values.transpose(*obs.dims).assign_coords(filled_fraction=filled_fraction)
    values.attrs = {**season.to_attrs(), "season_year": year, "units": "surface reflectance (0-1)"}
    return values.rename(obs.name)
