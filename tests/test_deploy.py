"""Offline checks of what a platform team deploys: the kustomize manifests in deploy/, the Prefect
Kubernetes work pool's base job template, and the worker image's Dockerfile.

- every kustomization renders with ``kubectl kustomize``;
- core kinds validate with ``kubernetes-validate -k 1.32.0 --strict``;
- DaskCluster / DaskWorkerGroup validate against the CRD schemas shipped in the dask-kubernetes wheel,
  strictly (unknown fields rejected, as the API server's strict field validation does);
- the base job template passes Prefect's own checks and renders, through prefect-kubernetes' job
  configuration, into a Job that validates;
- the Dockerfile is parsed (no Docker engine here) for base image, user, health check, entrypoint and
  the install order of scripts/bootstrap.sh.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import jsonschema
import pytest
import yaml

from cropmap.io import storage
from cropmap.jobs.cluster import GPU_RESOURCE, dask_target, gpu_workers_enabled

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))
KUBE_VERSION = "1.32.0"
DASK_KINDS = {"DaskCluster": "daskcluster.yaml", "DaskWorkerGroup": "daskworkergroup.yaml"}
TEMPLATE = DEPLOY / "base" / "prefect" / "base-job-template.json"
# Peak memory per worker thread of compositing 256 px chunks of a 512 px tile, 60 dates x 11 bands:
# 1241 MiB for 2 threads, measured with `.venv/bin/python bench/tile_memory_quick.py` (docs/scaling.md)
MEASURED_GIB_PER_THREAD = 1241 / 1024 / 2
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: cannot render kustomize")


def _render(folder: Path) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize {folder} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=[p.relative_to(DEPLOY).as_posix() for p in KUSTOMIZATIONS])
def rendered(request) -> tuple[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render kustomize")
    return request.param, _render(DEPLOY / request.param)


def _by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in _by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _kubernetes_validate(docs: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cli = Path(sys.executable).with_name("kubernetes-validate")
    return subprocess.run([str(cli), "-k", KUBE_VERSION, "--strict", "--quiet", str(path)],
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- rendering and core kinds

def test_there_is_a_base_and_an_overlay():
    assert DEPLOY / "base" in KUSTOMIZATIONS
    assert any("overlays" in p.parts for p in KUSTOMIZATIONS)


def test_renders_the_expected_objects(rendered):
    name, docs = rendered
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Secret", "Deployment",
            "DaskCluster", "DaskWorkerGroup"} <= kinds, name
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "cropmap", (name, d["kind"], d["metadata"]["name"])


def test_core_kinds_validate_strictly(rendered, tmp_path):
    name, docs = rendered
    core = [d for d in docs if d["kind"] not in DASK_KINDS]
    result = _kubernetes_validate(core, tmp_path)
    assert result.returncode == 0, f"{name}:\n{result.stdout}\n{result.stderr}"


def test_strict_validation_rejects_a_typo(rendered, tmp_path):
    # the check above can fail: an unknown field in a container is an error, not a warning
    _, docs = rendered
    deployment = copy.deepcopy(_one(docs, "Deployment", "prefect-worker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert _kubernetes_validate([deployment], tmp_path).returncode != 0


# ---------------------------------------------------------------- Dask operator custom resources

def _strict(schema: dict) -> dict:
    """The CRD's schema with unknown fields rejected wherever it lists properties.

    The API server prunes unknown fields silently (or rejects them with strict field validation);
    jsonschema would accept them, so a misspelt field would pass unnoticed without this.
    """
    schema = dict(schema)
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    for key in ("properties",):
        if key in schema:
            schema[key] = {k: _strict(v) for k, v in schema[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = _strict(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in schema:
            schema[key] = [_strict(s) for s in schema[key]]
    return schema


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    import dask_kubernetes

    pkg = Path(dask_kubernetes.__file__).parent
    found = {}
    for kind, filename in DASK_KINDS.items():
        paths = list(pkg.glob(f"operator/deployment/helm/*/crds/{filename}"))
        assert paths, f"CRD {filename} not found in the dask-kubernetes wheel at {pkg}"
        crd = yaml.safe_load(paths[0].read_text())
        assert crd["spec"]["names"]["kind"] == kind and crd["spec"]["group"] == "kubernetes.dask.org"
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = _strict(version["schema"]["openAPIV3Schema"])
        # apiVersion/kind/metadata are checked by the API server, not listed in the CRD schema
        schema["properties"].update({"apiVersion": {"const": "kubernetes.dask.org/v1"}, "kind": {"const": kind},
                                     "metadata": {"type": "object"}})
        found[kind] = jsonschema.Draft7Validator(schema)
    return found


def _crd_errors(validator: jsonschema.Draft7Validator, doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_dask_resources_validate_against_the_operator_crds(rendered, crd_validators):
    name, docs = rendered
    for kind, validator in crd_validators.items():
        for doc in _by_kind(docs, kind):
            assert not _crd_errors(validator, doc), (name, kind, _crd_errors(validator, doc))


def test_crd_validation_rejects_a_typo(rendered, crd_validators):
    _, docs = rendered
    cluster = copy.deepcopy(_one(docs, "DaskCluster"))
    cluster["spec"]["worker"]["replica"] = cluster["spec"]["worker"].pop("replicas")
    assert any("replica" in e for e in _crd_errors(crd_validators["DaskCluster"], cluster))


def _container(spec: dict) -> dict:
    (container,) = spec["spec"]["containers"]
    return container


def _memory_gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


def test_cluster_wiring_is_consistent(rendered):
    """Scheduler address, GPU resources and worker sizing agree across the rendered objects."""
    name, docs = rendered
    cluster = _one(docs, "DaskCluster")
    gpu = _one(docs, "DaskWorkerGroup")
    config = _one(docs, "ConfigMap", "cropmap-config")["data"]
    # the address every pod gets names the operator's scheduler Service and its comm port
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    namespace = cluster["metadata"]["namespace"]
    expected = f"tcp://{cluster['metadata']['name']}-scheduler.{namespace}.svc.cluster.local:{ports['tcp-comm']}"
    assert config["CROPMAP_DASK_ADDRESS"] == expected
    assert dask_target(config["CROPMAP_DASK_ADDRESS"]).task_runner_kwargs() == {"address": expected}
    # GPU workers join this cluster, ask Kubernetes for a GPU and advertise it to Dask
    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"]
    gpu_c = _container(gpu["spec"]["worker"])
    assert gpu_c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    args = gpu_c["args"]
    assert args[args.index("--resources") + 1] == f"{GPU_RESOURCE}=1"
    cpu_c = _container(cluster["spec"]["worker"])
    assert "nvidia.com/gpu" not in cpu_c["resources"].get("limits", {})
    assert "--resources" not in cpu_c["args"]
    # GPU workers run the CUDA image: an overlay retagging the CPU image must not touch it
    assert gpu_c["image"] != cpu_c["image"] and "cuda" in gpu_c["image"]
    # Dask reads its memory limit from the cgroup: requests = limits, and each thread gets at least
    # twice the peak measured for compositing 256 px chunks of 60 dates x 11 bands (headroom for
    # ~120 dates and read buffers)
    for c in (cpu_c, gpu_c):
        res = c["resources"]
        assert res["requests"]["memory"] == res["limits"]["memory"]
        threads = int(c["args"][c["args"].index("--nthreads") + 1])
        assert _memory_gib(res["limits"]["memory"]) / threads >= 2 * MEASURED_GIB_PER_THREAD, name
        assert int(res["requests"]["cpu"]) >= threads
    # every cropmap pod reads the shared config, and runs as the image's non-root user
    for pod in (cluster["spec"]["scheduler"], cluster["spec"]["worker"], gpu["spec"]["worker"]):
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert {"configMapRef": {"name": "cropmap-config"}} in _container(pod)["envFrom"]
        # outputs go to the object store, so no pod shares a volume with another
        assert not [v for v in pod["spec"].get("volumes", []) if "persistentVolumeClaim" in v or "nfs" in v]
    # what cropmap.jobs.country_run.output_root and cropmap.jobs.cluster.gpu_workers_enabled read: an object-store URL,
    # and "the cluster has GPU workers", as it does (the DaskWorkerGroup above)
    assert storage.is_remote(config["CROPMAP_OUTPUT_URL"]), config["CROPMAP_OUTPUT_URL"]
    assert gpu_workers_enabled(config["CROPMAP_GPU_WORKERS"]) == (gpu["spec"]["worker"]["replicas"] > 0)
    # scratch files (TMPDIR) land on each worker's node-local emptyDir
    for pod in (cluster["spec"]["worker"], gpu["spec"]["worker"]):
        mounts = {m["mountPath"]: m["name"] for m in _container(pod)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert "emptyDir" in volumes[mounts[config["TMPDIR"]]]


def test_prefect_worker_rbac_covers_what_it_does(rendered):
    _, docs = rendered
    deployment = _one(docs, "Deployment", "prefect-worker")
    pod = deployment["spec"]["template"]["spec"]
    binding = _one(docs, "RoleBinding", "prefect-worker")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": "cropmap"}]
    rules = _one(docs, "Role", binding["roleRef"]["name"])["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    for need in [("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")] + [
            ("", "pods", "list"), ("", "pods", "watch"), ("", "pods/log", "get"), ("", "events", "list")]:
        assert need in granted, need
    # the job template it mounts is the generated ConfigMap holding the file in deploy/base/prefect
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    generated = _one(docs, "ConfigMap", volume["configMap"]["name"])
    assert json.loads(generated["data"]["base-job-template.json"]) == json.loads(TEMPLATE.read_text())
    args = _container(deployment["spec"]["template"])["args"]
    assert args[args.index("--type") + 1] == "kubernetes"
    assert args[args.index("--base-job-template") + 1].endswith("/base-job-template.json")


# ---------------------------------------------------------------- Prefect base job template

@pytest.fixture(scope="module")
def job_template() -> dict:
    return json.loads(TEMPLATE.read_text())


def test_base_job_template_passes_prefects_checks(job_template):
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect_kubernetes.worker import KubernetesWorker

    validate_base_job_template(job_template)  # raises on placeholders without a variable
    # the same job configuration keys as prefect-kubernetes' own template: the worker reads them all
    default = KubernetesWorker.get_default_base_job_template()
    assert set(job_template["job_configuration"]) == set(default["job_configuration"])
    assert set(job_template["variables"]["properties"]) >= set(default["variables"]["properties"])
    for name, prop in job_template["variables"]["properties"].items():
        if "default" in prop:  # defaults are valid values of their own variable
            jsonschema.Draft202012Validator({**prop, "definitions": job_template["variables"].get("definitions", {})}
                                            ).validate(prop["default"])


def test_base_job_template_renders_a_valid_job(job_template, tmp_path):
    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    # What KubernetesWorkerJobConfiguration.from_template_and_values does, minus resolving Prefect
    # block and variable references (it would start a Prefect server): the template has none.
    assert not re.search(r"\{\{\s*prefect\.", TEMPLATE.read_text())
    defaults = KubernetesWorkerJobConfiguration._get_base_config_defaults(job_template["variables"]["properties"])
    populated = apply_values(template=copy.deepcopy(job_template["job_configuration"]), values=defaults)
    config = KubernetesWorkerJobConfiguration(**populated)
    config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="arg-2023", flow_id=uuid.uuid4()))
    job = config.job_manifest
    assert (job["apiVersion"], job["kind"], config.namespace) == ("batch/v1", "Job", "cropmap")
    result = _kubernetes_validate([job], tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{json.dumps(job, indent=1)}"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "cropmap-flow"
    (container,) = pod["containers"]
    assert {"configMapRef": {"name": "cropmap-config"}} in container["envFrom"]
    # the flow run starts with Prefect's command and knows its run id
    assert "PREFECT__FLOW_RUN_ID" in {e["name"] for e in container["env"]}
    # the mosaic runs in the flow's process: its scratch (TMPDIR=/scratch) is a node-local emptyDir
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/scratch" and "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mount["name"]]
    assert container["args"][:3] == ["prefect", "flow-run", "execute"]


@needs_kubectl
def test_job_template_uses_the_image_of_the_dask_workers(job_template):
    # flow runs and Dask workers must run the same software (tasks are pickled between them);
    # overlays retag both the same way, the template's default follows the base
    cluster = _one(_render(DEPLOY / "base"), "DaskCluster")
    assert job_template["variables"]["properties"]["image"]["default"] == _container(cluster["spec"]["worker"])["image"]


# ---------------------------------------------------------------- Dockerfile

def _dockerfile() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            steps.append((instruction.upper(), rest.strip()))
    return steps


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _torch_pin() -> str:
    (pin,) = [d for d in _pyproject()["project"]["dependencies"] if d.startswith("torch")]
    return pin


def test_dockerfile_base_user_healthcheck_entrypoint():
    steps = _dockerfile()
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    (base,) = [a for i, a in steps if i == "FROM"]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base), base
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    # nothing runs as root after the switch to the unprivileged user
    last_user = max(n for n, (i, _) in enumerate(steps) if i == "USER")
    assert not [a for i, a in steps[last_user:] if i == "RUN"]
    assert any(i == "HEALTHCHECK" and "CMD" in a for i, a in steps)
    entrypoint = json.loads(next(a for i, a in steps if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in steps if i == "CMD"))
    assert entrypoint[0] == "tini" and cmd[0] == "cropmap"  # k8s `args:` replace CMD only


def test_dockerfile_installs_like_bootstrap():
    steps = _dockerfile()
    runs = [a for i, a in steps if i == "RUN"]
    pin = _torch_pin()
    assert pin in (ROOT / "scripts/bootstrap.sh").read_text()  # the same pin as the local setup
    torch_step = next(n for n, r in enumerate(runs) if pin in r)
    src = _context_destination(steps)
    project_step = next(n for n, r in enumerate(runs) if re.search(r"pip install .*\"?(\.|" + re.escape(src) + r")\[", r))
    assert torch_step < project_step, "torch must be installed first and on its own"
    assert "-e ." not in runs[torch_step]
    # the torch build is chosen by a build argument (CPU default, CUDA on request)
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    assert args["TORCH_VARIANT"] == "cpu"
    assert "${TORCH_INDEX_URL}" in runs[torch_step] and "${TORCH_VARIANT}" in args["TORCH_INDEX_URL"]
    # the project with every dependency pinned to the tested version, and the flows extra
    install = shlex.split(next(c for c in runs[project_step].split("&&") if "pip install" in c))
    constraints = install[install.index("--constraint") + 1]
    assert (ROOT / constraints.removeprefix(src + "/")).is_file() and constraints.startswith(src + "/")
    assert constraints.removeprefix(src + "/") in _docker_context()
    assert any(w.startswith((".[", src + "[")) and "flows" in w for w in install)


def test_constraints_pin_every_dependency_at_the_projects_version():
    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = _pyproject()["project"]
    for dep in project["dependencies"] + project["optional-dependencies"]["flows"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[<>=!\[ ]", dep)[0]).lower()
        if name == "torch":  # installed first, from the CPU or CUDA index
            assert "torch" not in pins
            continue
        assert name in pins, f"{name} is not pinned in deploy/constraints.txt: regenerate it"
        if "==" in dep:
            assert pins[name] == dep.split("==")[1], f"{name}: pyproject {dep}, constraints {pins[name]}"


def _context_destination(steps: list[tuple[str, str]]) -> str:
    """Where ``COPY . DEST`` puts the build context (the project's source) in the image."""
    (dest,) = [a.split()[-1] for i, a in steps if i == "COPY" and a.split()[0] == "."]
    return dest.rstrip("/")


def _docker_context() -> set[str]:
    """The files of the checkout that ``docker build .`` sends, by .dockerignore's rules (patterns in order,
    the last match wins, ``!`` re-includes, a pattern also matches every path below a match)."""
    rules = [(p.startswith("!"), p.lstrip("!").strip("/")) for p in
             (l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()) if p and not p.startswith("#")]

    def excluded(rel: str) -> bool:
        parts, out = rel.split("/"), False
        for negate, pattern in rules:
            if any(fnmatch.fnmatchcase("/".join(parts[:n]), pattern) for n in range(1, len(parts) + 1)):
                out = not negate
        return out

    files = set()
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[0] not in (".git", ".venv") and path.is_file() and not excluded(rel):
            files.add(rel)
    return files


def test_dockerfile_build_context_is_the_package():
    """The context holds what the install needs (the package with its configs, pyproject.toml, README.md,
    the constraints) and nothing of the checkout around it: COPY sources exist and are sent."""
    context = _docker_context()
    needed = {"pyproject.toml", "README.md", "deploy/constraints.txt", "cropmap/__init__.py",
              "cropmap/flows/map_country.py", "cropmap/configs/countries/DEMO.yaml"}
    assert needed <= context, needed - context
    assert not [p for p in context if p.split("/")[0] in ("tests", "flows", "configs", "docs", "bench", "scripts")
                or "__pycache__" in p or p.startswith("deploy/") and p != "deploy/constraints.txt"]
    for source in [w for i, a in _dockerfile() if i == "COPY" for w in a.split()[:-1] if not w.startswith("--")]:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
        assert source == "." or source in context or any(p.startswith(source + "/") for p in context), source


def test_dockerfile_installs_the_package_not_a_checkout():
    """The image runs the installed package (cropmap.flows, configs as package data): the install is not
    editable, the checkout's flows/ and configs/ are not copied, and the flow runs' working directory is
    deploy/prefect.yaml's pull step folder. scripts/check_image.sh builds and runs it."""
    steps = _dockerfile()
    runs = [a for i, a in steps if i == "RUN"]
    installs = [c for r in runs for c in r.split("&&") if "pip install" in c]
    assert not [c for c in installs if re.search(r"\s(-e|--editable)\s", c)], installs
    copied = [w for i, a in steps if i == "COPY" for w in a.split()[:-1] if not w.startswith("--")]
    assert "flows" not in copied and "configs" not in copied, copied
    workdir = [a for i, a in steps if i == "WORKDIR"][-1]
    pull = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())["pull"]
    assert [s["prefect.deployments.steps.set_working_directory"]["directory"] for s in pull] == [workdir]
    # hadolint DL3008 / DL3013: apt and pip versions pinned (the project's own pins come from --constraint)
    apt = [c for r in runs for c in r.split("&&") if "apt-get install" in c]
    assert apt and all("=" in w for c in apt for w in shlex.split(c) if not w.startswith("-") and w not in
                       ("apt-get", "install")), apt
    for c in installs:
        words = [w for w in shlex.split(c)[shlex.split(c).index("install") + 1:]]
        args = [w for n, w in enumerate(words) if not w.startswith("-") and not (n and words[n - 1] in
                                                                                ("--constraint", "--index-url"))]
        assert all("==" in w or w.startswith((".[", _context_destination(steps) + "[")) for w in args), c
    # the scheduler's dashboard (docs/scaling.md) needs bokeh
    assert any("bokeh==" in c for c in installs)
