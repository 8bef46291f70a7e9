"""The production topology as local processes: the twin of ``docker-compose.yaml``.

Where compose runs a container, this runs the same program as a process on 127.0.0.1:
a Spark standalone master and worker (``spark-class`` from the pyspark distribution), an
MLflow tracking server on PostgreSQL with a served artifact store, Airflow on PostgreSQL
(LocalExecutor: api-server, scheduler, dag-processor, triggerer) and the warehouse on
PostgreSQL; the online cache is the Redis server at ``redis_url``. Every job reads the
same ``ECREC_*`` keys the README documents for production; nothing in the platform's code
knows it runs here.

Each service starts in its own session (process group) with its pid in ``run/<name>.pid``
and its output in ``logs/<name>.log`` under the topology root; :func:`stop` ends each group
by that pid (SIGTERM, then SIGKILL after a grace period). ``tests/test_compose_twin.py``
checks every compose service, port, environment key and volume against :func:`services`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ecrec_lib.orchestration import WAREHOUSE_POOL, WAREHOUSE_POOL_SLOTS

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# Marks every process of one topology, so a check can find strays by root.
ROOT_ENV = "ECREC_TOPOLOGY_ROOT"
STOP_GRACE_S = 20.0
# compose's airflow-init service: run once before the Airflow services start (the metadata
# database, then the pool every warehouse writer runs in).
INIT_COMMANDS = (
    (str(VENV_BIN / "airflow"), "db", "migrate"),
    (str(VENV_BIN / "airflow"), "pools", "set", WAREHOUSE_POOL, str(WAREHOUSE_POOL_SLOTS),
     "one writer at a time into the ecrec warehouse"),
)


class TopologyError(RuntimeError):
    """A service did not start or stop; the message names it and its log."""


@dataclass(frozen=True)
class Ports:
    """Host ports on 127.0.0.1 (compose publishes the same container ports)."""

    airflow: int = 8080
    mlflow: int = 5000
    spark: int = 7077
    spark_ui: int = 8081
    worker_ui: int = 8082


@dataclass(frozen=True)
class Service:
    """One long-running process, and the compose service it stands for."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    # compose container port -> the host port this process listens on
    ports: Mapping[int, int] = field(default_factory=dict)
    # compose named volume -> the directory that plays its part here
    volumes: Mapping[str, str] = field(default_factory=dict)
    # image of the compose service this process twins (see tests/test_compose_twin.py)
    image: str = "ecrec:latest"
    ready_url: str = ""  # GET returning 200 once the service is up


@dataclass(frozen=True)
class Topology:
    """Where one topology lives: its root folder, PostgreSQL server and ports."""

    root: Path
    postgres_url: str = "postgresql://postgres@127.0.0.1:5432"
    db_prefix: str = "ecrec"
    redis_url: str = "redis://127.0.0.1:6379/0"  # the online cache (compose's redis service)
    ports: Ports = Ports()
    extra_env: Mapping[str, str] = field(default_factory=dict)

    # --- places -------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.resolve().joinpath(*parts)

    def database(self, role: str) -> str:
        """The PostgreSQL database of ``role`` (airflow, mlflow, warehouse)."""
        return f"{self.db_prefix}_{role}"

    def db_url(self, role: str, driver: str = "") -> str:
        scheme, rest = self.postgres_url.split("://", 1)
        scheme = f"{scheme}+{driver}" if driver else scheme
        return f"{scheme}://{rest.rstrip('/')}/{self.database(role)}"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.airflow}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def spark_master(self) -> str:
        return f"spark://127.0.0.1:{self.ports.spark}"

    @property
    def spark_ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.spark_ui}"

    # --- environments -------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        """The caller's environment without Airflow/ecrec settings, plus the repo and venv."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ECREC_"))}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(REPO_ROOT)
        env[ROOT_ENV] = str(self.path())
        return env

    def ecrec_env(self) -> dict[str, str]:
        """What every job sees: the production config keys pointed at these processes."""
        env = self.base_env()
        env.update(
            ECREC_LAKE_ROOT=str(self.path("lake")),
            ECREC_WAREHOUSE_URL=self.db_url("warehouse"),
            ECREC_SPARK_MASTER=self.spark_master,
            ECREC_SPARK_DRIVER_MEMORY="1g",
            ECREC_MLFLOW_TRACKING_URI=self.mlflow_url,
            # The server's served store: jobs upload artifacts over HTTP.
            ECREC_MLFLOW_ARTIFACT_ROOT="mlflow-artifacts:/",
            ECREC_AIRFLOW_HOME=str(self.path("airflow")),
            ECREC_PSEUDO_KEY_FILE=str(self.path("secrets", "pseudo_key")),
            ECREC_ONLINE_REDIS_URL=self.redis_url,
            ECREC_SPARK_SUBMIT="1",
            ECREC_SPARK_AUTH_SECRET=self._secret("spark_auth_secret"),
            MLFLOW_TRACKING_USERNAME="admin",
            MLFLOW_TRACKING_PASSWORD=self._secret("mlflow_admin_password"),
            ECREC_TASK_RETRIES="2",
            # Drivers run in the Airflow task processes on this host; executors on the worker
            # must call back to a reachable address and use the same interpreter.
            SPARK_LOCAL_IP="127.0.0.1",
            PYSPARK_PYTHON=sys.executable,
            GX_ANALYTICS_ENABLED="False",
            MLFLOW_DISABLE_TELEMETRY="true",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        env.update(self.extra_env)
        return env

    def airflow_env(self) -> dict[str, str]:
        env = self.ecrec_env()
        conn = self.db_url("airflow", driver="psycopg")
        env.update(
            AIRFLOW_HOME=str(self.path("airflow")),
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM="4",
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=conn,
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=conn,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.airflow_url}/execution/",
            AIRFLOW__API__PORT=str(self.ports.airflow),
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__BASE_URL=self.airflow_url,
            AIRFLOW__API_AUTH__JWT_SECRET=self._secret("airflow_jwt_secret"),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="admin:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(
                self.path("airflow", "passwords", "passwords.json")),
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="60",
            AIRFLOW_CONN_ECREC_SPARK=self.spark_master,
            AIRFLOW_CONN_MLFLOW_DEFAULT=self.mlflow_url,
        )
        env.update({k: v for k, v in self.extra_env.items() if k.startswith("AIRFLOW")})
        return env

    def _secret(self, name: str) -> str:
        """A local random secret kept in ``secrets/<name>`` (mode 600), created once."""
        path = self.path("secrets", name)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        return path.read_text().strip()


def _mlflow_auth_config(topo: Topology) -> Path:
    """compose's basic_auth.ini with its user database moved under the topology root."""
    text = (REPO_ROOT / "docker" / "mlflow" / "basic_auth.ini").read_text()
    db = topo.path("mlflow-auth", "basic_auth.db")
    text = re.sub(r"(?m)^database_uri = .*$", f"database_uri = sqlite:///{db}", text)
    path = topo.path("mlflow-auth", "basic_auth.ini")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def services(topo: Topology) -> list[Service]:
    """Every long-running process, in start order."""
    spark_class = str(VENV_BIN / "spark-class")
    spark_auth = ("-Dspark.authenticate=true "
                  f"-Dspark.authenticate.secret={topo.ecrec_env()['ECREC_SPARK_AUTH_SECRET']}")
    py = sys.executable
    airflow = str(VENV_BIN / "airflow")
    base = topo.ecrec_env()
    af = topo.airflow_env()
    airflow_volumes = {
        "lake": str(topo.path("lake")),
        "mlartifacts": str(topo.path("mlartifacts")),
        "airflow-logs": str(topo.path("airflow", "logs")),
        "airflow-passwords": str(topo.path("airflow", "passwords")),
    }
    return [
        Service(
            name="spark-master",
            argv=(spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                  "--port", str(topo.ports.spark), "--webui-port", str(topo.ports.spark_ui)),
            env={**base, "SPARK_MASTER_OPTS": spark_auth},
            ports={7077: topo.ports.spark, 8080: topo.ports.spark_ui},
            image="apache/spark:4.3.0-scala2.13-java17-python3-ubuntu",
            ready_url=f"{topo.spark_ui_url}/json/",
        ),
        Service(
            name="spark-worker",
            argv=(spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                  "--cores", "2", "--memory", "4g", "--webui-port", str(topo.ports.worker_ui),
                  topo.spark_master),
            env={**base, "SPARK_WORKER_DIR": str(topo.path("spark-worker")),
                 "SPARK_WORKER_OPTS": spark_auth},
            ports={8082: topo.ports.worker_ui},
            volumes={"lake": str(topo.path("lake")), "mlartifacts": str(topo.path("mlartifacts"))},
            ready_url=f"http://127.0.0.1:{topo.ports.worker_ui}/json/",
        ),
        Service(
            name="mlflow",
            argv=(py, "-m", "mlflow", "server", "--host", "127.0.0.1",
                  "--port", str(topo.ports.mlflow), "--app-name", "basic-auth",
                  "--backend-store-uri", topo.db_url("mlflow", driver="psycopg"),
                  "--artifacts-destination", str(topo.path("mlartifacts")), "--serve-artifacts",
                  "--workers", "1"),
            env={**topo.base_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                 "MLFLOW_DISABLE_TELEMETRY": "true",
                 "MLFLOW_AUTH_CONFIG_PATH": str(_mlflow_auth_config(topo)),
                 "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
                 "MLFLOW_AUTH_ADMIN_PASSWORD": topo.ecrec_env()["MLFLOW_TRACKING_PASSWORD"],
                 "MLFLOW_FLASK_SERVER_SECRET_KEY": topo._secret("mlflow_flask_secret_key")},
            ports={5000: topo.ports.mlflow},
            volumes={"mlartifacts": str(topo.path("mlartifacts")),
                     "mlflow-auth": str(topo.path("mlflow-auth"))},
            ready_url=f"{topo.mlflow_url}/health",
        ),
        Service(
            name="airflow-apiserver",
            argv=(airflow, "api-server", "--port", str(topo.ports.airflow), "--host", "127.0.0.1"),
            env=af, ports={8080: topo.ports.airflow}, volumes=airflow_volumes,
            ready_url=f"{topo.airflow_url}/api/v2/monitor/health",
        ),
        Service(name="airflow-scheduler", argv=(airflow, "scheduler"), env=af,
                volumes=airflow_volumes),
        Service(name="airflow-dag-processor", argv=(airflow, "dag-processor"), env=af,
                volumes=airflow_volumes),
        Service(name="airflow-triggerer", argv=(airflow, "triggerer"), env=af,
                volumes=airflow_volumes),
    ]


# --- lifecycle -----------------------------------------------------------------------


def _pid_file(topo: Topology, name: str) -> Path:
    return topo.path("run", f"{name}.pid")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except (urllib.error.URLError, OSError):
        return 0


def _wait(what: str, ok: Callable[[], bool], timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(1.0)
    tail = ""
    if log is not None and log.exists():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    raise TopologyError(f"{what} not ready after {timeout:.0f}s; last lines of {log}:\n{tail}")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def ensure_databases(topo: Topology) -> None:
    """Create the airflow, mlflow and warehouse databases on the PostgreSQL server."""
    import psycopg

    admin = f"{topo.postgres_url.rstrip('/')}/postgres"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise TopologyError(
            f"PostgreSQL is not reachable at {topo.postgres_url} ({exc}); start it or set "
            "ECREC_PROD_POSTGRES_URL") from exc
    with conn:
        have = {r[0] for r in conn.execute("select datname from pg_database")}
        for role in ("airflow", "mlflow", "warehouse"):
            if topo.database(role) not in have:
                conn.execute(f'create database "{topo.database(role)}"')


def drop_databases(topo: Topology) -> None:
    import psycopg

    with psycopg.connect(f"{topo.postgres_url.rstrip('/')}/postgres", autocommit=True) as conn:
        for role in ("airflow", "mlflow", "warehouse"):
            conn.execute(f'drop database if exists "{topo.database(role)}" with (force)')


def _spawn(topo: Topology, svc: Service) -> int:
    log = topo.path("logs", f"{svc.name}.log")
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(svc.argv), cwd=REPO_ROOT, env=dict(svc.env), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    _pid_file(topo, svc.name).write_text(str(proc.pid))
    return proc.pid


def start(topo: Topology, timeout: float = 300.0, echo: Callable[[str], None] = print) -> None:
    """Start every service not already running, waiting for each to be ready."""
    for sub in ("run", "logs", "lake", "mlartifacts", "spark-worker", "airflow/logs",
                "airflow/passwords"):
        topo.path(sub).mkdir(parents=True, exist_ok=True)
    key = topo.path("secrets", "pseudo_key")
    if not key.exists():
        topo._secret("pseudo_key")
    ensure_databases(topo)
    todo = [s for s in services(topo) if not running(topo, s.name)]
    for svc in todo:
        for port in svc.ports.values():
            if not _port_free(port):
                raise TopologyError(
                    f"port {port} for {svc.name} is taken by another process; stop it or "
                    "choose other ports (ECREC_PROD_*_PORT)")
    if any(s.name.startswith("airflow") for s in todo):
        af = topo.airflow_env()
        for cmd in INIT_COMMANDS:
            echo(" ".join(cmd[1:4]) + " ...")
            proc = subprocess.run(list(cmd), cwd=REPO_ROOT, env=af, capture_output=True,
                                  text=True, timeout=600)
            if proc.returncode != 0:
                raise TopologyError(f"{' '.join(cmd[1:])} failed:\n" + proc.stdout[-2000:]
                                    + proc.stderr[-3000:])
    for svc in todo:
        pid = _spawn(topo, svc)
        echo(f"started {svc.name} (pid {pid})")
        log = topo.path("logs", f"{svc.name}.log")
        if svc.ready_url:
            _wait(svc.name, lambda u=svc.ready_url, p=pid: _alive(p) and _get(u) == 200,
                  timeout, log)
        if svc.name == "spark-worker":
            _wait("spark-worker registration", lambda: _alive_workers(topo) > 0, timeout, log)
    _wait("Airflow scheduler, DAG processor and triggerer", lambda: _airflow_healthy(topo),
          timeout, topo.path("logs", "airflow-scheduler.log"))


def _alive_workers(topo: Topology) -> int:
    try:
        with urllib.request.urlopen(f"{topo.spark_ui_url}/json/", timeout=5) as resp:
            state = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return 0
    return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")


def _airflow_healthy(topo: Topology) -> bool:
    try:
        with urllib.request.urlopen(f"{topo.airflow_url}/api/v2/monitor/health",
                                    timeout=5) as resp:
            body = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return all(body.get(part, {}).get("status") == "healthy"
               for part in ("metadatabase", "scheduler", "dag_processor", "triggerer"))


def running(topo: Topology, name: str) -> bool:
    path = _pid_file(topo, name)
    return path.exists() and _alive(int(path.read_text()))


def stop(topo: Topology, grace: float = STOP_GRACE_S,
         echo: Callable[[str], None] = print) -> list[str]:
    """Stop every service by its pid file (its whole process group); returns what was stopped."""
    stopped = []
    for svc in reversed(services(topo)):
        path = _pid_file(topo, svc.name)
        if not path.exists():
            continue
        pid = int(path.read_text())
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pid):
                _alive(pid)  # reaps our own child once it exits
                time.sleep(0.3)
            if not _group_alive(pid):
                break
        path.unlink()
        stopped.append(svc.name)
        echo(f"stopped {svc.name} (pid {pid})")
    return stopped


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def strays(topo: Topology) -> list[str]:
    """Live processes started for this topology (found by its root marker)."""
    import psutil

    root = str(topo.path())
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(ROOT_ENV) == root and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {' '.join(proc.cmdline())[:160]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def from_env(root: str | Path | None = None, env: Mapping[str, str] | None = None) -> Topology:
    """The topology ``make prod-up`` uses: ``ECREC_PROD_*`` variables, else the defaults."""
    env = os.environ if env is None else env
    ports = Ports(**{
        name: int(env.get(f"ECREC_PROD_{name.upper()}_PORT", default))
        for name, default in Ports().__dict__.items()
    })
    return Topology(
        root=Path(root or env.get("ECREC_PROD_ROOT", "prod")),
        postgres_url=env.get("ECREC_PROD_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432"),
        db_prefix=env.get("ECREC_PROD_DB_PREFIX", "ecrec"),
        redis_url=env.get("ECREC_PROD_REDIS_URL", "redis://127.0.0.1:6379/0"),
        ports=ports,
        # Any other ECREC_* setting of the caller (ECREC_EPOCHS, ECREC_DAG_SCHEDULE, ...) wins.
        extra_env={k: v for k, v in env.items()
                   if k.startswith("ECREC_") and not k.startswith("ECREC_PROD_")},
    )
