from __future__ import annotations

import os
from pathlib import Path

import pytest

from cropmap.data import data_dir

DATA = data_dir()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (../shared/data or $CROPMAP_DATA_DIR); tests need it, CI has it."""
    if not DATA.exists():
        pytest.fail(f"real data folder {DATA} missing: set CROPMAP_DATA_DIR")
    return DATA


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_blas():
    # 2-core CI: keep BLAS from oversubscribing next to torch and Dask threads
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    yield


@pytest.fixture(scope="session")
def demo_paths(tmp_path_factory, shared_data):
    """The DEMO country (cropmap.demo) built once per session from the real Victoria series (~5-10 s)."""
    from cropmap.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo") / "demo")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, shared_data) -> Path:
    """A small CropNet checkpoint trained for seconds on the real Victoria train split (predict, mosaic)."""
    from test_predict import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
