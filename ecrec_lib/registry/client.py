"""The MLflow model registry as ecrec uses it: versions, the champion/challenger aliases and
the champion history that makes ``rollback`` possible.

Aliases, not stages (deprecated in MLflow 3): ``models:/<name>@champion`` is what batch scoring
serves, ``@challenger`` the newest registered candidate. The alias can be moved by hand in the
MLflow UI; every function here re-reads it, so a hand move is honored by the next run.

The champion history is a JSON list kept in the registered-model tag ``champion_history``;
each entry says which version became champion, how (``gate`` | ``manual`` | ``rollback`` |
``external``: moved outside ecrec, e.g. in the UI), when (ISO 8601, UTC), by whom and why.
Replaying it as a stack (rollback pops) gives the previous champion. The registered model's
description repeats the newest entries as a table, so the MLflow UI shows them readably.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecrec_lib.config import EcrecConfig
from ecrec_lib.privacy.secrets import redact_text

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"
MAX_HISTORY = 200  # entries kept in the tag (the promotion log keeps everything)
HISTORY_ROWS_SHOWN = 20  # champion changes listed in the registered model's description
MODEL_DESCRIPTION = (
    "ecrec's two-tower recommender (item, query and user-profile encoders over a shared "
    "MiniLM text model, with a co-occurrence blend and a learned ranker). Nightly batch "
    "scoring serves the version aliased `@champion`; `@challenger` is the newest registered "
    "candidate until the promotion gate decides on it. Each version links to its training run "
    "(tag `training_run`) and its latest gate run (tag `decision_run_id`); every decision is "
    "in the gate run's `decisions.jsonl` and the lake's `ops/promotion/promotion_log.jsonl`. "
    "Promote or roll back by hand with `python -m jobs.models`."
)
# Training metrics copied onto the version as tags, so the registry UI shows them.
KEY_METRICS = (
    "test_ndcg_10",
    "test_recall_10",
    "test_recall_50",
    "test_coverage_10",
    "pop_test_ndcg_10",
    "itemknn_test_ndcg_10",
)


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says why and how to fix it
    (credentials in URIs redacted)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_text(message))


class RegistryUnreachableError(RegistryError):
    """The tracking/registry server or database cannot be reached."""


class NoChampionError(RegistryError):
    """No version carries the ``champion`` alias."""


@dataclass(frozen=True)
class HistoryEntry:
    """One change of the champion alias."""

    version: str
    action: str  # gate | manual | rollback | external
    at: str  # ISO 8601 UTC ("2024-03-05T02:10:00Z"), wall clock: when the alias was moved
    by: str
    reason: str
    ds: str = ""
    previous: str = ""  # the version that was champion before ("" when none)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "action": self.action,
            "at": self.at,
            "by": self.by,
            "reason": self.reason,
            "ds": self.ds,
            "previous": self.previous,
        }


def iso_utc(epoch_s: float | None = None) -> str:
    """``2024-03-05T02:10:00Z``: the one timestamp format ecrec writes to MLflow and the lake."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if epoch_s is None else epoch_s))


def _as_iso(value: Any) -> str:
    """History entries written before the ISO format carried epoch seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return iso_utc(float(value))
    return str(value)


# ------------------------------------------------------------------ connection


def _fix_hint() -> str:
    return (
        "check the URI, or point ecrec at a reachable registry with ECREC_MLFLOW_TRACKING_URI "
        "(and ECREC_MLFLOW_REGISTRY_URI if it differs), e.g. sqlite:///./mlruns/mlflow.db locally"
    )


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///"))


def check_reachable(uri: str, *, must_exist: bool = True, timeout_s: float = 5.0) -> None:
    """Fail fast, with the URI and the fix in the message, when ``uri`` cannot be reached.

    MLflow itself would retry an HTTP server for minutes, and silently create a new empty
    SQLite database at a wrong path; both hide the real problem.
    """
    path = _sqlite_path(uri)
    if path is not None:
        if not path.parent.is_dir():
            raise RegistryUnreachableError(
                f"MLflow registry {uri} is unreachable: directory {path.parent} does not exist; "
                + _fix_hint()
            )
        if must_exist and not path.is_file():
            raise RegistryUnreachableError(
                f"MLflow registry {uri} is unreachable: no database file {path} (no model has "
                "been trained into it yet?); run `python -m jobs.train_encoders --ds D` first or "
                + _fix_hint()
            )
        return
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status >= 400:
                    raise RegistryUnreachableError(
                        f"MLflow registry {uri} answered HTTP {resp.status} on /health; "
                        + _fix_hint()
                    )
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryUnreachableError(
                f"MLflow registry {uri} is unreachable ({exc}); start the server "
                "(`make mlflow`) or " + _fix_hint()
            ) from None


def configure_mlflow(cfg: EcrecConfig) -> None:
    """Point the process-wide MLflow client at the config's tracking and registry URIs.

    Jobs call this once at start-up; ``models:/`` loading uses the process-wide URIs.
    """
    import mlflow

    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
    mlflow.set_registry_uri(cfg.registry_uri)


def connect(cfg: EcrecConfig, *, must_exist: bool = True) -> MlflowClient:
    """A client for the config's registry, verified to answer (raises RegistryUnreachableError)."""
    check_reachable(cfg.mlflow_tracking_uri, must_exist=must_exist)
    if cfg.registry_uri != cfg.mlflow_tracking_uri:
        check_reachable(cfg.registry_uri, must_exist=must_exist)
    configure_mlflow(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri, registry_uri=cfg.registry_uri)
    try:
        client.search_registered_models(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not usable"; re-raised
        raise RegistryUnreachableError(
            f"MLflow registry {cfg.registry_uri} does not answer ({type(exc).__name__}: "
            f"{str(exc)[:300]}); " + _fix_hint()
        ) from exc
    return client


# ------------------------------------------------------------------ small readers


def get_alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version behind ``alias``, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """A version of ``name``, or RegistryError naming the versions that exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        known = [mv.version for mv in list_versions(client, name)]
        raise RegistryError(
            f"model {name!r} has no version {version!r}; existing versions: {known or 'none'} "
            "(see `python -m jobs.models list`)"
        ) from None


def list_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """All versions of ``name``, newest first (empty when the model is not registered)."""
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted(versions, key=lambda mv: int(mv.version), reverse=True)


def aliases_by_version(client: MlflowClient, name: str) -> dict[str, list[str]]:
    """version -> its aliases (version search results do not carry aliases)."""
    try:
        aliases = client.get_registered_model(name).aliases or {}
    except Exception:  # noqa: BLE001 - model not registered yet: no aliases
        return {}
    out: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        out.setdefault(str(version), []).append(alias)
    return {v: sorted(a) for v, a in out.items()}


def model_version_uri(name: str, version: str) -> str:
    """A pinned URI: scoring loads exactly the version it records, even if the alias moves."""
    return f"models:/{name}/{version}"


def resolve_champion(cfg: EcrecConfig, client: MlflowClient | None = None) -> tuple[str, str]:
    """``(version, model_uri)`` of the current champion, read from the registry now.

    The alias is resolved at call time, so a move made by hand in the MLflow UI is honored by
    the next scoring run. Raises NoChampionError when no version is champion yet.
    """
    client = client or connect(cfg)
    mv = get_alias_version(client, cfg.registered_model_name, CHAMPION)
    if mv is None:
        raise NoChampionError(
            f"registered model {cfg.registered_model_name!r} at {cfg.registry_uri} has no "
            f"'{CHAMPION}' alias yet; run the promotion gate (`python -m jobs.promote_model "
            "--ds D`) or promote a version by hand (`python -m jobs.models promote VERSION "
            "--reason TEXT`)"
        )
    return str(mv.version), model_version_uri(cfg.registered_model_name, str(mv.version))


# ------------------------------------------------------------------ erasure flags

# Version tag set by jobs.forget_users on every version whose training window held an erased
# user: JSON list of the erasure request ids. A flagged version is never promoted again and a
# flagged champion forces the next night to retrain (see should_train and the gate).
ERASURE_TAG = "erasure_pending"


def erasure_requests(mv: ModelVersion) -> list[str]:
    """The erasure request ids a version is flagged with (empty: not flagged)."""
    raw = (mv.tags or {}).get(ERASURE_TAG, "")
    if not raw:
        return []
    try:
        ids = json.loads(raw)
    except json.JSONDecodeError:
        raise RegistryError(
            f"version {mv.version} has an unreadable '{ERASURE_TAG}' tag {raw[:100]!r}; it must be a "
            "JSON list of request ids: fix it in the MLflow UI (never delete it: the version "
            "holds erased users' data)"
        ) from None
    return [str(i) for i in ids] if isinstance(ids, list) else [str(ids)]


def is_flagged(mv: ModelVersion | None) -> bool:
    """Whether a version holds data of an erased user (``None``: no version, not flagged)."""
    return mv is not None and bool(erasure_requests(mv))


def flag_for_erasure(client: MlflowClient, name: str, version: str, request_id: str) -> bool:
    """Add ``request_id`` to the version's erasure tag; False when it was already there."""
    mv = get_version(client, name, version)
    ids = erasure_requests(mv)
    if request_id in ids:
        return False
    client.set_model_version_tag(name, str(version), ERASURE_TAG, json.dumps([*ids, request_id]))
    return True


# ------------------------------------------------------------------ registration


def git_commit(repo_dir: str | os.PathLike[str] | None = None) -> str:
    """The checked-out commit of the code, or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo_dir or Path(__file__).resolve().parents[2],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def version_tags(
    ds: str, fingerprint: str, commit: str, metrics: Mapping[str, float]
) -> dict[str, str]:
    """The tags every registered version carries (shown in the MLflow UI and by `models list`)."""
    from ecrec_lib.model_card import normalize_metrics

    metrics = normalize_metrics(metrics)
    tags = {"ds": ds, "data_fingerprint": fingerprint, "git_commit": commit}
    for key in KEY_METRICS:
        if key in metrics and metrics[key] is not None:
            tags[f"metric.{key}"] = f"{float(metrics[key]):.6f}"
    return tags


def register_challenger(
    cfg: EcrecConfig,
    run_id: str,
    model_uri: str,
    ds: str,
    metrics: Mapping[str, float],
    fingerprint: str,
    *,
    commit: str | None = None,
    client: MlflowClient | None = None,
) -> str:
    """Register ``model_uri`` as a new version of the ecrec model and alias it ``challenger``.

    Returns the new version number. Idempotent per training run: when a version of the same
    ``run_id`` and ``model_uri`` already exists it is re-aliased instead of duplicated.
    """
    client = client or connect(cfg)
    import mlflow

    name = cfg.registered_model_name
    for mv in list_versions(client, name):
        if mv.run_id == run_id and (mv.tags or {}).get("model_uri") == model_uri:
            log.info("run %s is already registered as %s version %s", run_id, name, mv.version)
            client.set_registered_model_alias(name, CHALLENGER, mv.version)
            return str(mv.version)
    if commit is None:
        run_tags = client.get_run(run_id).data.tags
        commit = run_tags.get("git_commit") or run_tags.get("mlflow.source.git.commit") or git_commit()
    tags = version_tags(ds, fingerprint, commit, metrics)
    tags["model_uri"] = model_uri
    tags["run_id"] = run_id
    tags["training_run"] = run_id
    ensure_registered_model(client, name)
    try:
        mv = mlflow.register_model(model_uri, name, await_registration_for=60, tags=tags)
    except Exception as exc:  # noqa: BLE001 - re-raised with the URI and the fix
        raise RegistryError(
            f"could not register {model_uri} (run {run_id}) as {name!r} at {cfg.registry_uri}: "
            f"{exc}; check that the training run logged its model (ops/training summary)"
        ) from exc
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    # The run page then names the version it became (MLflow shows run tags, not the reverse link).
    client.set_tag(run_id, "registered_model_version", f"{name}/{mv.version}")
    log.info("registered %s version %s from run %s as %s", name, mv.version, run_id, CHALLENGER)
    return str(mv.version)


# ------------------------------------------------------------------ champion history


def read_history(client: MlflowClient, name: str) -> list[HistoryEntry]:
    """The champion history stored on the registered model (oldest first)."""
    try:
        raw = client.get_registered_model(name).tags.get(HISTORY_TAG, "[]")
    except Exception:  # noqa: BLE001 - model not registered yet: no history
        return []
    try:
        items = json.loads(raw)
    except json.JSONDecodeError:
        raise RegistryError(
            f"the '{HISTORY_TAG}' tag of {name!r} is not valid JSON; fix or delete the tag in "
            "the MLflow UI (the promotion log under ops/promotion keeps the full history)"
        ) from None
    return [
        HistoryEntry(**{k: _as_iso(v) if k == "at" else v
                        for k, v in it.items() if k in HistoryEntry.__annotations__})
        for it in items
    ]


def champion_stack(history: list[HistoryEntry]) -> list[str]:
    """Replay the history: every promotion pushes its version, a rollback pops one."""
    stack: list[str] = []
    for entry in history:
        if entry.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != entry.version:
                stack.append(entry.version)
        else:
            stack.append(entry.version)
    return stack


def _write_history(client: MlflowClient, name: str, history: list[HistoryEntry]) -> None:
    kept = history[-MAX_HISTORY:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([e.to_dict() for e in kept]))
    client.update_registered_model(name, description=model_description(kept))


def model_description(history: list[HistoryEntry]) -> str:
    """The registered model's description: what it is, then its newest champion changes."""
    lines = [MODEL_DESCRIPTION, "", "## Champion history (newest first)", ""]
    if not history:
        return "\n".join([*lines, "No version has been champion yet."]) + "\n"
    lines += ["| when (UTC) | version | previous | action | by | ds | reason |", "|---|---|---|---|---|---|---|"]
    for e in reversed(history[-HISTORY_ROWS_SHOWN:]):
        reason = e.reason.replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {e.at} | {e.version} | {e.previous or '-'} | {e.action} | {e.by} | "
                     f"{e.ds or '-'} | {reason} |")
    return "\n".join(lines) + "\n"


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    """Create ``name`` with its description, or give an existing one a missing description."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description=model_description([]))
        return
    if not model.description:
        client.update_registered_model(name, description=model_description(read_history(client, name)))


def sync_history(client: MlflowClient, name: str) -> list[HistoryEntry]:
    """The history, with an ``external`` entry added when the alias was moved outside ecrec.

    A hand move in the MLflow UI leaves no record of its own; noting it here keeps rollback
    meaningful (rolling back after a UI move returns to the champion before that move).
    """
    history = read_history(client, name)
    current = get_alias_version(client, name, CHAMPION)
    stack = champion_stack(history)
    if current is not None and (not stack or stack[-1] != str(current.version)):
        entry = HistoryEntry(
            version=str(current.version),
            action="external",
            at=iso_utc(),
            by="unknown (alias moved outside ecrec, e.g. in the MLflow UI)",
            reason="alias found on this version",
            previous=stack[-1] if stack else "",
        )
        history = [*history, entry]
        _write_history(client, name, history)
    return history


def set_champion(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    action: str,
    by: str,
    reason: str,
    ds: str = "",
) -> HistoryEntry:
    """Move ``champion`` to ``version`` and record the move (history tag + version tags)."""
    history = sync_history(client, name)
    current = get_alias_version(client, name, CHAMPION)
    entry = HistoryEntry(
        version=str(version),
        action=action,
        at=iso_utc(),
        by=by,
        reason=reason,
        ds=ds,
        previous=str(current.version) if current is not None else "",
    )
    client.set_registered_model_alias(name, CHAMPION, str(version))
    _write_history(client, name, [*history, entry])
    stamp = entry.at
    for key, value in {
        "champion_since": stamp,
        "champion_action": action,
        "champion_by": by,
        "champion_reason": reason[:5000],
    }.items():
        client.set_model_version_tag(name, str(version), key, value)
    if current is not None and str(current.version) != str(version):
        client.set_model_version_tag(name, str(current.version), "champion_until", stamp)
    log.info("%s champion: version %s -> %s (%s by %s)", name, entry.previous or "none",
             version, action, by)
    return entry


def previous_champion(client: MlflowClient, name: str) -> str:
    """The version that was champion before the current one (RegistryError when none)."""
    stack = champion_stack(sync_history(client, name))
    if len(stack) < 2:
        raise RegistryError(
            f"model {name!r} has no previous champion to roll back to (champion history: "
            f"{stack or 'empty'}); promote a specific version instead with "
            "`python -m jobs.models promote VERSION --reason TEXT`"
        )
    return stack[-2]


def rollback_champion(client: MlflowClient, name: str, *, by: str, reason: str) -> HistoryEntry:
    """Move ``champion`` back to the previous champion and record it."""
    target = previous_champion(client, name)
    get_version(client, name, target)  # a deleted version cannot be rolled back to
    return set_champion(client, name, target, action="rollback", by=by, reason=reason)
