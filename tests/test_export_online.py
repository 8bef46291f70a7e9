"""Online export to Redis against a real Redis: read-back, atomic switch under a polling
reader, TTLs of replaced versions, a killed export, Redis down, the look-up CLI."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecrec_lib.config import load_config
from ecrec_lib.lake import Lake
from ecrec_lib.privacy.secrets import redact_url
from ecrec_lib.scoring.tables import read_table, write_atomic
from ecrec_lib.serving import online
from ecrec_lib.serving.online import (
    NothingExportedError,
    OnlineExportError,
    OnlineSettings,
    current_version,
    export_night,
    get_related,
    get_user_recs,
    version_meta,
)

REPO = Path(__file__).resolve().parents[1]
D1, D2, D3 = "2024-03-01", "2024-03-02", "2024-03-03"
K = 5


def user_keys(n: int) -> list[str]:
    """Pseudonymous-looking keys (64 hex characters, like clean/events.user_key)."""
    return [hashlib.sha256(f"user-{u}".encode()).hexdigest() for u in range(n)]


def write_night(lake: Path, ds: str, seed: int, n_users: int = 40, n_items: int = 12,
                n_related: int = 3) -> None:
    """user_topk and item_related partitions of ds; another seed gives other lists."""
    rng = np.random.default_rng(seed)
    items = [f"i{n:03d}" for n in range(n_items)]
    rows = []
    for u in user_keys(n_users):
        picks = rng.choice(items, K, replace=False)
        scores = np.sort(rng.random(K))[::-1]
        for rank, (item, score) in enumerate(zip(picks, scores, strict=True), 1):
            rows.append((ds, u, rank, str(item), float(score), str(picks[0]), "two_tower",
                         str(seed)))
    users = pd.DataFrame(rows, columns=["ds", "user_key", "rank", "item_id", "score",
                                        "reason_item_id", "strategy", "model_version"])
    rel = []
    for item in items:
        others = rng.choice([i for i in items if i != item], n_related, replace=False)
        scores = np.sort(rng.random(n_related))[::-1]
        for rank, (other, score) in enumerate(zip(others, scores, strict=True), 1):
            rel.append((ds, item, rank, str(other), float(score)))
    related = pd.DataFrame(rel, columns=["ds", "item_id", "rank", "related_item_id", "score"])
    write_atomic("user_topk", users, Lake(str(lake)), ds)
    write_atomic("item_related", related, Lake(str(lake)), ds)


def lake_lists(lake: Path, table: str, ds: str) -> dict[str, list[tuple[str, float]]]:
    """What a reader should get, computed from the lake with pandas (not the exporter)."""
    key, item = ("user_key", "item_id") if table == "user_topk" else ("item_id", "related_item_id")
    df = read_table(table, Lake(str(lake)), ds).sort_values([key, "rank"])
    return {k: list(zip(g[item], np.round(g["score"].to_numpy(), online.SCORE_DECIMALS).tolist(),
                        strict=True))
            for k, g in df.groupby(key)}


@pytest.fixture()
def r(redis_url):
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture()
def prefix(r):
    """A prefix of this test's own; its keys are deleted afterwards (never FLUSHDB)."""
    p = f"ecrectest_{uuid.uuid4().hex[:10]}"
    yield p
    keys = list(r.scan_iter(match=f"{p}:*", count=5000))
    if keys:
        r.unlink(*keys)


def settings(prefix: str, **kw) -> OnlineSettings:
    return OnlineSettings(prefix=prefix, **{"old_version_ttl_s": 3600, **kw})


def version_keys(r, prefix: str, version: str) -> list[str]:
    return list(r.scan_iter(match=f"{prefix}:v:{version}:*", count=5000))


def test_export_reads_back_every_list(r, prefix, lake_dir):
    write_night(lake_dir, D1, seed=1)
    with pytest.raises(NothingExportedError, match="jobs.export_online"):
        get_user_recs(r, "anyone", 3, prefix=prefix)
    res = export_night(r, Lake(str(lake_dir)), D1, settings(prefix))
    assert res.version.startswith(f"{D1}-") and current_version(r, prefix) == res.version
    users, related = lake_lists(lake_dir, "user_topk", D1), lake_lists(lake_dir, "item_related", D1)
    for user, expected in users.items():
        assert get_user_recs(r, user, K, prefix=prefix) == expected
    some = next(iter(users))
    assert get_user_recs(r, some, 2, prefix=prefix) == users[some][:2]
    for item, expected in related.items():
        assert get_related(r, item, 10, prefix=prefix) == expected
    assert get_user_recs(r, "unknown-user", K, prefix=prefix) == []
    # The completeness record, and every key of the served version is permanent.
    meta = version_meta(r, res.version, prefix)
    assert meta["status"] == "live" and meta["ds"] == D1 and meta["model_versions"] == "1"
    assert (int(meta["users"]), int(meta["user_rows"])) == (len(users), len(users) * K)
    assert (int(meta["items"]), int(meta["item_rows"])) == (len(related), len(related) * 3)
    keys = version_keys(r, prefix, res.version)
    assert len(keys) == len(users) + len(related) + 1
    assert {r.ttl(k) for k in keys} == {-1}
    assert r.get(online.lock_key(prefix)) is None  # released


def test_rows_in_any_order_are_grouped_by_list(r, prefix, lake_dir):
    write_night(lake_dir, D1, seed=1)
    lake = Lake(str(lake_dir))
    expected = lake_lists(lake_dir, "user_topk", D1)
    shuffled = read_table("user_topk", lake, D1).sample(frac=1.0, random_state=3)
    write_atomic("user_topk", shuffled, lake, D1)
    export_night(r, lake, D1, settings(prefix))
    assert {u: get_user_recs(r, u, K, prefix=prefix) for u in expected} == expected


def test_second_night_switches_atomically_for_a_polling_reader(r, prefix, lake_dir, redis_url):
    n_users = 300
    write_night(lake_dir, D1, seed=1, n_users=n_users)
    write_night(lake_dir, D2, seed=2, n_users=n_users)
    nights = {D1: lake_lists(lake_dir, "user_topk", D1), D2: lake_lists(lake_dir, "user_topk", D2)}
    users = list(nights[D1])
    assert all(nights[D1][u] != nights[D2][u] for u in users[:20])  # a mix would show
    v1 = export_night(r, Lake(str(lake_dir)), D1, settings(prefix)).version

    stop, exporting = threading.Event(), threading.Event()
    seen: dict[str, int] = {D1: 0, D2: 0}
    problems: list[str] = []
    during = [0]

    def reader() -> None:
        import redis

        rr = redis.Redis.from_url(redis_url, decode_responses=True)
        while not stop.is_set():
            for u in users[::13]:  # unpinned: each read resolves the pointer itself
                got = get_user_recs(rr, u, K, prefix=prefix)
                if got not in (nights[D1][u], nights[D2][u]):
                    problems.append(f"user {u[:8]}: {got}")
            version = current_version(rr, prefix)
            ds = version[:10]
            for u in users[::29]:  # pinned: a page's reads all from one night
                if get_user_recs(rr, u, K, prefix=prefix, version=version) != nights[ds][u]:
                    problems.append(f"pinned {version} user {u[:8]} differs")
            seen[ds] += 1
            during[0] += exporting.is_set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        while seen[D1] == 0:
            time.sleep(0.005)
        exporting.set()
        res = export_night(r, Lake(str(lake_dir)), D2, settings(prefix, batch_size=2))
        exporting.clear()
        deadline = time.monotonic() + 10
        while seen[D2] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join(10)
    assert problems == []
    assert seen[D1] > 0 and seen[D2] > 0 and during[0] > 0
    assert res.previous == v1 and current_version(r, prefix) == res.version


def test_replaced_versions_get_a_ttl(r, prefix, lake_dir):
    lake = Lake(str(lake_dir))
    for ds, seed in ((D1, 1), (D2, 2), (D3, 3)):
        write_night(lake_dir, ds, seed)
    v1 = export_night(r, lake, D1, settings(prefix, old_version_ttl_s=500)).version
    v2 = export_night(r, lake, D2, settings(prefix, old_version_ttl_s=500)).version
    assert {0 < r.ttl(k) <= 500 for k in version_keys(r, prefix, v1)} == {True}
    assert version_meta(r, v1, prefix)["status"] == "retired"
    assert {r.ttl(k) for k in version_keys(r, prefix, v2)} == {-1}
    v3 = export_night(r, lake, D3, settings(prefix, old_version_ttl_s=500)).version
    assert {0 < r.ttl(k) <= 500 for k in version_keys(r, prefix, v2)} == {True}
    assert {r.ttl(k) for k in version_keys(r, prefix, v3)} == {-1}
    # Once a replaced version expired, the next export forgets it.
    r.unlink(*version_keys(r, prefix, v1))
    export_night(r, lake, D3, settings(prefix, old_version_ttl_s=500))
    assert v1 not in r.zrange(online.versions_key(prefix), 0, -1)


def test_older_night_is_skipped_unless_allowed(r, prefix, lake_dir):
    lake = Lake(str(lake_dir))
    write_night(lake_dir, D1, seed=1)
    write_night(lake_dir, D2, seed=2)
    v2 = export_night(r, lake, D2, settings(prefix)).version
    res = export_night(r, lake, D1, settings(prefix))
    assert res.version is None and "--allow-older" in res.skipped
    assert current_version(r, prefix) == v2
    assert len(r.zrange(online.versions_key(prefix), 0, -1)) == 1  # nothing written
    back = export_night(r, lake, D1, settings(prefix), allow_older=True)
    assert current_version(r, prefix) == back.version and back.previous == v2


def test_an_existing_version_is_never_overwritten(r, prefix, lake_dir):
    write_night(lake_dir, D1, seed=1)
    lake = Lake(str(lake_dir))
    first = export_night(r, lake, D1, settings(prefix), run_id="nightly1")
    with pytest.raises(OnlineExportError, match="exists already"):
        export_night(r, lake, D1, settings(prefix), run_id="nightly1")
    assert current_version(r, prefix) == first.version == f"{D1}-nightly1"
    assert {r.ttl(k) for k in version_keys(r, prefix, first.version)} == {-1}


_KILL_AFTER_TWO_BATCHES = textwrap.dedent("""
    import os, signal, sys
    import redis.client
    from ecrec_lib.lake import Lake
    from ecrec_lib.serving import online

    online.LOCK_TTL_S = 2  # what the killed run leaves behind expires quickly
    url, lake, ds, prefix = sys.argv[1:5]
    real, calls = redis.client.Pipeline.execute, [0]

    def execute(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # two batches of keys are in Redis, the rest never arrives
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, *args, **kwargs)

    redis.client.Pipeline.execute = execute
    online.export_night(online.connect_redis(url), Lake(lake), ds,
                        online.OnlineSettings(prefix=prefix, batch_size=5))
""")


def test_killed_export_is_never_visible_and_is_cleaned_up(r, prefix, lake_dir, redis_url):
    lake = Lake(str(lake_dir))
    write_night(lake_dir, D1, seed=1)
    write_night(lake_dir, D2, seed=2)
    v1 = export_night(r, lake, D1, settings(prefix)).version
    proc = subprocess.run([sys.executable, "-c", _KILL_AFTER_TWO_BATCHES, redis_url,
                           str(lake_dir), D2, prefix], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # Readers still get night 1, whole.
    assert current_version(r, prefix) == v1
    for user, expected in lake_lists(lake_dir, "user_topk", D1).items():
        assert get_user_recs(r, user, K, prefix=prefix) == expected
    orphan = next(v for v in r.zrange(online.versions_key(prefix), 0, -1) if v != v1)
    assert orphan.startswith(D2) and version_meta(r, orphan, prefix)["status"] == "writing"
    partial = version_keys(r, prefix, orphan)
    assert len(partial) == 10 + 1  # two batches of 5, and the meta hash
    assert all(r.ttl(k) > 0 for k in partial)  # expires by itself if no export comes
    # The dead run's lock blocks a re-run with a clear message until it expires.
    with pytest.raises(OnlineExportError, match="export_lock .*re-run after"):
        export_night(r, lake, D2, settings(prefix))
    deadline = time.monotonic() + 10
    while r.exists(online.lock_key(prefix)) and time.monotonic() < deadline:
        time.sleep(0.1)
    res = export_night(r, lake, D2, settings(prefix))
    assert res.previous == v1 and current_version(r, prefix) == res.version
    assert version_keys(r, prefix, orphan) == []  # the re-run deleted the orphan
    assert orphan not in r.zrange(online.versions_key(prefix), 0, -1)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_redis_down_fails_clearly_and_touches_nothing(lake_dir, tmp_path, monkeypatch, capsys):
    from ecrec_lib.warehouse import connect, publish
    from jobs import export_online

    write_night(lake_dir, D1, seed=1)
    wh_url = f"duckdb:///{tmp_path}/wh.duckdb"
    lake = Lake(str(lake_dir))
    tables = {t: read_table(t, lake, D1) for t in ("user_topk", "item_related")}
    with connect(wh_url, "ecrec") as wh:
        publish(wh, tables, D1, 14)

    def counts() -> dict[str, int]:
        with connect(wh_url, "ecrec", read_only=True) as wh:
            return {t: int(wh.scalar(f"SELECT count(*) FROM {wh.fq(t)}")) for t in tables}

    before_lake, before_wh = _tree(lake_dir), counts()
    port = _closed_port()
    monkeypatch.setenv("ECREC_ONLINE_REDIS_URL", f"redis://:s3cr3t-pw@127.0.0.1:{port}/6")
    monkeypatch.setenv("ECREC_WAREHOUSE_URL", wh_url)
    assert export_online.main(["--ds", D1, "--lake", str(lake_dir)]) == 1
    text = capsys.readouterr().err
    assert f"redis://:***@127.0.0.1:{port}/6" in text
    assert "ECREC_ONLINE_REDIS_URL" in text and f"Re-run `python -m jobs.export_online --ds {D1}`" in text
    assert "s3cr3t-pw" not in text
    assert _tree(lake_dir) == before_lake and counts() == before_wh == {
        "user_topk": 40 * K, "item_related": 12 * 3}


def test_job_exit_codes_for_bad_input(r, prefix, lake_dir, redis_url, monkeypatch, capsys):
    from jobs import export_online

    monkeypatch.setenv("ECREC_ONLINE_REDIS_URL", redis_url)
    monkeypatch.setenv("ECREC_ONLINE_KEY_PREFIX", prefix)
    assert export_online.main(["--ds", D1, "--lake", str(lake_dir)]) == 3
    assert "jobs.score_topk --ds 2024-03-01" in capsys.readouterr().err
    write_night(lake_dir, D1, seed=1)
    df = read_table("user_topk", Lake(str(lake_dir)), D1)
    df.loc[1, "rank"] = 1  # the first user's list has rank 1 twice
    write_atomic("user_topk", df, Lake(str(lake_dir)), D1)
    assert export_online.main(["--ds", D1, "--lake", str(lake_dir)]) == 1
    assert "same rank twice" in capsys.readouterr().err
    df.loc[1, "rank"] = 2
    df.loc[df["user_key"] == df["user_key"].iat[0], "user_key"] = "alice@example.com"
    write_atomic("user_topk", df, Lake(str(lake_dir)), D1)
    assert export_online.main(["--ds", D1, "--lake", str(lake_dir)]) == 1
    err = capsys.readouterr().err
    assert "1 user_key values are not pseudonymized" in err and "alice" not in err
    assert current_version(r, prefix) is None and not list(r.scan_iter(match=f"{prefix}:*"))


def test_recommend_online(r, prefix, lake_dir, redis_url, monkeypatch, capsys):
    from jobs import export_online, recommend

    write_night(lake_dir, D1, seed=1)
    monkeypatch.setenv("ECREC_ONLINE_REDIS_URL", redis_url)
    monkeypatch.setenv("ECREC_ONLINE_KEY_PREFIX", prefix)
    base = ["--lake", str(lake_dir), "--online"]
    assert recommend.main([*base, "--user", "x"]) == 1
    assert "nothing is served" in capsys.readouterr().err
    assert export_online.main(["--ds", D1, "--lake", str(lake_dir)]) == 0
    user, expected = next(iter(lake_lists(lake_dir, "user_topk", D1).items()))
    assert recommend.main([*base, "--user", user, "--k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"Recommendations for user {user} (online, ds {D1}, version ")
    assert len(lines) == 4 and f"[{expected[0][0]}]" in lines[1]
    assert f"score {expected[0][1]:.4f}" in lines[1]
    assert recommend.main([*base, "--item", "i001", "--k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert recommend.main([*base, "--user", "nobody"]) == 1
    assert "unknown user 'nobody'" in capsys.readouterr().err
    assert recommend.main([*base, "--query", "nail polish"]) == 1
    assert "--online serves --user and --item" in capsys.readouterr().err


def test_urls_are_logged_without_passwords():
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("redis://me:p@ss@h/1") == "redis://me:***@h/1"
    assert redact_url("redis://h/0?password=x&db=1") == "redis://h/0?password=***&db=1"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    cfg = load_config(None, env={"ECREC_ONLINE_REDIS_URL": "redis://:topsecret@h/2",
                                 "ECREC_WAREHOUSE_URL": "postgresql://u:pgsecret@h/db"})
    logged = str(cfg.to_dict())
    assert "topsecret" not in logged and "pgsecret" not in logged
    assert cfg.online_redis_url == "redis://:topsecret@h/2"  # the value itself is intact


def test_bench_online_runs_small(redis_url):
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.bench_online", "--users", "300", "--k", "10",
         "--items", "50", "--lookups", "200", "--redis-url", redis_url],
        cwd=REPO, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "keys/s" in proc.stdout and "p99" in proc.stdout
    assert "cleaned up" in proc.stdout
