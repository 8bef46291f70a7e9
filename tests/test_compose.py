"""docker-compose.yaml and docker/Dockerfile checked against the code, without a Docker engine.

Structural validation (what `docker compose config` would reject) plus agreement with
what the DAGs and jobs expect: ECREC_* keys, lake mount, dags folder, Spark and MLflow URLs.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from ecrec_lib.config import PSEUDO_KEY_FILE_ENV, EcrecConfig, load_config
from ecrec_lib.orchestration import RETRIES_ENV, SPARK_CONN_ID, SPARK_SUBMIT_ENV
from jobs.common import SPARK_AUTH_SECRET_ENV

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
INIT_SQL = REPO / "docker" / "postgres" / "init.sql"
ENV = {"POSTGRES_PASSWORD": "pw", "AIRFLOW_JWT_SECRET": "j" * 40, "MLFLOW_ADMIN_PASSWORD": "mlpw",
       "MLFLOW_FLASK_SECRET_KEY": "f" * 40, "SPARK_AUTH_SECRET": "s" * 40}
REQUIRED_SECRETS = tuple(ENV)
NON_FIELD_ECREC_KEYS = {PSEUDO_KEY_FILE_ENV, SPARK_SUBMIT_ENV, RETRIES_ENV, SPARK_AUTH_SECRET_ENV}
MLFLOW_AUTH_INI = REPO / "docker" / "mlflow" / "basic_auth.ini"
TOP_LEVEL = {"name", "services", "volumes", "networks", "secrets", "configs"}
SERVICE_KEYS = {
    "image", "build", "command", "entrypoint", "environment", "volumes", "ports", "healthcheck",
    "depends_on", "networks", "secrets", "restart", "hostname", "user", "working_dir",
}
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer")
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}")


class InterpolationError(ValueError):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?message} and $$ rules."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        if m.group(2):
            return env.get(name) or m.group(3)
        if m.group(4):
            if not env.get(name):
                raise InterpolationError(f"required variable {name} is missing: {m.group(5)}")
            return env[name]
        return env.get(name, "")

    out = _VAR.sub(sub, value)
    if re.search(r"\$\{[^}]*$|\$\{\}", out):
        raise InterpolationError(f"unterminated variable in {value!r}")
    return out


def _walk(node, env):  # noqa: ANN001, ANN202
    if isinstance(node, dict):
        return {k: _walk(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v, env) for v in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def load_compose(env: dict[str, str] = ENV) -> dict:
    raw = yaml.safe_load(COMPOSE.read_text())  # SafeLoader resolves the << merge keys
    return _walk(raw, env)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping"
    return {k: str(v) for k, v in env.items()}


def _ports(service: dict) -> list[tuple[str, str, str]]:
    """(bind address, host port, container port) of every published port."""
    out = []
    for port in service.get("ports", []):
        m = re.fullmatch(r"(?:([\d.]+|\[[0-9a-f:]+\]):)?(\d+):(\d+)", port)
        assert m, f"port {port!r} is not [ADDRESS:]HOST:CONTAINER"
        out.append((m.group(1) or "0.0.0.0", m.group(2), m.group(3)))
    return out


def _mounts(service: dict) -> dict[str, str]:
    """container path -> source for every volume entry."""
    out = {}
    for entry in service.get("volumes", []):
        parts = entry.split(":")
        assert len(parts) in (2, 3), f"bad volume entry {entry!r}"
        out[parts[1]] = parts[0]
    return out


def test_structure_is_valid(compose: dict) -> None:
    top = {k for k in compose if not k.startswith("x-")}
    assert top <= TOP_LEVEL, top - TOP_LEVEL
    services = compose["services"]
    declared_volumes = set(compose.get("volumes", {}))
    declared_secrets = set(compose.get("secrets", {}))
    declared_networks = set(compose.get("networks", {}))
    host_ports: list[str] = []
    for name, svc in services.items():
        assert set(svc) <= SERVICE_KEYS, f"{name}: unknown keys {set(svc) - SERVICE_KEYS}"
        assert "image" in svc or "build" in svc, f"{name} has neither image nor build"
        for src in _mounts(svc).values():
            if src.startswith((".", "/")):
                assert (REPO / src).exists(), f"{name}: bind source {src} does not exist"
            else:
                assert src in declared_volumes, f"{name}: volume {src} is not declared"
        for secret in svc.get("secrets", []):
            assert secret in declared_secrets, f"{name}: secret {secret} is not declared"
        nets = svc.get("networks", [])
        for net in nets if isinstance(nets, list) else nets.keys():
            assert net in declared_networks, f"{name}: network {net} is not declared"
        deps = svc.get("depends_on", {})
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name, f"{name} depends on itself"
            cond = spec["condition"]
            assert cond in {"service_started", "service_healthy",
                            "service_completed_successfully"}, cond
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health, " \
                    f"but {dep} has no healthcheck"
        host_ports += [host for _, host, _ in _ports(svc)]
        if "healthcheck" in svc:
            assert svc["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}
    assert len(host_ports) == len(set(host_ports)), f"host port used twice: {host_ports}"
    # no dependency cycles
    seen: dict[str, int] = {}

    def visit(n: str) -> None:
        assert seen.get(n) != 1, f"depends_on cycle through {n}"
        if seen.get(n) == 2:
            return
        seen[n] = 1
        for d in services[n].get("depends_on", {}):
            visit(d)
        seen[n] = 2

    for n in services:
        visit(n)


def test_required_variable_is_enforced() -> None:
    for secret in REQUIRED_SECRETS:
        with pytest.raises(InterpolationError, match=secret):
            load_compose({k: v for k, v in ENV.items() if k != secret})
    assert interpolate("a${X:-d}b$$", {}) == "ad" + "b$"


def test_expected_services(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "airflow-init", *AIRFLOW_SERVICES, "spark-master", "spark-worker",
            "mlflow"} <= set(services)
    for name in AIRFLOW_SERVICES:
        env = _env(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert services[name]["depends_on"]["airflow-init"]["condition"] == \
            "service_completed_successfully"
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert _ports(services["airflow-apiserver"]) == [("127.0.0.1", "8080", "8080")]
    assert "/api/v2/monitor/health" in " ".join(services["airflow-apiserver"]["healthcheck"]["test"])


def test_ecrec_env_keys_are_config_fields_and_load(compose: dict) -> None:
    fields = {f"ECREC_{name.upper()}" for name in EcrecConfig.__dataclass_fields__}
    for name, svc in compose["services"].items():
        env = _env(svc)
        ecrec = {k for k in env if k.startswith("ECREC_")}
        unknown = ecrec - fields - NON_FIELD_ECREC_KEYS
        assert not unknown, f"{name}: {unknown} are not EcrecConfig fields"
        if ecrec:
            cfg = load_config(env=env)  # types and values validate exactly as in the jobs
            assert cfg.lake_root == "/data/lake"


def test_lake_volume_mounted_where_ecrec_lake_root_points(compose: dict) -> None:
    services = compose["services"]
    users = [n for n, s in services.items() if "ECREC_LAKE_ROOT" in _env(s)]
    assert set(AIRFLOW_SERVICES) | {"spark-worker"} <= set(users)
    for name in users:
        root = _env(services[name])["ECREC_LAKE_ROOT"]
        assert _mounts(services[name]).get(root) == "lake", f"{name} lacks the lake at {root}"


def test_dags_folder_is_mounted(compose: dict) -> None:
    for name in AIRFLOW_SERVICES:
        svc = compose["services"][name]
        folder = _env(svc)["AIRFLOW__CORE__DAGS_FOLDER"]
        assert _mounts(svc).get(folder) == "./dags", f"{name} does not mount ./dags at {folder}"


def test_spark_master_url_matches_service(compose: dict) -> None:
    services = compose["services"]
    cmd = services["spark-master"]["command"]
    port = cmd[cmd.index("--port") + 1]
    host = cmd[cmd.index("--host") + 1]
    assert host == "spark-master"
    expected = f"spark://spark-master:{port}"
    assert ("127.0.0.1", port, port) in _ports(services["spark-master"])
    assert services["spark-worker"]["command"][-1] == expected
    for name in AIRFLOW_SERVICES:
        env = _env(services[name])
        assert env["ECREC_SPARK_MASTER"] == expected
        conn = urlparse(env[f"AIRFLOW_CONN_{SPARK_CONN_ID.upper()}"])
        # The Spark provider rebuilds the master from conn_type://host:port.
        assert f"{conn.scheme}://{conn.hostname}:{conn.port}" == expected


def test_spark_versions_agree_with_requirements(compose: dict) -> None:
    pin = re.search(r"^pyspark(?:\[[^\]]*\])?==([\d.]+)", (REPO / "requirements.txt").read_text(),
                    re.M)
    assert pin, "requirements.txt must pin pyspark"
    image = compose["services"]["spark-master"]["image"]
    assert image.startswith(f"apache/spark:{pin.group(1)}-"), (image, pin.group(1))
    assert "java17" in image
    # Executors run Python UDFs: the worker must run the same image as the drivers.
    assert compose["services"]["spark-worker"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_mlflow_uri_matches_service(compose: dict) -> None:
    services = compose["services"]
    cmd = services["mlflow"]["command"]
    port = cmd[cmd.index("--port") + 1]
    backend = urlparse(cmd[cmd.index("--backend-store-uri") + 1])
    assert backend.hostname == "postgres" and backend.path == "/mlflow"
    # The server stores artifacts on its volume and serves them: jobs upload over HTTP.
    assert "--serve-artifacts" in cmd
    artifacts = cmd[cmd.index("--artifacts-destination") + 1]
    assert _mounts(services["mlflow"]).get(artifacts) == "mlartifacts"
    for name in (*AIRFLOW_SERVICES, "spark-worker"):
        env = _env(services[name])
        uri = urlparse(env["ECREC_MLFLOW_TRACKING_URI"])
        assert (uri.hostname, str(uri.port)) == ("mlflow", port)
        assert uri.hostname in cmd[cmd.index("--allowed-hosts") + 1].split(",")
        assert env["ECREC_MLFLOW_ARTIFACT_ROOT"].startswith("mlflow-artifacts:")
    assert ("127.0.0.1", port, port) in _ports(services["mlflow"])


def test_online_redis_url_matches_service(compose: dict) -> None:
    services = compose["services"]
    assert "noeviction" in services["redis"]["command"]
    for name in AIRFLOW_SERVICES:
        url = urlparse(_env(services[name])["ECREC_ONLINE_REDIS_URL"])
        assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379)


def test_databases_exist_for_every_postgres_url(compose: dict) -> None:
    created = set(re.findall(r"CREATE DATABASE (\w+);", INIT_SQL.read_text()))
    services = compose["services"]
    init_mount = _mounts(services["postgres"])
    assert any(p.startswith("/docker-entrypoint-initdb.d/") for p in init_mount)
    urls = [
        _env(services["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        _env(services["airflow-scheduler"])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"],
        _env(services["airflow-scheduler"])["ECREC_WAREHOUSE_URL"],
        services["mlflow"]["command"][services["mlflow"]["command"].index("--backend-store-uri")
                                      + 1],
    ]
    pg_user = services["postgres"]["environment"]["POSTGRES_USER"]
    for url in urls:
        parsed = urlparse(url)
        assert parsed.hostname == "postgres" and parsed.port == 5432, url
        assert parsed.username == pg_user and parsed.password == "pw", url
        assert parsed.path.lstrip("/") in created, f"{url}: database not created by init.sql"
        # psycopg (3) is what requirements.txt installs; psycopg2/asyncpg are not.
        assert parsed.scheme in {"postgresql", "postgresql+psycopg"}, url


def test_secret_reaches_the_jobs(compose: dict) -> None:
    for name in (*AIRFLOW_SERVICES, "spark-worker"):
        svc = compose["services"][name]
        assert "ecrec_pseudo_key" in svc["secrets"]
        assert _env(svc)[PSEUDO_KEY_FILE_ENV] == "/run/secrets/ecrec_pseudo_key"


def test_dockerfile_installs_java17_and_requirements() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "openjdk-17-jre-headless" in text
    assert re.search(r"^COPY requirements\.txt ", text, re.M)
    assert "pip install -r /opt/ecrec/requirements.txt" in text
    for pkg in ("ecrec_lib", "jobs", "dags", "expectations"):
        assert re.search(rf"^COPY {pkg} /opt/ecrec/{pkg}$", text, re.M), pkg
        assert (REPO / pkg).is_dir(), f"Dockerfile copies {pkg}/, which does not exist"
    assert "PYTHONPATH=/opt/ecrec" in text
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in dockerignore and "lake" in dockerignore


def test_published_ports_bind_loopback_unless_overridden(compose: dict) -> None:
    for name, svc in compose["services"].items():
        for address, host, _ in _ports(svc):
            assert address == "127.0.0.1", f"{name} publishes port {host} on {address}"
    wide = load_compose({**ENV, "ECREC_BIND": "0.0.0.0"})
    assert ("0.0.0.0", "8080", "8080") in _ports(wide["services"]["airflow-apiserver"])


def test_no_password_has_a_default() -> None:
    text = COMPOSE.read_text()
    # ${VAR:-default} on a secret would start the stack with a guessable password.
    for var in re.findall(r"\$\{(\w*(?:PASSWORD|SECRET|KEY)\w*):?-", text):
        pytest.fail(f"{var} has a default value in docker-compose.yaml; make it required (:?)")
    for secret in REQUIRED_SECRETS:
        assert f"${{{secret}:?" in text, f"{secret} is not required"


def test_mlflow_runs_with_basic_auth_and_jobs_log_in(compose: dict) -> None:
    import configparser

    services = compose["services"]
    cmd = services["mlflow"]["command"]
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    env = _env(services["mlflow"])
    ini_path = env["MLFLOW_AUTH_CONFIG_PATH"]
    assert _mounts(services["mlflow"])[ini_path] == "./docker/mlflow/basic_auth.ini"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == ENV["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == ENV["MLFLOW_FLASK_SECRET_KEY"]
    ini = configparser.ConfigParser()
    ini.read(MLFLOW_AUTH_INI)
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert "admin_password" not in ini["mlflow"], "the admin password must not live in the repo"
    db = Path(ini["mlflow"]["database_uri"].removeprefix("sqlite:///"))
    assert any(db.is_relative_to(p) for p, src in _mounts(services["mlflow"]).items()
               if not src.startswith(".")), f"auth database {db} is not on a volume"
    assert 'mlflow[auth]' in DOCKERFILE.read_text(), "the image lacks the basic-auth extra"
    for name in (*AIRFLOW_SERVICES, "spark-worker"):
        job_env = _env(services[name])
        assert job_env["MLFLOW_TRACKING_USERNAME"] == ini["mlflow"]["admin_username"]
        assert job_env["MLFLOW_TRACKING_PASSWORD"] == ENV["MLFLOW_ADMIN_PASSWORD"]


def test_spark_authenticates_with_the_shared_secret(compose: dict) -> None:
    services = compose["services"]
    secret = ENV["SPARK_AUTH_SECRET"]
    for name, var in (("spark-master", "SPARK_MASTER_OPTS"), ("spark-worker", "SPARK_WORKER_OPTS")):
        opts = _env(services[name])[var].split()
        assert "-Dspark.authenticate=true" in opts, name
        assert f"-Dspark.authenticate.secret={secret}" in opts, name
    for name in AIRFLOW_SERVICES:
        assert _env(services[name])[SPARK_AUTH_SECRET_ENV] == secret
