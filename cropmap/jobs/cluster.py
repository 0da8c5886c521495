"""Where cropmap's Dask work runs: an existing scheduler by address, else a LocalCluster.

One decision, taken in one place: :func:`dask_target` resolves the scheduler address from the
config (the ``address`` argument), else ``$CROPMAP_DASK_ADDRESS``, else none (a LocalCluster is
started). The result gives either a connected ``distributed.Client`` (library code, scripts) or the
keyword arguments of ``prefect_dask.DaskTaskRunner`` (flows), so both paths agree.

On Kubernetes the address is the scheduler Service of the DaskCluster in ``deploy/``
(``tcp://cropmap-scheduler.<namespace>.svc.cluster.local:8786``); GPU workers there advertise the Dask
resource :data:`GPU_RESOURCE` (``--resources GPU=1``). Whether inference tasks request it is a second
decision, also taken here: :func:`gpu_workers_enabled` (the flow parameter ``gpu_workers``, else
``$CROPMAP_GPU_WORKERS``, else no) and :func:`inference_annotations` (the ``dask.annotate`` keywords).

Every process that runs cropmap's tasks imports this module (the flow or CLI process, and a Dask worker
unpickling a task of :mod:`cropmap.jobs.tiles` or :mod:`cropmap.flows`), and so logs a task that failed with
a :class:`~cropmap.errors.CropmapError` as one line, not Dask's dump of the task and its traceback.

>>> dask_target("tcp://10.0.0.5:8786").task_runner_kwargs()
{'address': 'tcp://10.0.0.5:8786'}
"""

from __future__ import annotations

import ast
import logging
import re
from dataclasses import dataclass
from typing import Any

from distributed import Client

from cropmap.errors import ConfigError, CropmapError, DaskClusterError
from cropmap.settings import get_settings

__all__ = ["ADDRESS_ENV", "GPU_RESOURCE", "GPU_WORKERS_ENV", "DaskTarget", "dask_target",
           "gpu_workers_enabled", "inference_annotations"]

#: Environment variable naming an existing scheduler, e.g. ``tcp://127.0.0.1:8786``.
ADDRESS_ENV = "CROPMAP_DASK_ADDRESS"
#: Dask resource name that GPU workers advertise (``dask worker --resources GPU=1``).
GPU_RESOURCE = "GPU"
#: Environment variable saying that the cluster has GPU workers (``1``/``true``/``yes``; ``0``/``false``/
#: ``no`` or unset: it has none), so that inference tasks must run there. ``deploy/`` sets it to ``1``.
GPU_WORKERS_ENV = "CROPMAP_GPU_WORKERS"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


class _OneLineCropmapErrors(logging.Filter):
    """Rewrite the worker's multi-line "Compute Failed" record of a task that raised a cropmap error into
    ``Compute Failed: <key>: <Error>: <message>``: the message already says what to do, and the caller
    reports it too (:mod:`cropmap.jobs.tile_pipeline` keeps the traceback in ``<run>/failures/``). Any
    other error keeps Dask's dump: it is a bug to read the traceback of."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if str(record.msg).startswith("Compute Failed\n") and isinstance(args, tuple) and len(args) >= 4:
            text = str(args[3])  # distributed's exception_text: repr(error), e.g. "StorageError('...')"
            name = text.split("(", 1)[0]
            if name in _names(CropmapError):
                # still "Compute Failed": the CLI drops these, each tile's failure is its own line there
                record.msg, record.args = "Compute Failed: %s: %s: %s", (args[0], name, _message(text, name))
        return True


def _names(cls: type) -> set[str]:
    """The names of ``cls`` and its subclasses, those of other modules included (asked when needed:
    they are defined as modules are imported)."""
    return {cls.__name__}.union(*(_names(sub) for sub in cls.__subclasses__()))


def _message(text: str, name: str) -> str:
    """The message of an error from its ``repr`` (``Name('message')``), on one line."""
    try:
        value = ast.literal_eval(text[len(name):])  # "('message')": the message; ("a", "b"): a tuple
    except (ValueError, SyntaxError):
        value = text
    return " ".join((value if isinstance(value, str) else text).split())


logging.getLogger("distributed.worker").addFilter(_OneLineCropmapErrors())

# scheme://host:port, or host:port (Dask then assumes tcp://); IPv6 hosts in brackets.
_ADDRESS = re.compile(r"^(?:(tcp|tls|ucx|inproc|ws|wss)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?(/.*)?$")


@dataclass(frozen=True)
class DaskTarget:
    """A resolved choice of Dask cluster (frozen, cheap, picklable).

    ``address``: scheduler address, or None for a LocalCluster started on demand with
    ``n_workers`` worker processes (threads if ``processes`` is False) of ``threads_per_worker``
    threads and ``memory_limit`` each (Dask's syntax, e.g. ``"4GiB"``; None = Dask's default share).
    ``source`` says where the address came from (``"config"``, ``"env"`` or ``"local"``).
    """

    address: str | None
    source: str
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    processes: bool = True
    timeout_s: float = 30.0

    @property
    def is_local(self) -> bool:
        return self.address is None

    def _local_kwargs(self) -> dict[str, Any]:
        # ":0", not None: with None the HTTP server still asks for port 8787 and warns on stderr when a
        # second cropmap command (or any Dask user) holds it; ":0" takes a free port, silently
        kwargs: dict[str, Any] = {"processes": self.processes, "dashboard_address": ":0"}
        if self.n_workers is not None:
            kwargs["n_workers"] = self.n_workers
        if self.threads_per_worker is not None:
            kwargs["threads_per_worker"] = self.threads_per_worker
        if self.memory_limit is not None:
            kwargs["memory_limit"] = self.memory_limit
        return kwargs

    def task_runner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``prefect_dask.DaskTaskRunner(**kwargs)``.

        An address gives ``{"address": ...}``; otherwise a ``distributed.LocalCluster`` class path and
        its kwargs, which the runner starts and stops with the flow run.
        """
        if self.address is not None:
            return {"address": self.address}
        return {"cluster_class": "distributed.LocalCluster", "cluster_kwargs": self._local_kwargs()}

    def client(self) -> Client:
        """A connected ``distributed.Client``; use it as a context manager so it is closed.

        With an address, connects to that scheduler (raises :class:`DaskClusterError` after
        ``timeout_s`` if it cannot be reached). Without one, starts a LocalCluster that the client owns:
        closing the client stops it.
        """
        if self.address is None:
            return Client(**self._local_kwargs())
        try:
            return Client(self.address, timeout=self.timeout_s)
        except (OSError, TimeoutError) as err:
            raise DaskClusterError(
                f"no Dask scheduler answered at {self.address} (from {self.source}) within "
                f"{self.timeout_s:g} s: start one (`dask scheduler`), fix the address, or unset "
                f"{ADDRESS_ENV} and the config's dask address to use a local cluster ({err})"
            ) from err


def dask_target(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: str | None = None,
    processes: bool = True,
    timeout_s: float = 30.0,
) -> DaskTarget:
    """Resolve where Dask work runs: ``address`` (from config), else ``$CROPMAP_DASK_ADDRESS``, else local.

    An empty string counts as unset. The local-cluster options apply only when no address is found.
    Raises :class:`~cropmap.errors.ConfigError` for an address that is not ``[scheme://]host[:port]``.
    Nothing is started or contacted here: call :meth:`DaskTarget.client` or pass
    :meth:`DaskTarget.task_runner_kwargs` to Prefect.
    """
    source = "config"
    if not address:
        address, source = get_settings().dask_address, "env"
    if address is None:
        source = "local"
    else:
        address = address.strip()
        if not _ADDRESS.match(address):
            where = f"${ADDRESS_ENV}" if source == "env" else "the config's dask address"
            raise ConfigError(
                f"{where} = {address!r} is not a Dask scheduler address; expected e.g. "
                "'tcp://127.0.0.1:8786' or 'cropmap-scheduler.cropmap.svc.cluster.local:8786'"
            )
    if n_workers is not None and n_workers < 1:
        raise ConfigError(f"n_workers must be >= 1, got {n_workers}")
    return DaskTarget(
        address=address, source=source, n_workers=n_workers, threads_per_worker=threads_per_worker,
        memory_limit=memory_limit, processes=processes, timeout_s=timeout_s,
    )


def gpu_workers_enabled(setting: bool | str | None = None) -> bool:
    """Whether inference tasks must run on GPU workers: ``setting`` (a flow parameter or config value),
    else ``$CROPMAP_GPU_WORKERS``, else False.

    Decided by the deployment, not by the calling process: a flow-run pod has no GPU while its cluster
    does. Raises :class:`~cropmap.errors.ConfigError` for a value that is not a yes/no.

    >>> gpu_workers_enabled(True), gpu_workers_enabled("no")
    (True, False)
    """
    where = "the gpu_workers setting"
    if setting is None:
        setting, where = get_settings().gpu_workers, f"${GPU_WORKERS_ENV}"
    if isinstance(setting, bool):
        return setting
    text = str(setting).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ConfigError(f"{where} = {setting!r} is not a yes/no value; use 1 (the cluster has workers started "
                          f"with --resources {GPU_RESOURCE}=1) or 0")
    return text in _TRUE


def inference_annotations(gpu: bool) -> dict[str, Any]:
    """Keywords for ``dask.annotate(**...)`` around the submission of inference tasks:
    ``{"resources": {"GPU": 1}}`` when ``gpu`` (the task then runs only on a worker advertising
    :data:`GPU_RESOURCE`, one per GPU at a time), else none. ``distributed.Client.submit`` merges
    these annotations, and so does prefect-dask's ``DaskTaskRunner``, which submits through it.

    >>> inference_annotations(True), inference_annotations(False)
    ({'resources': {'GPU': 1}}, {})
    """
    return {"resources": {GPU_RESOURCE: 1}} if gpu else {}
