"""Canonical Sentinel-2 band names and the aliases used by catalogs and data sets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from cropmap.errors import MissingBandError

__all__ = ["S2_BANDS", "S2_ORDER", "SCL", "canonical_band", "require_bands"]

#: The seed's 10 Sentinel-2 L2A bands, in the order of the feature matrix rows.
S2_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
SCL = "SCL"
#: Every Sentinel-2 band a file may hold, in canonical order (S2_BANDS plus the 60 m ones).
S2_ORDER: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

# Earth Search v1 asset keys, common_name values and the seed's short names (B2 ...).
_ALIASES: dict[str, str] = {
    "coastal": "B01", "blue": "B02", "green": "B03", "red": "B04",
    "rededge1": "B05", "rededge2": "B06", "rededge3": "B07", "nir": "B08",
    "nir08": "B8A", "nir09": "B09", "cirrus": "B10", "swir16": "B11", "swir22": "B12",
    "scl": "SCL", "B1": "B01", "B2": "B02", "B3": "B03", "B4": "B04", "B5": "B05",
    "B6": "B06", "B7": "B07", "B8": "B08", "B9": "B09",
}
for _b in (*S2_BANDS, "B01", "B09", "B10", "SCL"):
    _ALIASES[_b] = _b
    _ALIASES[_b.lower()] = _b


def canonical_band(name: str) -> str | None:
    """Canonical name (``B02`` ... ``B12``, ``SCL``) of a band alias, or None if not a S2 band.

    >>> canonical_band("nir08"), canonical_band("B2"), canonical_band("swir16")
    ('B8A', 'B02', 'B11')
    """
    return _ALIASES.get(name) or _ALIASES.get(name.lower())


def require_bands(available: Iterable[str], needed: Sequence[str], *, where: str) -> None:
    """Raise :class:`MissingBandError` naming every band of ``needed`` absent from ``available``."""
    have = set(available)
    missing = [b for b in needed if b not in have]
    if missing:
        raise MissingBandError(
            f"{where}: band(s) {', '.join(missing)} missing; available: {', '.join(sorted(have)) or 'none'}"
        )
