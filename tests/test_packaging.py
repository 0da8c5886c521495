"""The project as users install it: a wheel (not the editable checkout) holds everything a flow run, a Dask
worker or a Prefect worker needs (the flows, the country configs, legends and experiments), and runs from
another folder with no data folder and no checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_FROM_THE_WHEEL = r"""
import sys
from pathlib import Path
import cropmap
site = Path(sys.argv[1]).resolve()
assert Path(cropmap.__file__).resolve().is_relative_to(site), cropmap.__file__
from prefect.flows import load_flow_from_entrypoint
from cropmap.io.config import known_countries, load_country
from cropmap.io.outlines import load_aoi
import cropmap.flows.tasks
for name in ("map_country", "train_model", "transfer", "build_cube"):  # deploy/prefect.yaml's entrypoints
    flow = load_flow_from_entrypoint(f"cropmap.flows.{name}.{name}", use_placeholder_flow=False)
    assert Path(sys.modules[flow.fn.__module__].__file__).resolve().is_relative_to(site)
argentina = load_country("ARG")
assert not load_aoi(argentina).is_empty  # the outline without any data folder
print(len(known_countries()), "countries;", argentina.name)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
                   check=True, timeout=600, cwd=out)
    return next(out.glob("cropmap-*.whl"))


def test_the_wheel_holds_the_flows_and_the_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("map_country", "train_model", "transfer", "build_cube", "tasks", "_runner"):
        assert f"cropmap/flows/{module}.py" in names
    for folder in ("countries", "legends", "experiments"):
        shipped = {n for n in names if n.startswith(f"cropmap/configs/{folder}/") and n.endswith(".yaml")}
        in_checkout = {f"cropmap/configs/{folder}/{p.name}" for p in (ROOT / "cropmap/configs" / folder).glob("*.yaml")}
        assert shipped == in_checkout != set()
    assert not any(n.startswith(("flows/", "tests/", "configs/")) for n in names)


def test_the_installed_wheel_runs_from_another_folder_without_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, timeout=300)
    run = tmp_path / "elsewhere"
    run.mkdir()
    # the unpacked wheel first on the path (the venv's editable finder comes after it), nothing of the
    # checkout: no data folder, no configs folder, another working directory
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "PYTHONPATH": str(site),
           "CROPMAP_DATA_DIR": str(tmp_path / "no-data"), "PREFECT_HOME": str(tmp_path / "prefect")}
    done = subprocess.run([sys.executable, "-c", _FROM_THE_WHEEL, str(site)], cwd=run, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Argentina" in done.stdout
