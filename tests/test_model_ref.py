"""The model of a run is resolved once (issue 34): a map run hashes its checkpoint once, loads it where the
run is resolved and, for the weights, once per tile computed (never for a tile skipped), and hands every
predict task the same small frozen :class:`~cropmap.stages.model_ref.ModelRef`."""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections import Counter
from pathlib import Path

import pytest

from cropmap.jobs.executors import InlineExecutor
from cropmap.jobs.mapping import map_country
from cropmap.stages import predict_provenance

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Recording(InlineExecutor):
    """Inline, keeping the ``model`` argument of every predict task."""

    def __init__(self):
        self.models = []

    def submit(self, fn, /, *args, **kwargs):
        if fn.__name__ == "predict_tile":
            self.models.append(args[1])
        return super().submit(fn, *args, **kwargs)


def _count(monkeypatch) -> Counter:
    """Count the checkpoint's loads (each ``load_model``) and SHA-256 computations (each prediction key)."""
    calls: Counter = Counter()

    def counting(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(predict_provenance, "_file_sha256", counting("sha256", predict_provenance._file_sha256))
    monkeypatch.setattr(predict_provenance, "_cached_checkpoint",
                        counting("load", predict_provenance._cached_checkpoint))
    return calls


def test_a_map_run_resolves_its_model_once_and_hands_it_to_every_task(demo_run, slim_model, tmp_path, monkeypatch):
    """With the slim DEMO model: the counts do not depend on the weights."""
    run = demo_run.model_copy(update={"root": str(tmp_path / "run"), "cube_root": str(demo_run.cube_dir)})
    calls = _count(monkeypatch)
    executor = _Recording()
    result = map_country(run, executor, model=slim_model, tile_limit=2)
    done = sum(s.get("predict") == "done" for s in result.tiles.status.values())
    scored = result.accuracy is not None  # the score's model card reads the checkpoint once more
    assert done == 2
    assert calls["sha256"] == 1, calls  # one prediction key per run, not one per tile and check
    assert calls["load"] == 1 + done + scored, calls  # resolved once; the weights once per computed tile

    calls.clear()  # a rerun: every tile skipped without a look at the checkpoint
    again = map_country(run, _Recording(), model=slim_model, tile_limit=2)
    assert {s.get("predict") for s in again.tiles.status.values()} == {"skipped"}
    assert calls["sha256"] == 1 and calls["load"] == 1 + scored, calls

    from cropmap.stages.model_ref import ModelRef

    assert len(executor.models) == 2 and all(isinstance(m, ModelRef) for m in executor.models)
    assert len({id(m) for m in executor.models}) == 1  # the one value, not one per tile
    assert executor.models[0].key == result.key == again.key
    record = json.loads((Path(run.tile_dir(result.key)) / predict_provenance.RUN_FILE).read_text())
    assert record["run_key"] == result.key and record["checkpoint"] == executor.models[0].location


def test_the_model_ref_is_small_frozen_and_keeps_the_key(demo_run, demo_model):
    from cropmap.jobs.tiles import run_model
    from cropmap.ml.checkpoint import load_checkpoint

    ref = run_model(demo_run, demo_model)
    blob = pickle.dumps(ref)
    assert len(blob) < 2048, len(blob)  # it travels to the Dask workers with every predict task
    assert pickle.loads(blob) == ref
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.key = "other"
    # the key of the tiles' folder and tags, as before the value existed
    assert ref.key == predict_provenance.prediction_key(demo_model, demo_run.predict)
    ckpt = load_checkpoint(demo_model)
    assert (ref.bands, ref.season, ref.n_bins, ref.class_names) == (ckpt.bands, ckpt.season, ckpt.n_bins,
                                                                    ckpt.class_names)
    assert ref.has_ood == (ckpt.ood is not None) and ref.temperature == ckpt.temperature
    assert ref.output_options == demo_run.predict.for_checkpoint(ckpt)
    assert ref.location == str(Path(demo_model).resolve())


def test_a_model_resolved_for_other_options_is_refused(demo_run, demo_model, tmp_path):
    from cropmap.errors import ConfigError
    from cropmap.stages.model_ref import resolve_model
    from cropmap.stages.predict_options import PredictOptions

    other = resolve_model(location=demo_model, options=PredictOptions(max_filled_fraction=0.5))
    run = demo_run.model_copy(update={"root": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match="other predict options"):
        map_country(run, InlineExecutor(), model=other)
