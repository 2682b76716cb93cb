"""docker-compose.yml, the Dockerfile and infra/ agree with the services' own settings.

Structural (always runs): every service has its container on its port; every variable a service's
container sets is one its settings read; healthchecks everywhere; no secret has a default; each service
connects to Postgres as its own role, which the init script creates with its own schema. And
``docker compose config -q`` where the compose CLI exists.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from libs.events.service import ServiceSpec
from libs.events.settings import SHARED

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SERVICE_NAMES = sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))
# Read by uvicorn (which client addresses may set X-Forwarded-For) and the OpenTelemetry SDK.
NOT_SETTINGS = {"FORWARDED_ALLOW_IPS", "OTEL_EXPORTER_OTLP_ENDPOINT"}
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(:?[-?+])?([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def settings_fields(name: str) -> dict[str, Any]:
    """A service's settings: field name -> default (``msgspec.NODEFAULT`` when required)."""
    cls = importlib.import_module(f"services.{name}.config").Settings
    return {f.name: f.default for f in msgspec.structs.fields(cls)}


def spec_of(name: str) -> ServiceSpec:
    spec = importlib.import_module(f"services.{name}.main").SPEC
    assert isinstance(spec, ServiceSpec)
    return spec


def has_worker_work(spec: ServiceSpec) -> bool:
    """Whether ``python -m services.<name> worker`` would run anything (relay, consumers, tasks)."""
    defaults = {f.name: f.default for f in dataclasses.fields(ServiceSpec)}
    return (
        spec.relay
        or spec.retention is not None
        or spec.subscriptions is not defaults["subscriptions"]
        or spec.workers is not defaults["workers"]
    )


def test_services_are_found() -> None:
    assert SERVICE_NAMES == ["auth", "commands", "device", "gateway", "telemetry"]


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_each_service_has_its_api_container_on_its_port(services: dict[str, Any], name: str) -> None:
    assert name in services, f"docker-compose.yml has no container for services/{name}"
    api = services[name]
    port = settings_fields(name)["port"]
    assert api["command"] == ["python", "-m", f"services.{name}", "api"]
    assert api["expose"] == [str(port)]
    assert api["environment"][f"{name.upper()}_PORT"] == str(port)
    assert api["environment"][f"{name.upper()}_HOST"] == "0.0.0.0"
    assert api["build"] == {"context": ".", "args": {"SERVICE": name}}
    assert api["image"].startswith(f"fleet/{name}:")
    assert "ports" not in api, "only the edge is published; scale-out needs unpublished services"


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_a_worker_container_exactly_where_the_service_has_worker_work(
    services: dict[str, Any], name: str
) -> None:
    worker = services.get(f"{name}-worker")
    if not has_worker_work(spec_of(name)):
        assert worker is None, f"{name} has nothing to run in a worker"
        return
    assert worker is not None, f"{name} has a relay or consumers but no {name}-worker container"
    assert worker["command"] == ["python", "-m", f"services.{name}", "worker"]
    assert worker["image"] == services[name]["image"] and worker["build"] == services[name]["build"]
    assert worker["environment"] == services[name]["environment"]
    assert worker["healthcheck"]["test"][-1] == "worker"


def platform_containers(services: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(container, service, spec) of every container running a service's code (its image)."""
    out = []
    for container, spec in services.items():
        m = re.match(r"fleet/(\w+):", str(spec.get("image", "")))
        if m and spec.get("command", [""])[0] == "python" and "services." in " ".join(spec["command"]):
            out.append((container, m.group(1), spec))
    return out


def test_every_variable_a_service_container_sets_is_read_by_its_settings(services: dict[str, Any]) -> None:
    shared = {f.upper() for f in SHARED}
    checked = platform_containers(services)
    assert len(checked) == 9
    for container, name, spec in checked:
        fields = settings_fields(name)
        for var in spec["environment"]:
            if var in NOT_SETTINGS or var in shared:
                continue
            prefix = f"{name.upper()}_"
            assert var.startswith(prefix), f"{container}: {var} is not a {name} setting"
            assert var[len(prefix) :].lower() in fields, f"{container}: {var} is not a {name} setting"
        for field, default in fields.items():
            if default is msgspec.NODEFAULT or field == "signing_key":
                given = {f"{name.upper()}_{field.upper()}"} | ({field.upper()} if field in SHARED else set())
                assert given & set(spec["environment"]), f"{container} lacks the required {field}"


def test_each_service_connects_as_its_own_postgres_role(services: dict[str, Any]) -> None:
    init_sql = (ROOT / "infra" / "postgres" / "init.sql").read_text()
    init_sh = (ROOT / "infra" / "postgres" / "init.sh").read_text()
    pg_env = services["postgres"]["environment"]
    for name in SERVICE_NAMES:
        url = services[name]["environment"][f"{name.upper()}_DATABASE_URL"]
        assert url.startswith(f"postgresql://{name}:${{{name.upper()}_DB_PASSWORD:?"), url
        assert url.endswith("@postgres:5432/fleet")
        assert f"CREATE ROLE {name} LOGIN PASSWORD %L', :'pw_{name}'" in init_sql
        assert f"CREATE SCHEMA IF NOT EXISTS {name} AUTHORIZATION {name};" in init_sql
        assert f'pw_{name}="${name.upper()}_DB_PASSWORD"' in init_sh
        assert f"{name.upper()}_DB_PASSWORD" in pg_env
    assert "GRANT USAGE" not in init_sql and "GRANT ALL" not in init_sql, "no role gets another's schema"
    assert (
        "./infra/postgres/init.sh:/docker-entrypoint-initdb.d/10-fleet.sh:ro"
        in services["postgres"]["volumes"]
    )


def test_redis_keeps_an_append_only_file_on_a_volume(
    services: dict[str, Any], compose: dict[str, Any]
) -> None:
    conf = (ROOT / "infra" / "redis" / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.M) and re.search(
        r"^appendfsync (everysec|always)$", conf, re.M
    )
    assert re.search(r"^maxmemory-policy noeviction$", conf, re.M)
    redis = services["redis"]
    assert redis["image"] == "redis:7"
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in compose["volumes"]
    assert services["postgres"]["image"] == "postgres:16"


def test_healthchecks_everywhere_and_start_order_waits_for_health(services: dict[str, Any]) -> None:
    one_shot = {"bootstrap", "simulator", "locust-master", "locust-worker"}
    no_probe = {"otel-collector", "jaeger"}  # images without a shell or client to probe with
    for container, spec in services.items():
        check = spec.get("healthcheck")
        if container in one_shot:
            assert spec["restart"] == "no"
        elif container not in no_probe:
            assert check and check.get("test") and not check.get("disable"), f"{container} has no healthcheck"
        for dep, cond in spec.get("depends_on", {}).items():
            assert dep in services, f"{container} depends on unknown {dep}"
            assert cond["condition"] in (
                "service_healthy",
                "service_completed_successfully",
                "service_started",
            )
            if dep in {*SERVICE_NAMES, "redis", "postgres", "edge"}:
                assert cond["condition"] == "service_healthy", f"{container} -> {dep}"
    for name in SERVICE_NAMES:
        assert services["edge"]["depends_on"][name] == {"condition": "service_healthy"}
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_no_secret_has_a_default() -> None:
    text = COMPOSE.read_text()
    env_example = (ROOT / ".env.example").read_text()
    example = dict(
        line.split("=", 1) for line in env_example.splitlines() if line and not line.startswith("#")
    )
    secrets = set()
    for var, op, _rest in INTERPOLATION.findall(text):
        if SECRET_WORDS.search(var):
            assert op == ":?", f"${{{var}}} must be ${{{var}:?...}}: a secret has no default"
            secrets.add(var)
    assert {"SIGNING_KEY", "POSTGRES_PASSWORD", "FLEET_OWNER_PASSWORD"} <= secrets
    for var in secrets:
        assert example.get(var) == "", f".env.example must list {var}, empty"
    # and no literal value for a secret-looking variable anywhere
    for m in re.finditer(r"^\s+([A-Z0-9_]+):\s*(.+)$", text, re.M):
        var, value = m.groups()
        if SECRET_WORDS.search(var) and not var.endswith(("_LIMIT", "_WINDOW_S")):
            assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value.strip().strip("\"'")), f"{var}: {value}"


def test_the_edge_is_the_one_public_port_with_the_routing_file(services: dict[str, Any]) -> None:
    edge = services["edge"]
    assert edge["image"].startswith("nginx:")
    assert edge["ports"] == ["${EDGE_PORT:-8080}:8080"]
    assert "./infra/nginx/fleet.conf:/etc/nginx/conf.d/default.conf:ro" in edge["volumes"]
    assert "./infra/nginx/upstreams.compose.conf:/etc/nginx/fleet/upstreams.conf:ro" in edge["volumes"]
    assert "include fleet/upstreams.conf;" in (ROOT / "infra" / "nginx" / "fleet.conf").read_text()
    published = {c for c, s in services.items() if s.get("ports")}
    assert published == {"edge", "jaeger"}
    assert all(p.startswith("127.0.0.1:") for p in services["jaeger"]["ports"])


def test_the_healthcheck_script_knows_each_service_port() -> None:
    text = (ROOT / "infra" / "docker" / "healthcheck.py").read_text()
    ports = dict(re.findall(r'"(\w+)": (\d+)', text.split("PORTS = ", 1)[1].split("}", 1)[0]))
    assert {k: int(v) for k, v in ports.items()} == {n: settings_fields(n)["port"] for n in SERVICE_NAMES}


def test_the_image_is_multi_stage_slim_non_root_with_a_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2 and "ARG PYTHON_IMAGE=python:3.11-slim" in text
    build, final = stages
    assert "gcc" in build and " AS build" in build
    assert "apt-get" not in final and "gcc" not in final, "no build tools in the final image"
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert re.search(r"^USER fleet$", final, re.M) and "useradd --system" in final
    assert "ARG SERVICE" in final and "FLEET_SERVICE=${SERVICE}" in final
    assert re.search(r"^HEALTHCHECK .*\n?.*healthcheck\.py", final, re.M)
    assert 'exec python -m \\"services.$FLEET_SERVICE\\" api' in final
    agent = (ROOT / "agent" / "Dockerfile").read_text()
    assert agent.count("\nFROM ") == 2 and "USER fleet-agent" in agent and "HEALTHCHECK" in agent


def test_profiles_sim_load_observe(services: dict[str, Any]) -> None:
    sim = services["simulator"]
    assert sim["profiles"] == ["sim"] and sim["command"][:2] == ["fleet", "simulate"]
    assert "--server=http://edge:8080" in sim["command"]
    assert not any("PASSWORD" in arg for arg in sim["command"]), "the password goes by the environment"
    for name in ("locust-master", "locust-worker"):
        locust = services[name]
        assert locust["profiles"] == ["load"] and locust["image"].startswith("locustio/locust:")
        assert "./bench:/mnt/bench:ro" in locust["volumes"]
        assert "-f /mnt/bench/locustfile.py" in locust["command"]
        assert locust["network_mode"] == "service:edge"  # the locustfile targets loopback only
    assert "--master" in services["locust-master"]["command"]
    assert "--worker" in services["locust-worker"]["command"]
    collector = services["otel-collector"]
    assert collector["profiles"] == ["observe"] and services["jaeger"]["profiles"] == ["observe"]
    assert "./infra/otel/collector.yaml:/etc/otelcol/collector.yaml:ro" in collector["volumes"]
    config = yaml.safe_load((ROOT / "infra" / "otel" / "collector.yaml").read_text())
    assert config["exporters"]["otlp/jaeger"]["endpoint"] == "jaeger:4317"
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    for container, name, spec in platform_containers(services):
        assert spec["environment"][f"{name.upper()}_OTEL_EXPORTER"] == "${FLEET_OTEL_EXPORTER:-none}", (
            container
        )
        assert spec["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"


def compose_cli() -> list[str] | None:
    """``docker compose`` or ``docker-compose``, whichever works here."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        if subprocess.run([*argv, "version"], capture_output=True, timeout=30).returncode == 0:
            return argv
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    argv = compose_cli()
    if argv is None:
        pytest.skip("no compose CLI here (neither `docker compose` nor `docker-compose` runs)")
    env_file = tmp_path / "test.env"
    lines = (ROOT / ".env.example").read_text().splitlines()
    env_file.write_text(
        "\n".join(f"{ln}x{i}-placeholder" if ln.endswith("=") else ln for i, ln in enumerate(lines)) + "\n"
    )
    base = [*argv, "--project-directory", str(ROOT), "-f", str(COMPOSE), "--env-file", str(env_file)]
    for profiles in ([], ["--profile", "sim", "--profile", "load", "--profile", "observe"]):
        done = subprocess.run([*base, *profiles, "config", "-q"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    # without the secrets it must refuse, naming one
    missing = tmp_path / "empty.env"
    missing.write_text("")
    done = subprocess.run(
        [
            *argv,
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE),
            "--env-file",
            str(missing),
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "in .env" in done.stderr
