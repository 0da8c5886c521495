"""Any sample file from a path: readers, ``samples summary PATH``, bands checked when the config loads,
regions as a list, the "everything else" legend rule and a foreign 9-band file end to end with a
spatial-block split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from cropmap.cli import app
from cropmap.core.harmonise import Legend, harmonise
from cropmap.errors import ConfigError
from cropmap.research.config import load_experiment, resolve_bands
from cropmap.samples.sources import SampleSource, read_sample_file, read_sample_set, source_bands
from cropmap.samples.victoria import read_victoria
from cropmap.samples.worldcereal import read_worldcereal

WC = "worldcereal/test_public_extractions.parquet"


@pytest.fixture()
def nine_band_file(shared_data, tmp_path) -> Path:
    """The real UGA/SSD extraction with every B8A column dropped: a foreign file of 9 bands."""
    table = pd.read_parquet(shared_data / WC)
    table = table.drop(columns=[c for c in table.columns if c.startswith("OPTICAL-B8A-")])
    path = tmp_path / "foreign.parquet"
    table.to_parquet(path)
    return path


def test_readers_take_paths(shared_data):
    wc = read_sample_file(shared_data / WC)
    assert wc.sizes["sample"] == 500 and "B8A" in wc["band"].values
    vic = read_sample_file(shared_data / "victoria_s2/test_dataset.csv")
    ref = read_victoria("test")
    np.testing.assert_array_equal(vic["reflectance"].values, ref["reflectance"].values)
    assert list(vic["class_name"].values) == list(ref["class_name"].values)
    with pytest.raises(ConfigError, match="no sample reader for '.md'"):
        read_sample_file(shared_data / "README.md")


def test_samples_summary_takes_a_path(nine_band_file):
    result = CliRunner().invoke(app, ["samples", "summary", str(nine_band_file)])
    assert result.exit_code == 0, result.output
    assert "foreign.parquet" in result.output and "500 x 12 x 9" in result.output
    bad = CliRunner().invoke(app, ["samples", "summary", "nope.parquet"])
    assert bad.exit_code != 0 and "neither a sample file nor a set" in bad.output


def test_regions_as_a_list(shared_data):
    one = SampleSource(path=WC, region="UGA", year=2016)
    both = SampleSource(path=WC, region=["UGA", "SSD"], year=2016)
    assert one.region == ["UGA"] and both.kind == "worldcereal"
    ds = read_sample_set(both, bands=["B04", "B08"])
    counts = pd.Series(ds["region"].values).value_counts()
    full = pd.Series(read_worldcereal(shared_data / WC)["region"].values).value_counts()
    assert set(counts.index) == {"UGA", "SSD"} and counts["UGA"] == full["UGA"] and counts["SSD"] == full["SSD"]


def _config(tmp_path: Path, data: Path, **change) -> Path:
    cfg = {"name": "foreign", "source": {"path": str(data), "year": 2016},
           "season": {"start": "12-01", "end": "11-30", "hemisphere": "north"},
           "seeds": [0], "forest": {"n_estimators": 20}, "threads": 1,
           "output": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"),
           "split": {"by": "block", "block_km": 5, "test_fraction": 0.3},
           "runs": [{"features": "1d", "model": "rf"}], **change}
    path = tmp_path / "foreign.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_missing_band_is_one_line_when_the_config_loads(nine_band_file, tmp_path):
    path = _config(tmp_path, nine_band_file, bands=["B02", "B8A", "B11"])
    with pytest.raises(ConfigError) as err:
        load_experiment(path)  # before any sample is read or any model trained
    text = str(err.value)
    assert "\n" not in text and "lacks band(s) B8A" in text and "foreign.parquet" in text
    result = CliRunner().invoke(app, ["experiment", str(path)])
    assert result.exit_code == 2 and "lacks band(s) B8A" in result.output and "Traceback" not in result.output
    cfg = load_experiment(_config(tmp_path, nine_band_file))
    bands, note = resolve_bands(cfg)
    assert bands == ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B11", "B12"]
    assert "not configured" in note and source_bands(cfg.source) == bands


def test_legend_other_takes_everything_else(shared_data):
    ds = read_worldcereal(shared_data / WC)
    legend = Legend(classes=["maize", "sorghum", "other"], mapping={"built_up": None}, other="other")
    out = harmonise(ds, legend)
    names = ds["class_name"].values[ds["label"].values]
    expect = np.where(np.isin(names, ["maize", "sorghum"]), names, "other")[names != "built_up"]
    np.testing.assert_array_equal(out["class_name"].values[out["label"].values], expect)
    with pytest.raises(ValueError, match="not among classes"):
        Legend(classes=["a", "b"], other="rest")


def test_foreign_nine_band_file_with_block_split_end_to_end(nine_band_file, tmp_path):
    path = _config(tmp_path, nine_band_file, legend=None)
    result = CliRunner().invoke(app, ["experiment", str(path)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(tmp_path / "out" / "foreign.csv")
    assert frame["split"].iloc[0].startswith("block 5 km") and 0 < frame["oa"].iloc[0] <= 1
    md = (tmp_path / "out" / "foreign.md").read_text()
    assert "split (test)" in md and "block 5 km" in md
