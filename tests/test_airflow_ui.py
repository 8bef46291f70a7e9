"""The UIs as people use them: a real `airflow standalone`, a run triggered over the REST API,
and a headless Chromium that logs in and sees the successful run, opens a task's log (the data
engineer), sees the lineage in the Assets view, and opens the night's HTML report with its
plots (what the report task links to).

Leaves screenshots in test-artifacts/ (git-ignored). Every process it starts is stopped
(SIGINT to `airflow standalone`, then SIGTERM/SIGKILL to its process group) and the test
checks that none is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecrec_lib.deploy.airflow_api import AirflowApi
from ecrec_lib.orchestration import (
    WAREHOUSE_POOL,
    WAREHOUSE_POOL_DESCRIPTION,
    WAREHOUSE_POOL_SLOTS,
)
from tests.e2e_support import REPO, VENV_BIN, generate, pipeline_env

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.e2e]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"
DS = "2024-03-01"
RUN_ID = f"ui_test_{DS}"
RUN_TIMEOUT_S = 1500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_of(airflow_home: str) -> list:
    """Every live process whose environment names this test's AIRFLOW_HOME."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("AIRFLOW_HOME") == airflow_home and proc.status() != "zombie":
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _stop(proc: subprocess.Popen, airflow_home: str) -> list[str]:
    """SIGINT (Airflow's clean stop), then SIGTERM/SIGKILL to the group; report leftovers."""
    import psutil

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        group_alive = True
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            group_alive = False
        left = _processes_of(airflow_home)
        if not group_alive and not left:
            break
        if group_alive:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        for p in left:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        time.sleep(grace)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
    return [f"{p.pid} {' '.join(p.cmdline())[:120]}" for p in _processes_of(airflow_home)]


@pytest.fixture()
def standalone(tmp_path: Path) -> Iterator[dict]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: run `make browser` (apt-get install chromium)")
    port = _free_port()
    base = f"http://localhost:{port}"
    env = pipeline_env(
        tmp_path,
        AIRFLOW__API__PORT=str(port),
        AIRFLOW__API__BASE_URL=base,
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{base}/execution/",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="5",
        AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
        AIRFLOW__CORE__PARALLELISM="4",
        ECREC_DAG_SCHEDULE="none",  # unpausing must not start a scheduled run of its own
    )
    generate(env, DS, days=1, users=200, items=100)
    log_path = tmp_path / "standalone.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [str(VENV_BIN / "airflow"), "standalone"], cwd=REPO, env=env, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
            # Restore default SIGINT handling (non-interactive parents may ignore it).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    info = {"proc": proc, "base": base, "env": env, "log": log_path,
            "home": env["AIRFLOW_HOME"]}
    try:
        yield info
    finally:
        leftovers = _stop(proc, env["AIRFLOW_HOME"])
        assert not leftovers, f"processes left running after the test: {leftovers}"


def _wait(predicate, timeout: float, what: str, log: Path, every: float = 3.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; standalone log:\n{tail}")


def test_triggered_nightly_run_shows_success_in_ui(standalone: dict) -> None:
    base, log, home = standalone["base"], standalone["log"], Path(standalone["home"])
    api = AirflowApi(base)
    _wait(lambda: _port_open(base) and api.healthy(), 240,
          "the API server, scheduler and DAG processor to be healthy", log)
    password_file = home / "simple_auth_manager_passwords.json.generated"
    password = json.loads(password_file.read_text())["admin"]
    api.login("admin", password)
    api.ensure_pool(WAREHOUSE_POOL, WAREHOUSE_POOL_SLOTS, WAREHOUSE_POOL_DESCRIPTION)

    _wait(lambda: api.call("GET", "/api/v2/dags/ecrec_nightly")[0] == 200, 180,
          "the DAG processor to register ecrec_nightly", log)
    status, body = api.call("PATCH", "/api/v2/dags/ecrec_nightly", {"is_paused": False})
    assert status == 200 and body["is_paused"] is False, body
    status, body = api.call("POST", "/api/v2/dags/ecrec_nightly/dagRuns", {
        "dag_run_id": RUN_ID, "logical_date": f"{DS}T00:00:00Z", "conf": {"k": 20},
    })
    assert status == 200, body

    def finished() -> str | None:
        _, run = api.call("GET", f"/api/v2/dags/ecrec_nightly/dagRuns/{RUN_ID}")
        state = run.get("state") if isinstance(run, dict) else None
        return state if state in ("success", "failed") else None

    state = _wait(finished, RUN_TIMEOUT_S, "the triggered run to finish", log, every=10)
    assert state == "success", "the nightly run failed:\n" + api.failure_report(
        "ecrec_nightly", RUN_ID)
    # The report task's XCom names the HTML report; the clean task's holds the night's figures.
    _, xcom = api.call("GET", f"/api/v2/dags/ecrec_nightly/dagRuns/{RUN_ID}/taskInstances/"
                       "report/xcomEntries/return_value")
    report_html = Path(json.loads(xcom["value"])["report_html"] if isinstance(xcom["value"], str)
                       else xcom["value"]["report_html"])
    assert report_html.is_file(), xcom
    _, events = api.call("GET", "/api/v2/assets/events?limit=100")
    by_asset = {e["uri"]: e["extra"] for e in events["asset_events"]}
    clean_extra = by_asset["x-ecrec://lake/clean/events"]
    assert clean_extra["input_rows"] > 0 and "quarantine_by_reason" in clean_extra, clean_extra

    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(base + "/")
            page.wait_for_selector("input[name=username]", timeout=60_000)
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)

            page.goto(f"{base}/dags/ecrec_nightly")
            expect(page.get_by_text("ecrec_nightly").first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("publish").first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "airflow_ui_dag.png"), full_page=True)

            page.goto(f"{base}/dags/ecrec_nightly/runs/{RUN_ID}")
            expect(page.get_by_text(RUN_ID).first).to_be_visible(timeout=60_000)
            # The run header shows its state; the task table lists each task's state.
            expect(page.get_by_text("Success", exact=True).first).to_be_visible(timeout=60_000)
            body = page.inner_text("body")
            assert "Failed" not in body.split("Task Instances", 1)[0], "run header shows Failed"
            page.screenshot(path=str(ARTIFACTS / "airflow_ui_run_success.png"), full_page=True)

            # A task log opens from the run (the scheduler's task runner wrote it).
            page.goto(f"{base}/dags/ecrec_nightly/runs/{RUN_ID}/tasks/clean")
            expect(page.get_by_text("jobs.clean_events").first).to_be_visible(timeout=60_000)
            assert "Log file not found" not in page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "airflow_ui_task_log.png"), full_page=True)

            # The Assets view lists the lineage the tasks declared.
            page.goto(f"{base}/assets")
            for name in ("raw/events", "clean/events", "features/user_sequences", "model",
                         "scores/user_topk", "warehouse/user_topk"):
                expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "airflow_ui_assets.png"), full_page=True)

            # The night's report, with its plots rendered.
            page.goto(report_html.as_uri())
            images = page.locator("img")
            expect(images.first).to_be_visible(timeout=30_000)
            # one night: the quarantine and model plots have data; the feedback and drift
            # sections say what is missing (they need two nights)
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
            assert widths and all(w > 100 for w in widths), widths
            alts = page.eval_on_selector_all("img", "els => els.map(e => e.alt)")
            assert all(alts), alts  # each plot says what it shows
            expect(page.get_by_text("uarantine").first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "report_html.png"), full_page=True)
        finally:
            browser.close()


def _port_open(base: str) -> bool:
    host, port = base.removeprefix("http://").split(":")
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0
