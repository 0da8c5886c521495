"""The progress a CLI user sees while a job runs (issue 37): every long step reports, not only the tiles.

``cropmap train DEMO`` shows its epochs (``train epoch k/N``, from :func:`cropmap.ml.train.fit_model`'s epoch
callback through the executor: :mod:`cropmap.jobs.progress`), ``cropmap map DEMO`` its zone and national
mosaics (the national one window by window) and its scoring; stderr is not a terminal here, so the display writes one line per call
(:func:`cropmap.cli.common.tile_progress`). The scored map's quicklook is drawn again with its score, and its
STAC item still describes the file it points at.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cropmap.cli import app


@pytest.fixture(scope="module")
def cli_env(demo_paths):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CROPMAP_DEMO_DIR", str(demo_paths.root))
        mp.setenv("DASK_LOGGING__DISTRIBUTED", "error")
        yield


@pytest.fixture(scope="module")
def trained(cli_env, one_torch_thread, tmp_path_factory):
    out = tmp_path_factory.mktemp("progress_train")
    result = CliRunner().invoke(app, ["train", "DEMO", "--epochs", "3", "--out", str(out), "--threads", "2"])
    assert result.exit_code == 0, result.output + result.stderr
    return out, result


@pytest.fixture(scope="module")
def mapped(trained, slim_model):
    out, _ = trained  # the training tiles' cubes are reused
    result = CliRunner().invoke(app, ["map", "DEMO", "--model", slim_model, "--out", str(out), "--threads", "2"])
    assert result.exit_code == 0, result.output + result.stderr
    return out, result


def test_train_shows_every_epoch(trained):
    _, trained = trained
    epochs = re.findall(r"^train epoch (\d+)/(\d+): loss [0-9.]+, validation macro-F1 [0-9.]+ \((\d+)/3\)$",
                        trained.stderr, flags=re.M)
    assert epochs == [(str(k), "3", str(k)) for k in (1, 2, 3)], trained.stderr
    assert re.search(r"^samples sample set: \d+ samples \(1/1\)$", trained.stderr, flags=re.M), trained.stderr
    assert re.search(r"^cube \S+: \w+ \(1/\d+\)$", trained.stderr, flags=re.M), trained.stderr  # the tiles still


def test_map_shows_the_mosaics_and_the_scoring(mapped):
    _, result = mapped
    lines = [line for line in result.stderr.splitlines() if line.startswith(("mosaic ", "score "))]
    zone = next(line for line in lines if line.startswith("mosaic EPSG:"))
    assert lines[0] == "mosaic 1 zone(s): started (0/2)", result.stderr
    assert zone.endswith(": done (1/2)")
    assert lines[-4:-2] == ["mosaic national: started (1/2)", "mosaic national: done (2/2)"], result.stderr
    assert lines[-2] == "score map: started (0/1)"
    assert re.fullmatch(r"score map: OA 0\.\d{3} on [\d,]+ px \(1/1\)", lines[-1]), lines[-1]
    windows = re.findall(r"^national window (\d+)/(\d+): (\w+) \((\d+)/(\d+)\)$", result.stderr, flags=re.M)
    assert windows and windows[-1][0] == windows[-1][1] and {w[2] for w in windows} >= {"class"}, result.stderr


def test_a_scored_map_s_quicklook_gives_its_score_and_its_item_its_bytes(mapped):
    from PIL import Image

    from cropmap.stages.stac_assets import multihash_sha256

    out, _ = mapped
    maps = next(out.glob("DEMO/*/maps/*"))
    accuracy = json.loads((maps / "accuracy.json").read_text())
    png = maps / "DEMO_quicklook.png"
    title = Image.open(png).text["Title"]
    assert f"scored: OA {accuracy['oa']:.3f}, macro-F1 {accuracy['macro_f1']:.3f}" in title, title
    assert f"on {accuracy['n']:,} reference pixels" in title and "(DEMO)" in title, title
    asset = json.loads((maps / "DEMO.json").read_text())["assets"]["quicklook"]
    assert asset["href"] == "./DEMO_quicklook.png"
    assert (asset["file:size"], asset["file:checksum"]) == (png.stat().st_size, multihash_sha256(Path(png)))


def test_a_relay_reaches_the_display_in_this_process_and_logs_elsewhere(caplog):
    import logging
    import pickle

    from cropmap.jobs.progress import relayed

    calls: list = []
    with relayed(lambda *args, **kw: calls.append((args, kw))) as relay:
        copy = pickle.loads(pickle.dumps(relay))  # what a Dask worker thread of this process gets
        copy("train", "epoch 1/2", "loss 0.5", total=2)
    assert calls == [(("train", "epoch 1/2", "loss 0.5"), {"total": 2})]
    with caplog.at_level(logging.INFO, logger="cropmap.jobs.progress"):
        copy("train", "epoch 2/2", "loss 0.4", total=2)  # the display is gone, as in another process
    assert calls == [(("train", "epoch 1/2", "loss 0.5"), {"total": 2})]
    assert "train epoch 2/2: loss 0.4" in caplog.text
