"""The map-country markdown artifact shows its quicklook in the Prefect UI: inline, never a file:// link."""

from __future__ import annotations

import base64

from cropmap.jobs.reports import EMBED_LIMIT, quicklook_markdown


def test_quicklook_is_embedded_not_linked(shared_data, tmp_path):
    png = tmp_path / "q.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.imsave(png, [[0, 1], [1, 0]])
    md = quicklook_markdown(png)
    assert md.startswith("![quicklook](data:image/png;base64,") and "file://" not in md
    assert base64.b64decode(md.split(",", 1)[1].rstrip(")")) == png.read_bytes()
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"0" * (EMBED_LIMIT + 1))
    assert "too large to embed" in quicklook_markdown(big) and "file://" not in quicklook_markdown(big)
    assert quicklook_markdown("https://example.org/q.png") == "![quicklook](https://example.org/q.png)"
    assert "none written" in quicklook_markdown(None)


def test_quicklook_scale_bar_and_title():
    import json

    from cropmap.stages.quicklook import _title, scale_bar_length

    assert [scale_bar_length(w) for w in (2_600, 10_000, 123_000, 7)] == [500, 2_000, 20_000, 1]
    season = json.dumps({"start": "08-01", "end": "07-31", "hemisphere": "south", "bin_days": 5, "n_bins": 73})
    title = _title("AUS_32755_class", {"season": season, "season_year": "2017", "model_name": "cropnet"})
    assert title == "AUS_32755_class - season 08-01..07-31 2017 - model cropnet"
    assert _title("x", {}) == "x"
