"""A small client of Airflow 3's REST API: log in, unpause, trigger runs by ds, wait, read logs.

Used by the demo (nights run through the real scheduler, so the UI shows their task logs and
durations) and by the tests that drive a running Airflow. Standard library only.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

TERMINAL = ("success", "failed")


class AirflowApiError(RuntimeError):
    """The API answered with an error; the message holds the call and the answer."""


class AirflowApi:
    """Calls ``base`` (e.g. ``http://127.0.0.1:8080``) with a bearer token once logged in."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.token = ""

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        """(HTTP status, decoded JSON or text); connection errors give status 0."""
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, method=method, headers=headers,
                                     data=None if body is None else json.dumps(body).encode())
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc)
        try:
            return status, json.loads(raw or b"null")
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: dict | None = None) -> Any:
        status, answer = self.call(method, path, body)
        if status not in (200, 201):
            raise AirflowApiError(f"{method} {path} -> HTTP {status}: {str(answer)[:500]}")
        return answer

    def healthy(self, parts: tuple[str, ...] = ("metadatabase", "scheduler", "dag_processor")
                ) -> bool:
        status, body = self.call("GET", "/api/v2/monitor/health")
        return status == 200 and all(
            body.get(part, {}).get("status") == "healthy" for part in parts)

    def login(self, username: str, password: str) -> None:
        body = self.ok("POST", "/auth/token", {"username": username, "password": password})
        self.token = body["access_token"]

    def ensure_pool(self, name: str, slots: int, description: str) -> None:
        """Create pool ``name`` unless it exists (tasks of a missing pool never start)."""
        status, body = self.call("POST", "/api/v2/pools",
                                 {"name": name, "slots": slots, "description": description})
        if status not in (200, 201, 409):
            raise AirflowApiError(f"create pool {name} -> HTTP {status}: {str(body)[:500]}")

    def set_paused(self, dag_id: str, paused: bool) -> None:
        body = self.ok("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})
        if body.get("is_paused") is not paused:
            raise AirflowApiError(f"{dag_id}: is_paused stayed {body.get('is_paused')}")

    def trigger(self, dag_id: str, run_id: str, ds: str, conf: dict | None = None) -> None:
        """A run of ``dag_id`` for logical date ``ds``; an existing ``run_id`` is cleared and rerun."""
        status, body = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {
            "dag_run_id": run_id, "logical_date": f"{ds}T00:00:00Z", "conf": conf or {}})
        if status == 409:  # the run exists: run it again from the start
            self.ok("POST", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/clear",
                    {"dry_run": False, "only_failed": False})
        elif status not in (200, 201):
            raise AirflowApiError(f"trigger {dag_id} {ds} -> HTTP {status}: {str(body)[:500]}")

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        status, run = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        return run.get("state") if status == 200 and isinstance(run, dict) else None

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        body = self.ok("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return body.get("task_instances", [])

    def task_log(self, dag_id: str, run_id: str, ti: dict) -> str:
        _, text = self.call(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}"
            f"/logs/{max(ti.get('try_number') or 1, 1)}?full_content=true")
        return text if isinstance(text, str) else json.dumps(text)

    def failure_report(self, dag_id: str, run_id: str, tail: int = 4000) -> str:
        """Each task's state, and the end of every failed task's log."""
        lines = []
        for ti in self.task_instances(dag_id, run_id):
            lines.append(f"{ti['task_id']}: {ti['state']}")
            if ti["state"] == "failed":
                lines.append(f"--- log of {ti['task_id']} ---\n"
                             f"{self.task_log(dag_id, run_id, ti)[-tail:]}")
        return "\n".join(lines)


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, every: float = 3.0,
             log: Path | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; the error names ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    tail = ""
    if log is not None and log.exists():
        tail = "; last lines of the log:\n" + "\n".join(
            log.read_text(errors="replace").splitlines()[-40:])
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def run_id_for(dag_id: str, ds: str) -> str:
    """Run ids named by the night they process (``nightly_2024-01-01``)."""
    return f"{dag_id.removeprefix('ecrec_')}_{ds}"
