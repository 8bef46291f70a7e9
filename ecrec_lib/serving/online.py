"""The nightly lists in Redis: versioned keys behind one pointer, and the read helpers.

Key layout (``P`` = ``cfg.online_key_prefix``, ``V`` = a version, ``<ds>-<run id>``)::

    P:current               V, the version readers use; switched with one atomic SET
    P:versions              sorted set of the versions written (score: creation time)
    P:export_lock           the running export's run id (SET NX, short TTL, refreshed)
    P:v:V:meta              hash: ds, run_id, status, the completeness record (counts)
    P:v:V:user:<user_key>   {"i": [item ids by rank], "s": [scores]}   (user_topk)
    P:v:V:item:<item_id>    {"i": [related item ids by rank], "s": [scores]}   (item_related)

An export writes a new version beside the one being served: every key is written with a TTL
(``online_partial_ttl_s``), so a killed export leaves nothing behind for good. Then it
verifies the version (each key is made persistent and counted, a sample is read back and
compared), records the counts and ``status=verified`` in the meta hash, and switches the
pointer in one Lua script that checks the status and that the pointer still names what the
export started from. Readers resolve the pointer, then read the version's key, so they see
one whole night or the other. Replaced versions get ``online_old_version_ttl_s``; orphans of
killed exports are deleted by the next export. User lists are keyed by the pseudonymous
``user_key`` of ``scores/user_topk``; raw user ids never reach Redis.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecrec_lib.config import EcrecConfig
from ecrec_lib.lake import Lake, is_local
from ecrec_lib.privacy.secrets import redact_url

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "ecrec"
# The lock outlives a killed export by at most this long, so a re-run waits at most a minute;
# the running export refreshes it with every batch.
LOCK_TTL_S = 60
SAMPLE_CHECKS = 100  # lists read back and compared before the switch
SCORE_DECIMALS = 6  # scores are rounded in the payload; the order is the rank
_RUN_ID = re.compile(r"[A-Za-z0-9_.]{1,64}")
# A user_key is HMAC-SHA256 hex (the clean_events contract, expectations/clean_events.py).
PSEUDONYMOUS_KEY = r"^[0-9a-f]{64}$"
# (kind in the key, lake table, list key column, recommended item column)
KINDS = (("user", "user_topk", "user_key", "item_id"),
         ("item", "item_related", "item_id", "related_item_id"))

STATUS_WRITING = "writing"
STATUS_VERIFIED = "verified"
STATUS_LIVE = "live"
STATUS_RETIRED = "retired"

# KEYS: current pointer, new version's meta. ARGV: new version, the pointer value the export
# started from ("" = none), switch time. Compare-and-set: a pointer moved by someone else
# (a manual rollback) is never overwritten.
_SWITCH_LUA = """
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'verified' then
  return redis.error_reply('ECREC version ' .. ARGV[1] .. ' is not verified (status '
                           .. tostring(status) .. ')')
end
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[2] then
  return redis.error_reply('ECREC the pointer moved during the export: it names ' .. cur
                           .. ', expected ' .. ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'live', 'switched_at', ARGV[3], 'previous', cur)
return cur
"""
# KEYS: lock. ARGV: run id. Deletes the lock only when this run holds it.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class OnlineExportError(RuntimeError):
    """The export failed; the pointer still names the previous version. Says why and the fix."""


class OnlineUnavailableError(OnlineExportError):
    """Redis cannot be reached (or refuses the credentials)."""


class NothingExportedError(LookupError):
    """No version is being served under the prefix yet."""


class Rec(NamedTuple):
    item_id: str
    score: float


@dataclass(frozen=True)
class OnlineSettings:
    """What an export needs from the config (the URL stays with the connection)."""

    prefix: str = DEFAULT_PREFIX
    old_version_ttl_s: int = 86400
    partial_ttl_s: int = 21600
    batch_size: int = 1000  # keys per pipeline round trip

    @classmethod
    def from_config(cls, cfg: EcrecConfig, batch_size: int | None = None) -> OnlineSettings:
        return cls(prefix=cfg.online_key_prefix, old_version_ttl_s=cfg.online_old_version_ttl_s,
                   partial_ttl_s=cfg.online_partial_ttl_s,
                   batch_size=batch_size or cls.batch_size)


@dataclass(frozen=True)
class ScoreLists:
    """The ranked lists of one score table: list ``g`` is ``items[starts[g]:starts[g+1]]``."""

    keys: list[str]
    starts: np.ndarray  # len(keys) + 1 offsets
    items: np.ndarray  # object array of item ids, by list then rank
    scores: np.ndarray  # float64, aligned with items

    @property
    def n_rows(self) -> int:
        return len(self.items)

    def payload(self, g: int) -> str:
        s, e = self.starts[g], self.starts[g + 1]
        return encode_list(self.items[s:e].tolist(), self.scores[s:e].tolist())


@dataclass
class ExportResult:
    ds: str
    version: str | None  # None when skipped
    previous: str | None
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds
    skipped: str = ""  # why nothing was exported

    @property
    def n_keys(self) -> int:
        return self.counts.get("users", 0) + self.counts.get("items", 0)


# --- keys and encoding -------------------------------------------------------------------

def current_key(prefix: str) -> str:
    return f"{prefix}:current"


def versions_key(prefix: str) -> str:
    return f"{prefix}:versions"


def lock_key(prefix: str) -> str:
    return f"{prefix}:export_lock"


def meta_key(prefix: str, version: str) -> str:
    return f"{prefix}:v:{version}:meta"


def list_key(prefix: str, version: str, kind: str, key: str) -> str:
    return f"{prefix}:v:{version}:{kind}:{key}"


def encode_list(items: list[str], scores: list[float]) -> str:
    return json.dumps({"i": items, "s": scores}, separators=(",", ":"))


def decode_list(payload: str | bytes, k: int | None = None) -> list[Rec]:
    data = json.loads(payload)
    return [Rec(i, float(s)) for i, s in zip(data["i"][:k], data["s"][:k], strict=True)]


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


# --- reading (what a web page calls) -----------------------------------------------------

def current_version(r: redis.Redis, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The version being served, or None when nothing was exported under ``prefix``."""
    return _text(r.get(current_key(prefix)))


def version_meta(r: redis.Redis, version: str, prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """The meta hash of a version (ds, run_id, status, counts); {} once it expired."""
    return {_text(k): _text(v) for k, v in r.hgetall(meta_key(prefix, version)).items()}


def _resolve(r: redis.Redis, prefix: str, version: str | None) -> str:
    version = version or current_version(r, prefix)
    if version is None:
        raise NothingExportedError(
            f"nothing is served under the Redis key prefix {prefix!r}: run "
            "`python -m jobs.export_online --ds D` (or check online_key_prefix)")
    return version


def get_user_recs(r: redis.Redis, user_key: str, k: int, prefix: str = DEFAULT_PREFIX,
                  version: str | None = None) -> list[Rec]:
    """The top ``k`` of a user's list in the served version ([] for an unknown user).

    ``version`` pins one version (from :func:`current_version`), so that several reads of a
    page come from the same night."""
    payload = r.get(list_key(prefix, _resolve(r, prefix, version), "user", user_key))
    return [] if payload is None else decode_list(payload, k)


def get_related(r: redis.Redis, item_id: str, k: int, prefix: str = DEFAULT_PREFIX,
                version: str | None = None) -> list[Rec]:
    """The top ``k`` items related to ``item_id`` in the served version ([] when unknown)."""
    payload = r.get(list_key(prefix, _resolve(r, prefix, version), "item", item_id))
    return [] if payload is None else decode_list(payload, k)


# --- connecting --------------------------------------------------------------------------

def unavailable_error(url: str, exc: BaseException, doing: str) -> OnlineUnavailableError:
    from urllib.parse import unquote, urlsplit

    text = str(exc)
    password = urlsplit(url).password if "://" in url else None
    if password:  # never echo the secret, even where a client library would
        text = text.replace(password, "***").replace(unquote(password), "***")
    return OnlineUnavailableError(
        f"Redis at {redact_url(url)} failed while {doing}: {text} ({type(exc).__name__}). "
        "Start Redis there or point online_redis_url (ECREC_ONLINE_REDIS_URL or the YAML "
        "config) at a reachable one")


def connect_redis(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A client for ``url`` whose server answered PING (str responses)."""
    import redis

    try:
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=timeout_s,
                                      socket_timeout=max(timeout_s, 60.0))
    except ValueError as exc:
        raise OnlineExportError(f"online_redis_url {redact_url(url)!r} is not a Redis URL "
                                f"({exc}): use redis://[:password@]host:port/db") from None
    try:
        client.ping()
    except redis.RedisError as exc:
        raise unavailable_error(url, exc, "connecting") from None
    return client


# --- reading the lake --------------------------------------------------------------------

def read_lists(lake: Lake, table: str, key_col: str, item_col: str, ds: str) -> ScoreLists:
    """The lists of ``scores/<table>/ds=D`` sorted by key and rank, checked for nulls and
    repeated ranks."""
    path = lake.scores(table, ds)
    if not is_local(path):
        raise NotImplementedError(f"{path}: the online export reads local lakes only")
    path = path.removeprefix("file://")
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"{path} does not exist: run `python -m jobs.score_topk --ds {ds}` and "
            f"`python -m jobs.publish_scores --ds {ds}` first")
    data = pq.read_table(path, columns=[key_col, "rank", item_col, "score"])
    for col in data.column_names:
        if data[col].null_count:
            raise ValueError(f"{path}: {data[col].null_count} rows with a null {col}; re-run "
                             f"`python -m jobs.score_topk --ds {ds}`")
    keys, starts, in_order = _runs(data, key_col)
    if not in_order:  # scoring writes the tables sorted; sort (slow at 10M rows) only if not
        data = data.sort_by([(key_col, "ascending"), ("rank", "ascending")])
        keys, starts, in_order = _runs(data, key_col)
        if not in_order:
            raise ValueError(f"{path}: a list holds the same rank twice; re-run "
                             f"`python -m jobs.score_topk --ds {ds}`")
    # Item ids repeat across lists: one Python string per distinct id, shared by reference.
    encoded = pc.dictionary_encode(data[item_col].combine_chunks())
    items = np.asarray(encoded.dictionary.to_pylist(), dtype=object)[
        encoded.indices.to_numpy(zero_copy_only=False)]
    scores = np.round(data["score"].to_numpy(), SCORE_DECIMALS)
    return ScoreLists(keys.take(pa.array(starts[:-1])).to_pylist(), starts, items, scores)


def _runs(data: pa.Table, key_col: str) -> tuple[pa.Array, np.ndarray, bool]:
    """The key column, the offsets of its runs of equal keys, and whether the rows are in
    (key, rank) order with ranks strictly increasing within each key."""
    keys = data[key_col].combine_chunks()
    n = len(keys)
    if n == 0:
        return keys, np.zeros(1, np.int64), True
    head, tail = keys.slice(0, n - 1), keys.slice(1)
    changed = pc.not_equal(tail, head).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(changed) + 1, [n]]).astype(np.int64)
    same_list = np.ones(n, bool)
    same_list[starts[:-1]] = False
    ranks_up = not (np.diff(data["rank"].to_numpy(), prepend=0)[same_list] <= 0).any()
    keys_up = not pc.any(pc.less(tail, head)).as_py()
    return keys, starts, ranks_up and keys_up


def model_versions(lake: Lake, ds: str) -> str:
    """The model versions of the night's user lists, comma-separated (for the meta hash)."""
    path = lake.scores("user_topk", ds).removeprefix("file://")
    values = pc.unique(pq.read_table(path, columns=["model_version"])["model_version"])
    return ",".join(sorted(str(v) for v in values.to_pylist() if v is not None))


# --- writing -----------------------------------------------------------------------------

class _Writer:
    """Pipelined writes that refresh the export lock and check it is still held."""

    def __init__(self, r: redis.Redis, s: OnlineSettings, run_id: str) -> None:
        self.r, self.s, self.run_id = r, s, run_id

    def batches(self, commands: Iterable[tuple[str, tuple]]) -> Iterator[list[Any]]:
        """Run ``(method, args)`` commands in pipelines of ``batch_size``; yields each
        batch's replies."""
        pipe = self.r.pipeline(transaction=False)
        n = 0
        for method, args in commands:
            getattr(pipe, method)(*args)
            n += 1
            if n == self.s.batch_size:
                yield self._execute(pipe)
                n = 0
        if n:
            yield self._execute(pipe)

    def _execute(self, pipe: Any) -> list[Any]:
        pipe.get(lock_key(self.s.prefix))
        pipe.expire(lock_key(self.s.prefix), LOCK_TTL_S)
        *replies, holder, _ = pipe.execute()
        if holder != self.run_id:
            raise OnlineExportError(
                f"export run {self.run_id} lost {lock_key(self.s.prefix)} (now held by "
                f"{holder!r}): it paused longer than {LOCK_TTL_S} s; re-run the export")
        return replies


def _scan_version(r: redis.Redis, prefix: str, version: str) -> Iterator[str]:
    """Every key of a version but its meta hash (the meta goes last, so a killed sweep is
    found again by the next one)."""
    meta = meta_key(prefix, version)
    for key in r.scan_iter(match=f"{prefix}:v:{version}:*", count=5000):
        if key != meta:
            yield key


def sweep_versions(r: redis.Redis, s: OnlineSettings, keep: str | None, writer: _Writer) -> None:
    """Give every replaced version its TTL and delete orphans of killed exports.

    Runs under the export lock, so a version still ``writing`` or ``verified`` that is not
    ``keep`` belongs to a dead export. A ``live`` version that is not ``keep`` was replaced
    (possibly by an export killed before it expired it)."""
    for version in r.zrange(versions_key(s.prefix), 0, -1):
        if version == keep:
            continue
        meta = meta_key(s.prefix, version)
        status = r.hget(meta, "status")
        if status is None:  # expired whole
            r.zrem(versions_key(s.prefix), version)
        elif status in (STATUS_WRITING, STATUS_VERIFIED):
            n = sum(sum(b) for b in writer.batches(
                ("unlink", (k,)) for k in _scan_version(r, s.prefix, version)))
            r.unlink(meta)
            r.zrem(versions_key(s.prefix), version)
            log.info("deleted %s keys of %s, left %s by a killed export", n, version, status)
        elif r.ttl(meta) == -1:
            ttl = s.old_version_ttl_s
            n = sum(sum(b) for b in writer.batches(
                ("expire", (k, ttl)) for k in _scan_version(r, s.prefix, version)))
            r.hset(meta, mapping={"status": STATUS_RETIRED, "retired_at": _now()})
            r.expire(meta, ttl)
            log.info("retired %s: %s keys expire in %s s", version, n, ttl)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _acquire_lock(r: redis.Redis, prefix: str, run_id: str) -> None:
    if r.set(lock_key(prefix), run_id, nx=True, ex=LOCK_TTL_S):
        return
    holder, ttl = r.get(lock_key(prefix)), r.ttl(lock_key(prefix))
    raise OnlineExportError(
        f"another export (run {holder}) holds {lock_key(prefix)} for {ttl} more s. If it is "
        f"still running, let it finish; if it was killed, the lock expires by itself: re-run "
        f"after {ttl} s")


def _serving_ds(r: redis.Redis, prefix: str, version: str) -> str:
    return r.hget(meta_key(prefix, version), "ds") or version[:10]


def export_night(r: redis.Redis, lake: Lake, ds: str, s: OnlineSettings,
                 run_id: str | None = None, allow_older: bool = False) -> ExportResult:
    """Write the night's user_topk and item_related lists as a new version and switch readers
    to it (see the module docstring). A night older than the one served is skipped unless
    ``allow_older``. Raises OnlineExportError (pointer untouched) on any failure."""
    import redis

    run_id = run_id or uuid.uuid4().hex[:12]
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r}: use 1-64 letters, digits, '_' or '.'")
    version = f"{ds}-{run_id}"
    t0 = time.perf_counter()
    lists = {kind: read_lists(lake, table, key_col, item_col, ds)
             for kind, table, key_col, item_col in KINDS}
    if not lists["user"].keys:
        raise ValueError(f"scores/user_topk/ds={ds} holds no lists: nothing to serve; check "
                         f"the scoring run of {ds}")
    raw = pc.sum(pc.invert(pc.match_substring_regex(pa.array(lists["user"].keys),
                                                    PSEUDONYMOUS_KEY))).as_py()
    if raw:  # the values themselves are not shown: they may be raw ids
        raise ValueError(f"scores/user_topk/ds={ds}: {raw} user_key values are not pseudonymized "
                         "keys (64 hex characters); raw user ids must never reach Redis. Re-run "
                         f"clean_events and score_topk for {ds}")
    models = model_versions(lake, ds)
    result = ExportResult(ds=ds, version=version, previous=None,
                          seconds={"read": time.perf_counter() - t0})
    _acquire_lock(r, s.prefix, run_id)
    writer = _Writer(r, s, run_id)
    try:
        previous = current_version(r, s.prefix)
        result.previous = previous
        if previous and _serving_ds(r, s.prefix, previous) > ds and not allow_older:
            result.version = None
            result.skipped = (f"Redis serves {previous}, newer than ds={ds}; pass "
                              "--allow-older to serve an older night")
            return result
        if version == previous or r.exists(meta_key(s.prefix, version)):
            raise OnlineExportError(f"version {version} exists already: pass another run id "
                                    "(or none, for a random one)")
        sweep_versions(r, s, previous, writer)
        _write_version(r, s, writer, version, ds, run_id, lists, models, result)
        t1 = time.perf_counter()
        try:
            r.eval(_SWITCH_LUA, 2, current_key(s.prefix), meta_key(s.prefix, version),
                   version, previous or "", _now())
        except redis.ResponseError as exc:
            raise OnlineExportError(f"pointer not switched to {version}: "
                                    f"{str(exc).removeprefix('ECREC ')}; re-run the export") from None
        result.seconds["switch"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        sweep_versions(r, s, version, writer)
        result.seconds["retire"] = time.perf_counter() - t1
    finally:
        r.eval(_RELEASE_LUA, 1, lock_key(s.prefix), run_id)
    result.seconds["total"] = time.perf_counter() - t0
    return result


def _write_version(r: redis.Redis, s: OnlineSettings, writer: _Writer, version: str, ds: str,
                   run_id: str, lists: dict[str, ScoreLists], models: str,
                   result: ExportResult) -> None:
    """Write, verify and record the completeness of one version (status ``verified``)."""
    meta = meta_key(s.prefix, version)
    r.hset(meta, mapping={"ds": ds, "run_id": run_id, "status": STATUS_WRITING,
                          "started_at": _now(), "model_versions": models})
    r.expire(meta, s.partial_ttl_s)
    r.zadd(versions_key(s.prefix), {version: time.time()})
    t1 = time.perf_counter()
    for kind, sl in lists.items():
        for _ in writer.batches(
                ("set", (list_key(s.prefix, version, kind, key), sl.payload(g), s.partial_ttl_s))
                for g, key in enumerate(sl.keys)):
            pass
    result.seconds["write"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    # PERSIST answers 1 only for a key that exists and had a TTL: the sum counts every key
    # that arrived, and makes the version permanent before anyone can point to it.
    for kind, sl in lists.items():
        found = sum(sum(b) for b in writer.batches(
            ("persist", (list_key(s.prefix, version, kind, key),)) for key in sl.keys))
        if found != len(sl.keys):
            raise OnlineExportError(
                f"verification of {version} failed: {len(sl.keys) - found} of {len(sl.keys)} "
                f"{kind} keys are missing (evicted? check maxmemory and maxmemory-policy "
                f"noeviction); the pointer still names the previous version; re-run the export")
        _check_sample(r, s.prefix, version, kind, sl)
    counts = {"users": len(lists["user"].keys), "user_rows": lists["user"].n_rows,
              "items": len(lists["item"].keys), "item_rows": lists["item"].n_rows}
    r.hset(meta, mapping={**counts, "status": STATUS_VERIFIED, "verified_at": _now()})
    r.persist(meta)
    result.counts = counts
    result.seconds["verify"] = time.perf_counter() - t1


def _check_sample(r: redis.Redis, prefix: str, version: str, kind: str, sl: ScoreLists) -> None:
    n = len(sl.keys)
    rng = np.random.default_rng(n)
    picks = sorted({0, n - 1, *rng.integers(0, n, min(n, SAMPLE_CHECKS)).tolist()})
    got = r.mget([list_key(prefix, version, kind, sl.keys[g]) for g in picks])
    bad = [sl.keys[g] for g, payload in zip(picks, got, strict=True) if payload != sl.payload(g)]
    if bad:
        raise OnlineExportError(
            f"verification of {version} failed: {len(bad)} {kind} lists read back differ from "
            f"the lake (first: {bad[0]!r}); the pointer still names the previous version")
