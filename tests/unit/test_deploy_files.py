"""docker-compose.yml, the Dockerfile and the Kubernetes manifest, checked without Docker.

No container engine runs here, so these tests read the files and prove what a ``docker compose
up`` or ``kubectl apply`` would depend on: the services and containers exist as documented, and
every command they run exists: ``pg-beat`` subcommands and their options are real commands of
the click group, ``celery -A`` apps import, ``-S`` schedulers resolve, Celery accepts the
options, and the Dockerfile copies files that exist.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from celery import Celery
from celery.app.utils import find_app
from celery.bin.base import CLIContext
from celery.bin.celery import celery as celery_cli
from celery.utils.imports import symbol_by_name
from support.env import require_module

from pg_beat.cli import main as pg_beat_cli

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES = ROOT / "examples" / "kubernetes" / "pg-beat.yaml"

BEAT = ["celery", "-A", "examples.app", "beat", "-S", "pg_beat:Scheduler"]
#: Commands of third-party images (postgres, redis), which these tests cannot resolve.
THIRD_PARTY = {"pg_isready", "redis-cli"}


# --- resolving a command line -------------------------------------------------------------------


def check_pg_beat(args: Sequence[str]) -> click.Command:
    """The click command ``pg-beat args`` runs; its options and values parse (not invoked)."""
    command: click.Command = pg_beat_cli
    ctx = click.Context(command, info_name="pg-beat")
    rest = list(args)
    while isinstance(command, click.Group):
        name = rest.pop(0) if rest else None
        sub = command.get_command(ctx, name) if name and not name.startswith("-") else None
        if sub is None:
            pytest.fail(f"pg-beat {shlex.join(args)}: {name!r} is not a command of {ctx.info_name}")
        command = sub
        ctx = click.Context(command, info_name=name, parent=ctx)
    try:
        command.make_context(ctx.info_name, rest, parent=ctx.parent)
    except click.ClickException as exc:
        pytest.fail(f"pg-beat {shlex.join(args)}: {exc.format_message()}")
    return command


def check_celery(args: Sequence[str]) -> tuple[Celery, str, dict[str, Any]]:
    """``celery -A module sub ...``: the app imports, Celery accepts ``sub`` and its options."""
    assert list(args[:1]) == ["-A"], f"celery {shlex.join(args)}: expected -A APP first"
    module, sub, *rest = args[1:]
    app = find_app(module)  # what ``celery -A`` itself does
    assert isinstance(app, Celery), f"-A {module} is not a Celery app"
    ctx = click.Context(
        celery_cli,
        info_name="celery",
        obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True),
    )
    command = celery_cli.get_command(ctx, sub)
    assert command is not None, f"celery has no command {sub!r}"
    try:
        params = command.make_context(sub, list(rest), parent=ctx).params
    except click.ClickException as exc:
        pytest.fail(f"celery {shlex.join(args)}: {exc.format_message()}")
    if params.get("scheduler"):
        symbol_by_name(params["scheduler"])  # -S resolves, as celery beat will resolve it
    return app, sub, params


def check_command(argv: Sequence[str]) -> None:
    program, *args = argv
    if program == "pg-beat":
        check_pg_beat(args)
    elif program == "celery":
        check_celery(args)
    else:
        assert program in THIRD_PARTY, f"unknown program {program!r} in {shlex.join(argv)}"


def healthcheck_argv(test: list[str] | str) -> list[str]:
    """A compose ``healthcheck.test`` as an argv (``CMD`` exec form or ``CMD-SHELL``)."""
    if isinstance(test, str):
        return shlex.split(test)
    kind, *argv = test
    if kind == "CMD-SHELL":
        return shlex.split(argv[0])
    assert kind == "CMD", f"healthcheck test {test!r}"
    return argv


def test_the_resolver_rejects_what_does_not_exist() -> None:
    assert check_pg_beat(["check", "--max-stall", "60"]).name == "check"
    for bad in (["nope"], ["db", "nope"], ["check", "--bogus"], ["check", "--max-stall", "x"]):
        with pytest.raises(pytest.fail.Exception):
            check_pg_beat(bad)
    with pytest.raises(pytest.fail.Exception):
        check_celery(["-A", "examples.app", "beat", "--bogus"])
    with pytest.raises((ImportError, AttributeError)):
        check_celery(["-A", "examples.no_such_app", "beat"])
    with pytest.raises((ImportError, AttributeError)):
        check_celery(["-A", "examples.app", "beat", "-S", "pg_beat:NoSuchScheduler"])


# --- docker-compose.yml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def test_compose_has_the_documented_services(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {
        "postgres",
        "redis",
        "migrate",
        "beat-1",
        "beat-2",
        "beat-3",
        "worker",
    }


def test_compose_migrates_once_before_the_replicas_start(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    migrate = all_services["migrate"]
    assert migrate["command"] == ["pg-beat", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("beat-1", "beat-2", "beat-3"):
        depends = all_services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"


def test_compose_runs_three_distinct_beat_replicas_checked_by_pg_beat_check(
    compose: dict[str, Any],
) -> None:
    beats = {n: s for n, s in services(compose).items() if n.startswith("beat-")}
    names = {s["environment"]["PG_BEAT_REPLICA_NAME"] for s in beats.values()}
    assert names == {"beat-1", "beat-2", "beat-3"}
    for service in beats.values():
        assert service["command"][: len(BEAT)] == BEAT
        assert service["restart"] in ("always", "unless-stopped", "on-failure")
        # Each container judges its own replica: an outage must not mark them all unhealthy.
        assert healthcheck_argv(service["healthcheck"]["test"])[:3] == [
            "pg-beat",
            "check",
            "--self",
        ]
        assert service["environment"]["PG_BEAT_LIVENESS_FILE"]
        assert service["environment"]["PG_BEAT_DATABASE_URL"].startswith("postgresql://")
    worker = services(compose)["worker"]
    assert worker["command"][:4] == ["celery", "-A", "examples.app", "worker"]


def test_compose_health_conditions_have_health_checks(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in all_services, f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in all_services[dependency], (name, dependency)


def compose_commands(compose: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    for name, service in services(compose).items():
        if "command" in service:
            command = service["command"]
            yield name, shlex.split(command) if isinstance(command, str) else command
        if "healthcheck" in service:
            yield f"{name} healthcheck", healthcheck_argv(service["healthcheck"]["test"])


def test_every_compose_command_exists(compose: dict[str, Any]) -> None:
    commands = list(compose_commands(compose))
    assert len(commands) >= 7
    for _, argv in commands:
        check_command(argv)


def test_compose_builds_the_dockerfile(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        if name in ("postgres", "redis"):
            assert "build" not in service
            continue
        build = service["build"]
        context = build if isinstance(build, str) else build["context"]
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
        assert (ROOT / context / (dockerfile or "Dockerfile")).is_file()


# --- Dockerfile ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    out = []
    for line in logical:
        instruction, _, arguments = line.partition(" ")
        out.append((instruction.upper(), arguments.strip()))
    return out


def test_dockerfile_copies_what_exists_and_what_the_build_needs() -> None:
    tomllib = require_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    copied: set[str] = set()
    for instruction, arguments in dockerfile_instructions():
        if instruction in ("COPY", "ADD"):
            *sources, _ = shlex.split(arguments)
            assert not any(s.startswith("--") for s in sources), "COPY flags are not checked"
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the checkout"
                copied.add(source.rstrip("/"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"]}
    setuptools = project["tool"]["setuptools"]
    needed |= {p.split(".")[0] for p in setuptools["packages"]}
    needed |= {d.split("/")[0] for d in setuptools.get("package-dir", {}).values()}
    needed.add("examples")  # the app every service runs
    assert needed <= copied, f"the image lacks {sorted(needed - copied)}"


def test_dockerfile_installs_an_extra_that_exists_and_runs_a_real_command() -> None:
    tomllib = require_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    instructions = dockerfile_instructions()
    installs = [a for i, a in instructions if i == "RUN" and "pip install" in a]
    assert installs, "the Dockerfile does not pip install the project"
    for target in shlex.split(installs[0]):
        if target.startswith(".["):
            assert set(target[2:-1].split(",")) <= set(extras), target
    cmd = [a for i, a in instructions if i == "CMD"]
    assert len(cmd) == 1
    check_command(yaml.safe_load(cmd[0]))  # the JSON (exec) form is valid YAML


# --- Kubernetes ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc]


def find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in manifests:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in {KUBERNETES.name}")


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = [
        *spec.get("initContainers", []),
        *spec["containers"],
    ]
    return containers


def test_kubernetes_deployment_runs_three_probed_beat_replicas(
    manifests: list[dict[str, Any]],
) -> None:
    deployment = find(manifests, "Deployment", "pg-beat")
    assert deployment["spec"]["replicas"] == 3
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (beat,) = deployment["spec"]["template"]["spec"]["containers"]
    assert beat["command"][: len(BEAT)] == BEAT
    # Readiness judges the cluster; liveness this pod only, without the database.
    assert beat["readinessProbe"]["exec"]["command"] == ["pg-beat", "check"]
    assert beat["livenessProbe"]["exec"]["command"][:3] == ["pg-beat", "check", "--self"]
    assert {e["name"]: e for e in beat["env"]}["PG_BEAT_LIVENESS_FILE"]["value"]
    replica_name = {e["name"]: e for e in beat["env"]}["PG_BEAT_REPLICA_NAME"]
    assert replica_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_kubernetes_migrates_in_a_job(manifests: list[dict[str, Any]]) -> None:
    job = find(manifests, "Job", "pg-beat-migrate")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["pg-beat", "db", "upgrade"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_kubernetes_takes_the_urls_from_a_secret_and_one_image(
    manifests: list[dict[str, Any]],
) -> None:
    workloads = [d for d in manifests if d["kind"] in ("Deployment", "Job")]
    images = set()
    for doc in workloads:
        for container in pod_containers(doc):
            images.add(container["image"])
            refs = [e["secretRef"]["name"] for e in container.get("envFrom", [])]
            assert refs == ["pg-beat"], (doc["metadata"]["name"], container["name"])
    assert len(images) == 1


def kubernetes_commands(manifests: list[dict[str, Any]]) -> Iterator[list[str]]:
    for doc in manifests:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in pod_containers(doc):
            yield container["command"]
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in container:
                    yield container[probe]["exec"]["command"]


def test_every_kubernetes_command_exists(manifests: list[dict[str, Any]]) -> None:
    commands = list(kubernetes_commands(manifests))
    assert len(commands) >= 5
    for argv in commands:
        check_command(argv)


def test_every_package_of_the_source_tree_is_packaged() -> None:
    """setuptools' ``packages`` is a list kept by hand: a new subpackage left out of it is
    missing from the wheel, and ``import pg_beat.<it>`` fails only once installed."""
    tomllib = require_module("tomllib" if sys.version_info >= (3, 11) else "tomli")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "pg_beat").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found <= listed, f"not in pyproject.toml's packages: {sorted(found - listed)}"
