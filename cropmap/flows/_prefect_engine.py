"""Two costs that Prefect 3's task engine pays on every task run in a Dask worker, paid once per process.

A task run on a worker (``prefect.task_engine.run_task_sync``, which prefect-dask submits) rebuilds the
flow's settings from the serialized context (``SettingsContext(**dict)``: a full pydantic validation of
every setting, ~35 ms) and creates two API clients, each building a fresh TLS context from certifi's
bundle (~25 ms each, even for a plain-HTTP API). At two task runs per tile that is ~0.17 CPU-s per tile
on the tiles' CPUs (docs/performance.md; upstream PrefectHQ/prefect#19106).

:func:`install` keeps the behaviour and removes the repetition:

- every Prefect API client without an explicit ``verify`` gets the process's one TLS context, built by
  Prefect's own rule (``PREFECT_API_TLS_INSECURE_SKIP_VERIFY``, ``PREFECT_API_SSL_CERT_FILE``, else
  certifi) once per distinct value of those two settings;
- the settings of a serialized context are validated once per distinct content and reused as the model
  objects that ``SettingsContext`` would have built from them.

It is idempotent, and it leaves Prefect untouched unless every name it patches has the shape it was
written against (:func:`shape_problems`: Prefect 3.x, ``hydrated_context`` in ``prefect.context`` imported
by name into ``prefect.task_engine``, both API clients taking ``httpx_settings``).

**Opt-in**: :mod:`cropmap.flows._runner` installs it at import (every process that runs cropmap's tasks
imports it: a Dask worker does, to unpickle them) only where ``CROPMAP_PREFECT_REUSE=1``. Measured with
``bench/scale.py --tiles-x 20 --tiles-y 15 --counts 300 --baseline-counts 300`` (2026-12-07, 2 cores,
16 px tiles, one run each): orchestration overhead 1.128 s per tile with it against 1.309 s without
(wall 350.4 against 377.5 s for 300 tiles, tasks per tile 2.02 both); ~0.18 s per tile, about 0.1 % of a
real 1024 px tile's work, against patching three Prefect internals.
"""

from __future__ import annotations

import functools
import inspect
import json
import ssl
import threading
from collections.abc import Callable
from typing import Any

import certifi
import prefect.context
import prefect.task_engine
from prefect.client.orchestration import PrefectClient, SyncPrefectClient
from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

__all__ = ["install", "installed", "shape_problems", "api_tls_context"]

_INSTALLED = "__cropmap_once_per_process__"
_lock = threading.RLock()


@functools.lru_cache(maxsize=8)
def _tls_context(skip_verify: bool, cert_file: str | None) -> ssl.SSLContext:
    # Prefect's own rule (PrefectClient.__init__), built once per distinct setting
    if skip_verify:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=cert_file or certifi.where())


def api_tls_context() -> ssl.SSLContext:
    """The TLS context that Prefect would build for an API client under the current settings (shared)."""
    return _tls_context(bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value()), PREFECT_API_SSL_CERT_FILE.value() or None)


def _sharing_tls(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: Any, api: Any, *args: Any, httpx_settings: dict[str, Any] | None = None, **kwargs: Any) -> None:
        httpx_settings = dict(httpx_settings or {})
        if "verify" not in httpx_settings:  # an explicit verify (False, a path, a context) is the caller's
            httpx_settings["verify"] = api_tls_context()
        init(self, api, *args, httpx_settings=httpx_settings, **kwargs)

    setattr(__init__, _INSTALLED, True)
    return __init__


_settings_cache: dict[str, dict[str, Any]] = {}


def _plain(value: Any) -> Any:
    # serialized settings hold timedeltas and sets besides JSON types; repr is exact for both
    return sorted(map(repr, value)) if isinstance(value, (set, frozenset)) else repr(value)


def _settings_models(settings_context: dict[str, Any]) -> dict[str, Any]:
    key = json.dumps(settings_context, sort_keys=True, default=_plain)
    with _lock:
        models = _settings_cache.get(key)
    if models is None:
        built = prefect.context.SettingsContext(**settings_context)
        models = {"profile": built.profile, "settings": built.settings}
        with _lock:
            if len(_settings_cache) >= 16:  # a worker serves few distinct flow settings; stay bounded
                _settings_cache.clear()
            _settings_cache[key] = models
    return models


def _reusing_settings(hydrated_context: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(hydrated_context)
    def wrapper(serialized_context: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> Any:
        settings_context = (serialized_context or {}).get("settings_context")
        if isinstance(settings_context, dict) and isinstance(settings_context.get("settings"), dict):
            serialized_context = {**serialized_context, "settings_context": _settings_models(settings_context)}
        return hydrated_context(serialized_context, *args, **kwargs)

    setattr(wrapper, _INSTALLED, True)
    return wrapper


def installed() -> bool:
    """Whether :func:`install` took effect in this process."""
    return all(getattr(f, _INSTALLED, False) for f in
               (PrefectClient.__init__, SyncPrefectClient.__init__, prefect.task_engine.hydrated_context))


def shape_problems() -> list[str]:
    """What differs, in the Prefect installed here, from the shape every patched name must have (empty: all
    as expected). A Prefect release that moves one of them makes :func:`install` a no-op, not a break."""
    problems = []
    engine_ctx = getattr(prefect.task_engine, "hydrated_context", None)
    context_ctx = getattr(prefect.context, "hydrated_context", None)
    if context_ctx is None:
        problems.append("prefect.context.hydrated_context is gone")
    elif engine_ctx is not context_ctx and not getattr(engine_ctx, _INSTALLED, False):
        problems.append("prefect.task_engine.hydrated_context is not prefect.context.hydrated_context")
    elif "serialized_context" not in inspect.signature(getattr(context_ctx, "__wrapped__", context_ctx)).parameters:
        problems.append("hydrated_context takes no serialized_context")
    if not hasattr(prefect.context, "SettingsContext"):
        problems.append("prefect.context.SettingsContext is gone")
    for cls in (PrefectClient, SyncPrefectClient):
        params = inspect.signature(getattr(cls.__init__, "__wrapped__", cls.__init__)).parameters
        if "httpx_settings" not in params:
            problems.append(f"{cls.__name__}.__init__ takes no httpx_settings")
    return problems


def install() -> bool:
    """Share the API clients' TLS context and reuse validated settings across task runs (idempotent).

    Returns whether it is in effect; False, with Prefect unchanged, when the engine does not have the
    expected shape.
    """
    with _lock:
        if installed():
            return True
        if shape_problems():
            return False
        engine_ctx = prefect.task_engine.hydrated_context
        for cls in (PrefectClient, SyncPrefectClient):
            if not getattr(cls.__init__, _INSTALLED, False):
                cls.__init__ = _sharing_tls(cls.__init__)
        if not getattr(engine_ctx, _INSTALLED, False):
            wrapped = _reusing_settings(engine_ctx)
            prefect.task_engine.hydrated_context = wrapped
            prefect.context.hydrated_context = wrapped
        return True
