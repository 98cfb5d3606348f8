"""docker-compose.yml, the Dockerfile and the ops/ files they mount, checked without an engine.

Where a Docker client with the compose plugin answers, `docker compose config` validates the
file and resolves it (anchors, merge keys, interpolation, profiles) and the checks read its
output. Elsewhere the YAML is read as it is: PyYAML resolves anchors and merge keys the same
way, `${VAR:-default}` is replaced by its default and keys are checked against the compose
specification's names, so a misspelt key fails here too. Neither way needs a Docker engine,
and `docker build` is not run: the Dockerfile is checked for its structure.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from usage_ingest.settings import ENV_PREFIX, SecurityProtocol, Settings

ROOT = Path(__file__).parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SETTING_VARIABLES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
VARIABLE = re.compile(r"(?<![A-Za-z0-9_])USAGE_INGEST_[A-Z0-9_]+")
# The model's own defaults, whatever USAGE_INGEST_* variables this shell has.
DEFAULTS = Settings.model_construct()
OUR_IMAGE = "usage-ingest"

# Service attributes of the compose specification: a misspelt key is not silently ignored.
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup",
    "cgroup_parent", "command", "configs", "container_name", "cpu_count", "cpu_percent",
    "cpu_period", "cpu_quota", "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset",
    "credential_spec", "depends_on", "deploy", "develop", "device_cgroup_rules", "devices", "dns",
    "dns_opt", "dns_search", "domainname", "entrypoint", "env_file", "environment", "expose",
    "extends", "external_links", "extra_hosts", "gpus", "group_add", "healthcheck", "hostname",
    "image", "init", "ipc", "isolation", "label_file", "labels", "links", "logging",
    "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit",
    "platform", "ports", "post_start", "pre_stop", "privileged", "profiles", "pull_policy",
    "read_only", "restart", "runtime", "scale", "secrets", "security_opt", "shm_size",
    "stdin_open", "stop_grace_period", "stop_signal", "storage_opt", "sysctls", "tmpfs", "tty",
    "ulimits", "user", "userns_mode", "uts", "volumes", "volumes_from", "working_dir",
}  # fmt: skip
TOP_LEVEL_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


# --------------------------------------------------------------------------- reading the files


@functools.cache
def docker_compose() -> list[str] | None:
    """`docker compose` when a Docker client with the compose plugin is here, else None."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [docker, "compose"] if probe.returncode == 0 else None


def _interpolate(value: Any) -> Any:
    """What compose does to values: `${VAR:-default}` and `${VAR}` unset, `$$` is `$`."""
    if isinstance(value, str):
        value = re.sub(r"(?<!\$)\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    return value


@functools.cache
def raw_compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@functools.cache
def compose() -> dict[str, Any]:
    """The compose model, "monitoring" profile included, resolved."""
    command = docker_compose()
    if command is None:
        model = _interpolate(raw_compose())
        return {k: v for k, v in model.items() if not k.startswith("x-")}
    result = subprocess.run(
        [*command, "-f", str(COMPOSE), "--profile", "monitoring", "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"docker compose config refused the file:\n{result.stderr}"
    resolved: dict[str, Any] = json.loads(result.stdout)
    return resolved


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # the short form means service_started
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def bind_sources(service: dict[str, Any]) -> list[Path]:
    sources = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                sources.append((ROOT / source).resolve())
        elif volume.get("type") == "bind":
            sources.append((ROOT / volume["source"]).resolve())
    return sources


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else list(command)


def one_shots() -> set[str]:
    return {
        name
        for service in services().values()
        for name, condition in depends_on(service).items()
        if condition == "service_completed_successfully"
    }


def ours() -> dict[str, dict[str, Any]]:
    """The services that run usage-ingest's image."""
    return {
        name: service
        for name, service in services().items()
        if str(service.get("image", "")).split(":")[0] == OUR_IMAGE
    }


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, int | float):
        return duration / 1e9  # `docker compose config --format json` gives nanoseconds
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(number) * units[unit]
    return total


def port_of(url_command: list[str]) -> int:
    match = re.search(r"127\.0\.0\.1:(\d+)/", " ".join(url_command))
    assert match, url_command
    return int(match.group(1))


# --------------------------------------------------------------------------- compose: shape


def test_the_compose_file_has_only_known_keys() -> None:
    raw = raw_compose()
    assert set(raw) - TOP_LEVEL_KEYS <= {k for k in raw if k.startswith("x-")}
    for name, service in raw["services"].items():
        unknown = set(service) - SERVICE_KEYS - {"<<"}
        assert not unknown, f"{name}: unknown keys {unknown}"
        assert set(service.get("healthcheck") or {}) <= HEALTHCHECK_KEYS | {"disable"}, name
        for target, condition in depends_on(service).items():
            assert condition in CONDITIONS, (name, target, condition)
            assert target in raw["services"], (name, target)


def test_every_usage_ingest_variable_is_a_setting() -> None:
    for name, service in services().items():
        unknown = {k for k in environment(service) if k.startswith(ENV_PREFIX)} - SETTING_VARIABLES
        assert not unknown, f"{name}: {unknown} are not settings (README, Configuration)"
    # Commented examples, the Dockerfile and ops/ too: a renamed setting must not linger.
    texts = [COMPOSE, DOCKERFILE, *sorted((ROOT / "ops").rglob("*.y*ml"))]
    for path in texts:
        unknown = set(VARIABLE.findall(path.read_text())) - SETTING_VARIABLES
        assert not unknown, f"{path.name}: {unknown} are not settings"


def test_every_service_of_ours_reaches_kafka_and_postgres() -> None:
    assert set(ours()) == {"migrate", "worker", "api", "lag-exporter"}
    for name, service in ours().items():
        env = environment(service)
        settings = Settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()})
        assert settings.kafka_bootstrap_servers == "kafka:9092", name
        assert settings.require_database_url().endswith("@postgres:5432/usage_ingest"), name


def test_the_commented_kafka_security_example_is_a_valid_configuration() -> None:
    example = dict(
        re.findall(r"^\s*#\s*(USAGE_INGEST_[A-Z0-9_]+):\s*(\S+)\s*$", COMPOSE.read_text(), re.M)
    )
    assert {"USAGE_INGEST_KAFKA_SECURITY_PROTOCOL", "USAGE_INGEST_KAFKA_SASL_PASSWORD"} <= set(
        example
    )
    env = environment(services()["worker"]) | _interpolate(example)
    settings = Settings(**{k.removeprefix(ENV_PREFIX).lower(): v for k, v in env.items()})
    assert settings.kafka_security_protocol in (
        SecurityProtocol.SASL_PLAINTEXT,
        SecurityProtocol.SASL_SSL,
    )
    # The broker side of the example: the JAAS file it mounts, the listener it adds.
    text = COMPOSE.read_text()
    for path in re.findall(r"\./ops/[\w./-]+", text):
        assert (ROOT / path).exists(), f"docker-compose.yml names {path}, which does not exist"
    assert "# KAFKA_SASL_ENABLED_MECHANISMS: SCRAM-SHA-512" in text
    assert "SASL_PLAINTEXT://kafka:9095" in text
    assert "USAGE_INGEST_KAFKA_BOOTSTRAP_SERVERS: kafka:9095" in text


def test_images_are_pinned() -> None:
    for name, service in services().items():
        image = str(service.get("image", ""))
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"
        assert re.match(r"^v?\d+\.\d+(\.\d+)?([-.].+)?$", tag), f"{name}: {image} not a version"
        if repository != OUR_IMAGE:  # third-party images: a full version, x.y.z or x.y-variant
            assert re.match(r"^v?\d+\.\d+(\.\d+|-)", tag), f"{name}: pin {image} to a version"


def test_long_running_services_have_healthchecks_and_one_shots_run_once() -> None:
    for name, service in services().items():
        check = service.get("healthcheck") or {}
        if name in one_shots():
            assert service.get("restart") in ("no", None), f"{name} runs once: restart 'no'"
            continue
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} has its healthcheck disabled"
        assert service.get("restart") == "unless-stopped", name
    for name, service in services().items():
        for target, condition in depends_on(service).items():
            if condition == "service_healthy":
                assert services()[target].get("healthcheck", {}).get("test"), (name, target)


def test_docker_compose_up_comes_up_in_order() -> None:
    everything = {
        "kafka": "service_healthy",
        "kafka-topics": "service_completed_successfully",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert depends_on(services()["worker"]) == everything
    assert depends_on(services()["api"]) == everything
    # The lag exporter reads the broker only: it reports even while Postgres is away.
    assert depends_on(services()["lag-exporter"]) == {
        "kafka": "service_healthy",
        "kafka-topics": "service_completed_successfully",
    }
    assert depends_on(services()["migrate"]) == {"postgres": "service_healthy"}
    assert depends_on(services()["kafka-topics"]) == {"kafka": "service_healthy"}
    assert one_shots() == {"kafka-topics", "migrate"}
    assert command_of(services()["migrate"]) == ["migrate"]
    assert command_of(services()["worker"])[0] == "run"
    assert command_of(services()["api"]) == ["api"]


def test_workers_are_replicated_drain_on_stop_and_report_readiness() -> None:
    worker = services()["worker"]
    assert int(worker["deploy"]["replicas"]) >= 2
    assert seconds(worker["stop_grace_period"]) > DEFAULTS.shutdown_grace_s
    test = worker["healthcheck"]["test"]
    assert "/readyz" in " ".join(test)
    assert port_of(test) == DEFAULTS.metrics_port
    api = services()["api"]
    assert environment(api)["USAGE_INGEST_API_HOST"] == "0.0.0.0"
    assert port_of(api["healthcheck"]["test"]) == int(environment(api)["USAGE_INGEST_API_PORT"])


def test_kafka_runs_in_kraft_mode_and_the_topics_are_created() -> None:
    kafka = services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = environment(kafka)
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert not any("ZOOKEEPER" in k for k in env)
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"

    topics = services()["kafka-topics"]
    script = "\n".join(topics["command"])
    defaults = (
        DEFAULTS.topic_events,
        DEFAULTS.topic_accepted,
        DEFAULTS.topic_rejected,
        DEFAULTS.topic_dlq,
    )
    for topic in defaults:
        assert re.search(rf"topic {re.escape(topic)} --partitions", script), topic
    assert re.search(rf"topic {re.escape(DEFAULTS.topic_dlq)} [^\n]*\n?[^\n]*retention\.ms", script)
    env = environment(topics)
    assert int(env["EVENTS_PARTITIONS"]) >= int(services()["worker"]["deploy"]["replicas"])
    assert int(env["DLQ_RETENTION_MS"]) >= 30 * 24 * 3600 * 1000  # dead letters wait for a fix


def test_the_lag_exporter_serves_the_port_its_healthcheck_and_prometheus_ask() -> None:
    from usage_ingest.cli.lag import lag

    exporter = services()["lag-exporter"]
    command = command_of(exporter)
    assert command[:2] == ["lag", "--serve"]
    # The command line is one `usage-ingest lag` accepts (parsed, not run).
    context = lag.make_context("lag", command[1:])
    port = context.params["serve_port"]
    assert port != DEFAULTS.metrics_port, "the workers' port"
    test = exporter["healthcheck"]["test"]
    assert "/healthz" in " ".join(test)
    assert port_of(test) == port
    config = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    [targets] = jobs["usage-ingest-lag"]["static_configs"]
    assert targets["targets"] == [f"lag-exporter:{port}"]
    # The alert that says the exporter is gone looks for this job.
    assert 'job="usage-ingest-lag"' in (ROOT / "ops" / "prometheus-alerts.yml").read_text()


# --------------------------------------------------------------------------- monitoring profile


def test_prometheus_and_grafana_are_an_optional_profile_wired_to_the_ops_files() -> None:
    for name, service in services().items():
        expected = ["monitoring"] if name in ("prometheus", "grafana") else None
        assert service.get("profiles") == expected, name
    for name, service in services().items():
        for source in bind_sources(service):
            assert source.exists(), f"{name} mounts {source}, which does not exist"

    prometheus = services()["prometheus"]
    mounted = {p.name for p in bind_sources(prometheus)}
    assert {"prometheus.yml", "prometheus-alerts.yml"} <= mounted
    config = yaml.safe_load((ROOT / "ops" / "prometheus.yml").read_text())
    assert any(
        Path("/etc/prometheus/rules/usage-ingest.yml").match(g) for g in config["rule_files"]
    )
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The alert rules look for this job (up{job="usage-ingest"}).
    assert 'job="usage-ingest"' in (ROOT / "ops" / "prometheus-alerts.yml").read_text()
    [discovery] = jobs["usage-ingest"]["dns_sd_configs"]
    assert discovery["names"] == ["worker"]
    assert discovery["port"] == DEFAULTS.metrics_port

    grafana = services()["grafana"]
    assert (ROOT / "ops" / "grafana-dashboard.json").resolve() in bind_sources(grafana)
    provisioning = ROOT / "ops" / "grafana" / "provisioning"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "usage-ingest.yml").read_text())[
        "providers"
    ]
    dashboard_target = next(
        v.split(":")[1] for v in raw_compose()["services"]["grafana"]["volumes"] if "dashboard" in v
    )
    assert Path(dashboard_target).parent == Path(provider["options"]["path"])
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"


# --------------------------------------------------------------------------- the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def test_the_image_is_multi_stage_slim_and_pinned() -> None:
    args = dict(
        rest.split("=", 1) for keyword, rest in dockerfile_instructions() if keyword == "ARG"
    )
    built = stages()
    assert len(built) >= 2, "multi-stage: build, then a clean runtime stage"
    for stage in built:
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        repository, _, tag = image.rpartition(":")
        assert repository == "python", image
        assert re.match(r"^\d+\.\d+\.\d+-slim", tag), f"pin {image} to a slim patch release"


def test_the_runtime_stage_runs_usage_ingest_as_an_unprivileged_user() -> None:
    runtime = stages()[-1]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users, "the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["usage-ingest"]') in runtime
    healthchecks = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    assert healthchecks
    assert f"'{DEFAULTS.metrics_port}'" in healthchecks[0]
    assert "/healthz" in healthchecks[0]
    assert ("STOPSIGNAL", "SIGTERM") in runtime


def test_no_compiler_reaches_the_runtime_stage_and_the_package_comes_from_this_repo() -> None:
    runtime_text = " ".join(rest for _, rest in stages()[-1])
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in runtime_text, f"{tool} in the runtime stage"
    assert "COPY --from=build" in "\n".join(f"{k} {r}" for k, r in stages()[-1])
    build_text = "\n".join(f"{k} {r}" for k, r in stages()[0])
    assert "COPY src/ src/" in build_text
    assert "pip wheel --no-deps --wheel-dir /wheels ." in build_text
    assert "--only-binary=:all: /wheels/usage_ingest-" in build_text, "deps as wheels only"
    assert not re.search(r"pip install (?:-\S+ )*usage[-_]ingest(?:[=<>\[\s]|$)", build_text)


def test_the_build_context_holds_what_the_wheel_needs_and_nothing_else() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "src"}


def test_the_wheel_carries_the_sql_files() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]["usage_ingest.store"]
    assert "sql/*.sql" in package_data
    sql = ROOT / "src" / "usage_ingest" / "store" / "sql"
    assert not sql.is_symlink(), "package data, not a link out of the package"
    assert sorted(p.name for p in sql.glob("0*.sql")), "no migrations"


@pytest.mark.parametrize("path", ["docker-compose.yml", "Dockerfile", ".dockerignore"])
def test_the_deployment_files_are_documented(path: str) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "## Deploying" in readme
    assert "## Scaling" in readme
    assert f"`{path}`" in readme


def test_the_license_is_an_spdx_expression() -> None:
    """PEP 639: setuptools warns at every install about `license = { text = ... }`."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    assert not any("License ::" in c for c in project["project"].get("classifiers", []))
