"""Splits of one real sample file that keep every field, location or spatial block on one side."""

from __future__ import annotations

import numpy as np
import pytest

from cropmap.errors import ConfigError
from cropmap.samples.splits import SplitSpec, group_folds, holdout_split, split_groups
from cropmap.samples.worldcereal import read_worldcereal


@pytest.fixture(scope="module")
def uga_ssd(shared_data):
    return read_worldcereal(shared_data / "worldcereal/test_public_extractions.parquet")


def _keys(ds, spec: SplitSpec) -> np.ndarray:
    """An independent key per sample (plain NumPy, no shared code with split_groups)."""
    lat, lon = ds["lat"].values, ds["lon"].values
    if spec.by == "location":
        return np.array([f"{a:.5f}/{b:.5f}" for a, b in zip(lat, lon)])
    if spec.by == "field":
        return ds[spec.column].values.astype(str)
    km = 6371.0088 * np.pi / 180
    return np.array([f"{int(np.floor(x / spec.block_km))}/{int(np.floor(y / spec.block_km))}"
                     for x, y in zip(lon * km * np.cos(np.deg2rad(lat)), lat * km)])


@pytest.mark.parametrize("spec", [SplitSpec(by="location"), SplitSpec(by="block", block_km=5),
                                  SplitSpec(by="block", block_km=20, seed=3), SplitSpec(by="field", column="region")],
                         ids=lambda s: s.describe())
def test_no_group_on_both_sides(uga_ssd, spec):
    train, test = holdout_split(uga_ssd, spec)
    assert len(train) and len(test) and len(np.intersect1d(train, test)) == 0
    assert len(train) + len(test) == uga_ssd.sizes["sample"]
    keys = _keys(uga_ssd, spec)
    assert not set(keys[train]) & set(keys[test])
    # the same partition of samples as the independent keys
    groups = split_groups(uga_ssd, spec)
    assert len(np.unique(groups)) == len(np.unique(keys))
    for fold_train, fold_test in group_folds(uga_ssd, spec, n_folds=2 if spec.by == "field" else 5):
        assert not set(groups[fold_train]) & set(groups[fold_test])


def test_random_split_does_leak_locations(uga_ssd):
    """The file holds the same points under several surveys: a pixel split puts copies on both sides."""
    train, test = holdout_split(uga_ssd, SplitSpec(by="random"))
    keys = _keys(uga_ssd, SplitSpec(by="location"))
    assert len(set(keys[train]) & set(keys[test])) > 10
    assert abs(len(test) / uga_ssd.sizes["sample"] - 0.3) < 0.01


def test_split_errors_name_the_problem(uga_ssd):
    with pytest.raises(ConfigError, match="needs a sample coordinate 'field_id'"):
        split_groups(uga_ssd, SplitSpec(by="field"))
    with pytest.raises(ConfigError, match="one group"):
        holdout_split(uga_ssd, SplitSpec(by="block", block_km=5000))
    with pytest.raises(ConfigError, match="lat/lon"):
        split_groups(uga_ssd.assign_coords(lat=("sample", np.full(500, np.nan))), SplitSpec(by="block"))
