"""flows._prefect_engine: a Prefect task run on a worker reuses the process's TLS context and validated
settings instead of rebuilding them, and behaves as before (same settings, the caller's explicit TLS
choice kept). Its speed is measured in bench/scale.py, not here."""

from __future__ import annotations

import copy
import os
import ssl
import subprocess
import sys
from pathlib import Path

import prefect.context
import prefect.task_engine
import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_API_TLS_INSECURE_SKIP_VERIFY, get_current_settings, temporary_settings

from cropmap.flows import _prefect_engine

ROOT = Path(__file__).resolve().parents[1]
API = "http://127.0.0.1:9/api"  # never contacted: building a client sends nothing


@pytest.fixture
def installed():
    assert _prefect_engine.install(), "Prefect's task engine no longer has the shape flows/_prefect_engine.py expects"
    _prefect_engine._tls_context.cache_clear()
    _prefect_engine._settings_cache.clear()
    yield


def _counting(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_api_clients_share_one_tls_context(installed, monkeypatch):
    built = _counting(monkeypatch, ssl, "create_default_context")
    clients = [SyncPrefectClient(API) for _ in range(3)]
    assert len(built) == 1, f"{len(built)} TLS contexts built for 3 API clients"
    assert _prefect_engine.api_tls_context().verify_mode == ssl.CERT_REQUIRED


def test_the_insecure_setting_gets_its_own_unverified_context(installed):
    verified = _prefect_engine.api_tls_context()
    with temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        insecure = _prefect_engine.api_tls_context()
    assert insecure is not verified and insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname


def test_an_explicit_verify_is_the_callers(installed, monkeypatch):
    seen = []
    wrapped = _prefect_engine._sharing_tls(lambda self, api, httpx_settings=None: seen.append(httpx_settings))
    wrapped(None, API, httpx_settings={"verify": False})
    wrapped(None, API, httpx_settings={"timeout": 5})
    assert seen[0] == {"verify": False}
    assert seen[1]["timeout"] == 5 and seen[1]["verify"] is _prefect_engine.api_tls_context()


def test_serialized_settings_are_validated_once_and_stay_the_same(installed, monkeypatch):
    serialized = {"settings_context": get_settings_context().serialize()}
    other = copy.deepcopy(serialized)
    other["settings_context"]["settings"]["logging"] = {"level": "ERROR"}  # only the set values are serialized
    built = []

    class Counting(SettingsContext):  # same context variable; counts the validations from plain dicts
        def __init__(self, **fields):
            if isinstance(fields.get("settings"), dict):
                built.append(fields)
            super().__init__(**fields)

    monkeypatch.setattr(prefect.context, "SettingsContext", Counting)
    client = SyncPrefectClient(API)
    seen = []
    for context in (serialized, serialized, other, serialized):
        with prefect.task_engine.hydrated_context(context, client=client):
            seen.append(get_current_settings())
    assert len(built) == 2, f"{len(built)} settings validations for 2 distinct settings"
    assert seen[0] is seen[1] is seen[3]
    assert seen[0] == SettingsContext(**serialized["settings_context"]).settings  # what Prefect builds
    assert seen[2].logging.level == "ERROR" and seen[0].logging.level != "ERROR"


def test_every_patched_name_has_the_shape_it_was_written_against():
    """Fails when a Prefect release moves one of the patched internals (then install() is a no-op)."""
    assert _prefect_engine.shape_problems() == []


def test_a_moved_internal_leaves_prefect_untouched(monkeypatch):
    from prefect.client.orchestration import PrefectClient

    monkeypatch.setattr(_prefect_engine, "installed", lambda: False)
    monkeypatch.setattr(PrefectClient, "__init__", lambda self, api, verify=None: None)  # a new signature
    before = prefect.task_engine.hydrated_context
    assert _prefect_engine.shape_problems() == ["PrefectClient.__init__ takes no httpx_settings"]
    assert _prefect_engine.install() is False and prefect.task_engine.hydrated_context is before


@pytest.mark.parametrize("setting, expected", [("", "False"), ("1", "True")])
def test_the_tasks_module_installs_it_only_when_asked(setting, expected):
    env = {**os.environ, "CROPMAP_PREFECT_REUSE": setting}
    out = subprocess.run([sys.executable, "-c", "import cropmap.flows.tasks, cropmap.flows._prefect_engine as e; print(e.installed())"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == expected
