"""What an operator deploys besides the image: the Kubernetes manifests of docker/kubernetes/
(the migrate Job, the daemon, the fleet, the CronJob; docs/operations.md, *Kubernetes*),
the compose file's `fleet` profile, and the lock (constraints.txt) the image and CI install
from (docs/development.md, *The lock*).

The manifests are checked against the Kubernetes API's own schemas by kubernetes-validate
(the `deploy` extra; it ships them, so no cluster and no network), file by file and as
`kubectl kustomize` renders each variant; and read here for what the schemas cannot know:
that the probes ask the port regionsync listens on, that the keys are mounted where
REGIONSYNC_API_KEYS_DIR points, that the settings and commands named are real ones.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import regionsync
from regionsync.errors import ConfigError
from regionsync.settings import known_variables
from tests.support import clean_environ
from tests.support.docs import page, section

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "docker" / "kubernetes"
CONSTRAINTS = ROOT / "constraints.txt"
COMPOSE = ROOT / "docker" / "compose.yaml"
#: Each directory `kubectl apply -k` takes; `base` is the component they all include.
VARIANTS = ["migrate", "daemon", "fleet", "cron"]
#: The oldest Kubernetes the manifests are for, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
#: The long-running ones: the container name and the command each runs.
SERVERS = {"daemon": "daemon", "fleet": "worker"}
KUBECTL = shutil.which("kubectl")
DOCKER_COMPOSE = shutil.which("docker-compose")
SETTING = re.compile(r"\b(?:KALEYRA_[A-Z_]+|REGIONSYNC_[A-Z_]+)\b")


# The manifests, as files and as kustomize puts them together ---------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_all(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def kustomization(directory: Path) -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    return found


def composed_files(variant: str) -> list[Path]:
    """The files a variant's kustomization takes, its components' included."""
    directory = KUBERNETES / variant
    spec = kustomization(directory)
    files = [directory / name for name in spec.get("resources", [])]
    for component in spec.get("components", []):
        files += composed_files(str((directory / component).resolve().relative_to(KUBERNETES)))
    return files


def resources(variant: str) -> list[dict[str, Any]]:
    """A variant's resources as written (before kustomize sets the image and labels)."""
    return [doc for path in composed_files(variant) for doc in load_all(path.read_text())]


def one(variant: str, kind: str) -> dict[str, Any]:
    found = [doc for doc in resources(variant) if doc["kind"] == kind]
    assert len(found) == 1, f"{variant}: {len(found)} {kind}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    found: dict[str, Any] = spec["template"]["spec"]
    return found


def workloads() -> Iterator[tuple[str, dict[str, Any]]]:
    kinds = {"Deployment", "Job", "CronJob"}
    for variant in VARIANTS:
        for doc in resources(variant):
            if doc["kind"] in kinds:
                yield variant, doc


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (found,) = pod_spec(workload)["containers"]
    assert found["name"] == "regionsync"
    return dict(found)


def env(found: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in found.get("env", [])}


@cache
def rendered(variant: str) -> str:
    """What `kubectl apply -k docker/kubernetes/<variant>` applies."""
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, "kustomize", str(KUBERNETES / variant)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: the kustomizations cannot be rendered"
)


def validator() -> Any:
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install -e '.[deploy]'; CI installs it)",
    )


# Against the Kubernetes API's schemas --------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_every_manifest_is_valid_for_kubernetes(path: Path, version: str) -> None:
    check = validator()
    documents = load_all(path.read_text())
    assert documents, f"{path} holds no resource"
    for document in documents:
        # strict: a misspelt field (`livenessprobe`) is an error, not ignored; a kind it has
        # no schema for raises too, so nothing passes unchecked.
        check.validate(document, version, strict=True)


@needs_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_as_kustomize_renders_it_is_valid(variant: str, version: str) -> None:
    check = validator()
    documents = load_all(rendered(variant))
    assert len(documents) == len(resources(variant))
    for document in documents:
        check.validate(document, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    check = validator()
    deployment = one("daemon", "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    probe = container(broken)["readinessProbe"]
    broken["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = probe
    with pytest.raises(check.ValidationError, match="readynessProbe"):
        check.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_every_manifest_is_in_a_kustomization_and_every_file_named_exists() -> None:
    named = {path for variant in VARIANTS for path in composed_files(variant)}
    assert all(path.is_file() for path in named), [p for p in named if not p.is_file()]
    assert set(manifest_files()) == named
    listed = {p.parent.name for p in KUBERNETES.glob("*/kustomization.yaml")}
    assert listed == {*VARIANTS, "base"}


@needs_kubectl
@pytest.mark.parametrize("variant", VARIANTS)
def test_kustomize_sets_the_image_of_the_release(variant: str) -> None:
    images = {
        c["image"]
        for doc in load_all(rendered(variant))
        if doc["kind"] in {"Deployment", "Job", "CronJob"}
        for c in pod_spec(doc)["containers"]
    }
    assert images == {f"registry.example.com/regionsync:{regionsync.__version__}"}


def test_the_image_is_named_once_at_the_current_release() -> None:
    (image,) = kustomization(KUBERNETES / "base")["images"]
    assert image["name"] == "regionsync"
    assert image["newTag"] == regionsync.__version__
    assert {container(w)["image"] for _, w in workloads()} == {"regionsync"}


# What the schemas cannot know ---------------------------------------------------------------


def regionsync_commands() -> set[str]:
    from regionsync.cli.parser import build_parser

    listing = build_parser().format_help().split("positional arguments:", 1)[1]
    return set(re.findall(r"^    ([a-z][a-z-]*)\b", listing.split("options:", 1)[0], re.M))


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(KUBERNETES)))
def test_manifests_name_only_real_settings(path: Path) -> None:
    # Comments included: what a manifest tells the operator to uncomment must be real too.
    named = set(SETTING.findall(path.read_text()))
    assert named <= known_variables(), named - known_variables()


def test_every_container_runs_a_real_command() -> None:
    for variant, workload in workloads():
        command = next(arg for arg in container(workload)["args"] if not arg.startswith("-"))
        assert command in regionsync_commands(), f"{variant}: no command {command!r}"


def test_every_container_takes_the_settings_and_the_database_secret() -> None:
    settings = one("migrate", "ConfigMap")
    secrets = {d["metadata"]["name"]: d for d in resources("migrate") if d["kind"] == "Secret"}
    database = secrets["regionsync"]["stringData"]
    assert set(database) == {"REGIONSYNC_DATABASE_URL"}
    assert database["REGIONSYNC_DATABASE_URL"].startswith("postgresql://")
    for variant, workload in workloads():
        sources = container(workload)["envFrom"]
        assert sources == [
            {"configMapRef": {"name": settings["metadata"]["name"]}},
            {"secretRef": {"name": "regionsync"}},
        ], variant
        # A Service's *_SERVICE_HOST variables would be REGIONSYNC_* names that are no setting.
        assert pod_spec(workload)["enableServiceLinks"] is False, variant


def test_the_daemon_is_one_replica_never_two_releases_at_once() -> None:
    deployment = one("daemon", "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container(deployment)["args"] == ["daemon"]


def test_the_fleet_is_two_workers_at_concurrency_16() -> None:
    deployment = one("fleet", "Deployment")
    assert deployment["metadata"]["name"] == "regionsync-worker"
    assert deployment["spec"]["replicas"] == 2
    assert container(deployment)["args"] == ["worker", "--concurrency", "16"]
    budget = one("fleet", "PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert budget["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("variant", SERVERS)
def test_sigterm_has_time_to_finish_a_sync(variant: str) -> None:
    # A sync's fetch ends within 90 s, retries included, then its apply (docs/operations.md,
    # *Stopping*): the grace period covers both before Kubernetes sends SIGKILL.
    assert pod_spec(one(variant, "Deployment"))["terminationGracePeriodSeconds"] >= 120


@pytest.mark.parametrize("variant", SERVERS)
def test_probes_ask_the_port_regionsync_serves_healthz_on(variant: str) -> None:
    deployment = one(variant, "Deployment")
    found = container(deployment)
    variables = env(found)
    port = int(variables["REGIONSYNC_METRICS_PORT"])
    # All interfaces of the pod: the kubelet probes the pod's IP, not its loopback.
    assert variables["REGIONSYNC_METRICS_HOST"] == "0.0.0.0"  # noqa: S104
    assert found["ports"] == [{"name": "metrics", "containerPort": port}]
    # Ready while the data is fresh; alive while the process answers HTTP at all.
    assert found["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert found["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)


@pytest.mark.parametrize("variant", ["daemon", "fleet", "cron"])
def test_the_keys_are_mounted_read_only_where_regionsync_reads_them(variant: str) -> None:
    kind = "CronJob" if variant == "cron" else "Deployment"
    workload = one(variant, kind)
    spec = pod_spec(workload)
    found = container(workload)
    keys_dir = env(found)["REGIONSYNC_API_KEYS_DIR"]
    assert Path(keys_dir).is_absolute()  # settings refuse a relative one
    (mount,) = [m for m in found["volumeMounts"] if m["mountPath"] == keys_dir]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    secret_names = {d["metadata"]["name"] for d in resources(variant) if d["kind"] == "Secret"}
    assert volume["secret"]["secretName"] == "kaleyra-keys" in secret_names
    # Readable by the image's user through its group (fsGroup), by no one else.
    assert volume["secret"]["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] == image_user()


def test_the_keys_secret_holds_one_file_per_account_named_after_it() -> None:
    (keys,) = [d for d in resources("fleet") if d["metadata"]["name"] == "kaleyra-keys"]
    entries = keys.get("stringData") or keys.get("data") or {}
    assert entries
    # A file of the keys directory is named after its account (docs/accounts.md, *Keys*).
    assert all(re.fullmatch(r"[a-z0-9_-]{1,63}", name) for name in entries), entries


def image_user() -> int:
    match = re.search(r"^USER (\d+)$", (ROOT / "docker" / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile's USER is no number: runAsNonRoot cannot verify a name"
    return int(match.group(1))


def test_pods_run_unprivileged_on_a_read_only_root() -> None:
    for variant, workload in workloads():
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, variant
        assert spec["securityContext"]["runAsUser"] == image_user(), variant
        assert spec["automountServiceAccountToken"] is False, variant
        found = container(workload)
        assert found["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, variant
        assert {"cpu", "memory"} <= set(found["resources"]["requests"]), variant
        assert "memory" in found["resources"]["limits"], variant


def test_the_migrate_job_retries_a_database_not_yet_up_but_not_a_bad_setting() -> None:
    job = one("migrate", "Job")
    assert container(job)["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert 0 < job["spec"]["backoffLimit"] <= 6
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    (rule,) = job["spec"]["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"]["values"] == [ConfigError.exit_code]


def test_the_operations_page_applies_each_variant() -> None:
    text = section(page("operations.md"), "Kubernetes")
    for variant in VARIANTS:
        assert f"kubectl apply -k docker/kubernetes/{variant}" in text, variant
    job = one("migrate", "Job")["metadata"]["name"]
    assert f"kubectl wait --for=condition=complete --timeout=10m job/{job}" in text
    assert f"kubectl delete job {job} --ignore-not-found" in text


# Compose: the fleet profile ------------------------------------------------------------------


def services() -> dict[str, Any]:
    found: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return found


@pytest.mark.parametrize("worker", ["worker-1", "worker-2"])
def test_compose_fleet_workers_take_the_daemons_settings(worker: str) -> None:
    found, daemon = services()[worker], services()["daemon"]
    assert found["profiles"] == ["fleet"]
    assert found["command"] == ["worker", "--concurrency", "16"]
    assert found["environment"] == daemon["environment"]
    assert found["depends_on"] == daemon["depends_on"]
    assert found["stop_grace_period"] == daemon["stop_grace_period"]
    assert "healthcheck" not in found  # the image's: /healthz


def test_compose_fleet_workers_publish_their_own_ports() -> None:
    published = [port for name, s in services().items() for port in s.get("ports", [])]
    assert len(published) == len(set(published))
    assert all(port.startswith("127.0.0.1:") for port in published)


@pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (Debian: apt-get install docker-compose)",
)
@pytest.mark.parametrize("profile", [None, "fake", "fleet"])
def test_compose_file_is_valid_with_each_profile(profile: str | None) -> None:
    assert DOCKER_COMPOSE is not None
    command = [DOCKER_COMPOSE, "-f", str(COMPOSE)]
    command += ["--profile", profile] if profile else []
    done = subprocess.run(
        [*command, "config", "-q"],
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# The lock -------------------------------------------------------------------------------------


def pins() -> dict[str, str]:
    """constraints.txt as {canonical name: version}."""
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            found[canonicalize_name(name)] = version.strip()
    return found


def runtime_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Requirement]:
    with pyproject.open("rb") as file:
        return [Requirement(r) for r in tomllib.load(file)["project"]["dependencies"]]


def closure(direct: list[Requirement]) -> list[tuple[Requirement, str]]:
    """Every requirement a runtime install makes, with who makes it: pyproject's, then theirs
    as their installed metadata says, for this platform (the image's: Linux, CPython 3.11),
    extras followed (``psycopg[binary]`` needs ``psycopg-binary``)."""
    found = [(requirement, "pyproject.toml") for requirement in direct]
    todo = list(direct)
    visited: set[tuple[str, str]] = set()
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        try:
            declared = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is not installed: pip install -c constraints.txt -e '.[test]'")
        for extra in requirement.extras or {""}:
            if (name, extra) in visited:
                continue
            visited.add((name, extra))
            for line in declared:
                needed = Requirement(line)
                if needed.marker is None or needed.marker.evaluate({"extra": extra}):
                    found.append((needed, name))
                    todo.append(needed)
    return found


def test_the_lock_pins_every_runtime_dependency_and_nothing_else() -> None:
    needed = {canonicalize_name(r.name) for r, _ in closure(runtime_requirements())}
    locked = set(pins())
    assert not needed - locked, f"not in constraints.txt: {sorted(needed - locked)}"
    assert not locked - needed, f"in constraints.txt, needed by nothing: {sorted(locked - needed)}"


def test_every_locked_version_satisfies_what_asks_for_it() -> None:
    locked = pins()
    for requirement, by in closure(runtime_requirements()):
        version = locked[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"constraints.txt pins {requirement.name}=={version}; {by} asks {requirement}"
        )


def pip_installs(path: Path) -> list[str]:
    """The commands of ``path`` that install with pip (``python -m pip install``), but pip."""
    lines = path.read_text().splitlines()
    return [line for line in lines if "-m pip install" in line and "--upgrade pip" not in line]


def test_the_image_and_ci_install_from_the_lock() -> None:
    dockerfile = ROOT / "docker" / "Dockerfile"
    assert re.search(r"^COPY .*\bconstraints\.txt\b.* \./$", dockerfile.read_text(), re.M)
    assert "!constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()
    for path in (dockerfile, ROOT / ".ci" / "run"):
        installs = pip_installs(path)
        assert installs, path
        assert all(re.search(r" -c \S*constraints\.txt\b", line) for line in installs), installs
