"""Registration with a model card, the promotion gate, and manual promote/rollback.

Every decision — automatic or by hand — leaves the same three traces: a fixed set of tags on
the versions (latest decision, reason, ds, ``decision_run_id``), a line in the lake's promotion
log, and an MLflow run in ``<experiment>-promotion`` whose ``decisions.jsonl`` holds the whole
log. A gate run is a child of the challenger's training run and names both versions.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ecrec_lib.config import EcrecConfig
from ecrec_lib.model_card import render_model_card
from ecrec_lib.privacy.secrets import redact_text
from ecrec_lib.registry import client as reg
from ecrec_lib.registry import records

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from ecrec_lib.models.api import Recommender
    from ecrec_lib.registry.gate import Holdout

log = logging.getLogger(__name__)

Loader = Callable[[str], "Recommender"]

NO_CHALLENGER = "no_challenger"
ALREADY_CHAMPION = "already_champion"
PROMOTED = "promoted"
REJECTED = "rejected"
INVALID_ARTIFACT = "invalid_artifact"
MANUAL_PROMOTE = "manual_promote"
ROLLBACK = "rollback"
CARD_INPUTS_ARTIFACT = "model_card_inputs.json"  # on the training run; the gate re-renders from it


class InvalidArtifactError(reg.RegistryError):
    """A registered version's model files cannot be loaded or produce unusable output."""


def default_loader(model_uri: str) -> Recommender:
    """The training side's loader (raises on a corrupted or incomplete artifact)."""
    from ecrec_lib.models.artifact import load_recommender

    return load_recommender(model_uri)


def load_checked(loader: Loader | None, name: str, version: str) -> Recommender:
    """Load a version and check it implements Recommender; InvalidArtifactError otherwise.

    ``loader`` None means the training side's :func:`default_loader` (looked up at call time).
    """
    from ecrec_lib.models.api import Recommender

    uri = reg.model_version_uri(name, version)
    try:
        model = (loader or default_loader)(uri)
    except Exception as exc:  # noqa: BLE001 - any load failure means the artifact is unusable
        raise InvalidArtifactError(
            f"model version {version} ({uri}) cannot be loaded, so it is refused: "
            f"{type(exc).__name__}: {str(exc)[:500]}. Re-train and register a new version, "
            "or promote another one (`python -m jobs.models promote VERSION --reason TEXT`)"
        ) from exc
    if not isinstance(model, Recommender):
        raise InvalidArtifactError(
            f"model version {version} ({uri}) loaded as {type(model).__name__}, which does not "
            "implement ecrec_lib.models.api.Recommender; it is refused"
        )
    return model


def _version_metrics(mv: ModelVersion) -> dict[str, float]:
    out = {}
    for key, value in (mv.tags or {}).items():
        if key.startswith("metric."):
            try:
                out[key.removeprefix("metric.")] = float(value)
            except ValueError:
                continue
    return out


# ------------------------------------------------------------------ registration

CARD_CFG_KEYS = ("lookback_days", "max_seq_len", "encoder_mode", "seed")


def training_config(params: Mapping[str, str]) -> dict[str, str]:
    """The card's training table: the run's ``model.*`` params plus a few platform keys
    (all params when the run did not use the ``model.`` prefix)."""
    model = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
    if not model:
        return dict(params)
    model.update({k: params[f"cfg.{k}"] for k in CARD_CFG_KEYS if f"cfg.{k}" in params})
    return model



def register_with_card(
    client: MlflowClient,
    cfg: EcrecConfig,
    *,
    run_id: str,
    model_uri: str,
    ds: str,
    metrics: Mapping[str, float],
    fingerprint: str,
    data_window: Mapping[str, Any] | None = None,
    cold_start_metrics: Mapping[str, float] | None = None,
) -> str:
    """register_challenger, then write the version's model card (artifact + description)."""
    name = cfg.registered_model_name
    champion = reg.get_alias_version(client, name, reg.CHAMPION)
    version = reg.register_challenger(
        cfg, run_id, model_uri, ds, metrics, fingerprint, client=client
    )
    mv = client.get_model_version(name, version)
    run = client.get_run(run_id)
    previous = None
    if champion is not None and str(champion.version) != version:
        previous = {"version": str(champion.version), "metrics": _version_metrics(champion)}
    card = render_model_card(
        model_name=name,
        version=version,
        ds=ds,
        run_id=run_id,
        data_window=dict(data_window or {}),
        training_config=training_config(run.data.params),
        metrics=metrics,
        fingerprint=fingerprint,
        git_commit=(mv.tags or {}).get("git_commit", ""),
        previous_champion=previous,
        cold_start_metrics=cold_start_metrics,
    )
    records.log_model_card(client, name, version, run_id, card)
    # Kept so the gate can re-render the card with its holdout table.
    client.log_text(run_id, json.dumps({
        "data_window": dict(data_window or {}),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "previous_champion": previous,
        "cold_start_metrics": dict(cold_start_metrics or {}),
    }, indent=1, default=str), CARD_INPUTS_ARTIFACT)
    return version


def _card_inputs(client: MlflowClient, run_id: str) -> dict[str, Any]:
    """What registration rendered the card from ({} when the version was registered without
    a card, e.g. by ``train_encoders`` directly)."""
    if not run_id or CARD_INPUTS_ARTIFACT not in {f.path for f in client.list_artifacts(run_id)}:
        return {}
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, CARD_INPUTS_ARTIFACT, tmp)
        return json.loads(Path(path).read_text())


def update_card_after_gate(
    client: MlflowClient,
    cfg: EcrecConfig,
    mv: ModelVersion,
    holdout_metrics: Mapping[str, Mapping[str, float]],
    decision: str,
) -> None:
    """Re-render the challenger's card with the gate's side-by-side holdout evaluation."""
    name = cfg.registered_model_name
    inputs = _card_inputs(client, mv.run_id or "")
    run_params = client.get_run(mv.run_id).data.params if mv.run_id else {}
    card = render_model_card(
        model_name=name,
        version=str(mv.version),
        ds=(mv.tags or {}).get("ds", ""),
        run_id=mv.run_id or "",
        data_window=inputs.get("data_window", {}),
        training_config=training_config(run_params),
        metrics=inputs.get("metrics") or _version_metrics(mv),
        fingerprint=(mv.tags or {}).get("data_fingerprint", ""),
        git_commit=(mv.tags or {}).get("git_commit", ""),
        previous_champion=inputs.get("previous_champion"),
        holdout=holdout_metrics,
        cold_start_metrics=inputs.get("cold_start_metrics") or _gate_cold(holdout_metrics),
        decision=decision,
    )
    records.log_model_card(client, name, str(mv.version), mv.run_id or "", card)


def _gate_cold(holdout_metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float] | None:
    """The challenger's cold-start metrics measured by the gate (None when not measurable)."""
    cold = {k.removeprefix("cold_"): v for k, v in holdout_metrics.get("challenger", {}).items()
            if k.startswith("cold_")}
    return cold or None


# ------------------------------------------------------------------ the gate


@dataclass
class GateDecision:
    """What the gate decided for one ds, with its evidence (the promotion-log line)."""

    ds: str
    decision: str
    challenger_version: str = ""
    champion_version: str = ""
    new_champion_version: str = ""
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    guardrails: dict[str, bool] = field(default_factory=dict)
    holdout: dict[str, float] = field(default_factory=dict)
    decision_run_id: str = ""

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTED

    def record(self, cfg: EcrecConfig) -> dict[str, Any]:
        return {
            "kind": "gate",
            "ds": self.ds,
            "decision": self.decision,
            "model": cfg.registered_model_name,
            "challenger_version": self.challenger_version,
            "champion_version": self.champion_version,
            "new_champion_version": self.new_champion_version,
            "reasons": "; ".join(self.reasons),
            "metrics": self.metrics,
            "guardrails": self.guardrails,
            "holdout": self.holdout,
            "margin": cfg.promotion_margin,
            "by": "promotion-gate",
            "decision_run_id": self.decision_run_id,
            "at": reg.iso_utc(),
        }


def _training_run(client: MlflowClient, name: str, version: str) -> str:
    return (client.get_model_version(name, version).run_id or "") if version else ""


def set_decision_tags(client: MlflowClient, name: str, version: str, *, decision: str, reason: str,
                      ds: str, role: str, decision_run_id: str) -> None:
    """The version's fixed decision tags: overwritten by each decision, never one key per ds
    (the history is in the promotion log and the decision runs)."""
    for key, value in {
        "promotion_decision": decision,
        "promotion_reason": reason[:5000],
        "promotion_ds": ds,
        "promotion_role": role,
        "decision_run_id": decision_run_id,
    }.items():
        client.set_model_version_tag(name, version, key, value)


def _record_gate(client: MlflowClient, cfg: EcrecConfig, d: GateDecision) -> str:
    """Decision run (child of the challenger's training run), version tags, decision.json and
    the log line; returns the decision.json path."""
    name = cfg.registered_model_name
    record = d.record(cfg)
    params = {k: v for k, v in record.items() if k not in ("metrics", "guardrails", "holdout")}
    params.update({f"guardrail_{k}": v for k, v in d.guardrails.items()})
    runs = {role: _training_run(client, name, v) for role, v in
            (("challenger", d.challenger_version), ("champion", d.champion_version))}
    tags = {"challenger_version": d.challenger_version, "champion_version": d.champion_version,
            "new_champion_version": d.new_champion_version,
            "challenger_training_run": runs["challenger"],
            "champion_training_run": runs["champion"]}
    written: dict[str, str] = {}

    def persist(full: dict[str, Any]) -> None:
        record["decision_run_id"] = full["decision_run_id"]
        written["path"] = records.write_gate_decision(cfg, record)

    d.decision_run_id = records.log_decision_run(
        client, cfg, params, d.metrics, parent_run_id=runs["challenger"], tags=tags, persist=persist
    )
    reason = "; ".join(d.reasons)
    for version, role in ((d.challenger_version, "challenger"), (d.champion_version, "champion")):
        if not version:
            continue
        set_decision_tags(client, name, version, decision=d.decision, reason=reason, ds=d.ds,
                          role=role, decision_run_id=d.decision_run_id)
        ndcg = d.metrics.get(role, {}).get("ndcg@10")
        if ndcg is not None:
            client.set_model_version_tag(name, version, "holdout_ndcg_10", f"{ndcg:.6f}")
    if runs["challenger"]:
        client.set_tag(runs["challenger"], "latest_decision_run_id", d.decision_run_id)
    return written["path"]


def _earlier_promotion(cfg: EcrecConfig, ds: str, version: str) -> GateDecision | None:
    """This ds's recorded decision when it promoted ``version`` (re-runs keep it)."""
    text = records.read_text(records.decision_path(cfg, ds))
    if not text:
        return None
    rec = json.loads(text)
    if rec.get("decision") != PROMOTED or rec.get("new_champion_version") != version:
        return None
    return GateDecision(
        ds=ds, decision=PROMOTED, challenger_version=version,
        champion_version=rec.get("champion_version", ""), new_champion_version=version,
        reasons=[r for r in str(rec.get("reasons", "")).split("; ") if r],
        metrics=rec.get("metrics", {}), guardrails=rec.get("guardrails", {}),
        holdout=rec.get("holdout", {}), decision_run_id=rec.get("decision_run_id", ""),
    )


def run_gate(
    client: MlflowClient,
    cfg: EcrecConfig,
    ds: str,
    *,
    loader: Loader | None = None,
    holdout: Holdout | None = None,
) -> GateDecision:
    """Evaluate challenger vs. champion on the newest holdout and move ``champion`` if earned.

    Raises InvalidArtifactError (after recording the refusal) when a model cannot be loaded or
    scored; a worse challenger is a normal outcome (decision ``rejected``), not an error.
    """
    from ecrec_lib.registry import gate

    name = cfg.registered_model_name
    challenger = reg.get_alias_version(client, name, reg.CHALLENGER)
    champion = reg.get_alias_version(client, name, reg.CHAMPION)
    current = str(champion.version) if champion else ""
    d = GateDecision(ds=ds, decision=NO_CHALLENGER, champion_version=current,
                     new_champion_version=current)
    if challenger is None and current:
        # The gate removes @challenger when it promotes: a retry of that ds keeps the decision.
        earlier = _earlier_promotion(cfg, ds, current)
        if earlier is not None:
            log.info("ds=%s already promoted version %s; decision kept", ds, current)
            return earlier
    if challenger is None:
        d.reasons.append(
            f"registered model {name!r} has no '{reg.CHALLENGER}' alias: nothing to evaluate "
            "(register one with `python -m jobs.register_model --ds D`)"
        )
        _record_gate(client, cfg, d)
        return d
    d.challenger_version = str(challenger.version)
    if champion is not None and str(champion.version) == d.challenger_version:
        earlier = _earlier_promotion(cfg, ds, d.challenger_version)
        if earlier is not None:  # a re-run of the ds that promoted it: keep that decision
            log.info("ds=%s already promoted version %s; decision kept", ds, d.challenger_version)
            return earlier
        d.decision = ALREADY_CHAMPION
        d.reasons.append(f"version {d.challenger_version} is already the champion")
        _record_gate(client, cfg, d)
        return d

    if holdout is None:
        holdout = gate.read_holdout(cfg, ds)
    d.holdout = holdout.summary()

    roles = [("challenger", challenger)] + ([("champion", champion)] if champion else [])
    for role, mv in roles:
        try:
            model = load_checked(loader, name, str(mv.version))
            try:
                d.metrics[role] = gate.evaluate_recommender(model, holdout)
            except (gate.ModelEvaluationError, ValueError) as exc:
                raise InvalidArtifactError(
                    f"model version {mv.version} loaded but cannot score the holdout: {exc}; "
                    "it is refused"
                ) from exc
        except InvalidArtifactError as exc:
            d.decision = INVALID_ARTIFACT
            d.reasons.append(f"{role}: {exc}")
            client.set_model_version_tag(name, str(mv.version), "artifact_invalid",
                                          redact_text(str(exc))[:5000])
            _record_gate(client, cfg, d)
            raise
        del model  # one model in memory at a time

    d.metrics["popularity"] = gate.evaluate_popularity(holdout)
    verdict = gate.decide(cfg, d.metrics["challenger"], d.metrics.get("champion"),
                          d.metrics["popularity"], champion_flagged=reg.is_flagged(champion),
                          challenger_flagged=reg.is_flagged(challenger))
    d.reasons.extend(verdict.reasons)
    d.guardrails = verdict.guardrails
    if verdict.promote:
        d.decision = PROMOTED
        d.new_champion_version = d.challenger_version
        reg.set_champion(client, name, d.challenger_version, action="gate",
                         by="promotion-gate", reason="; ".join(verdict.reasons), ds=ds)
        # The champion is no longer a candidate: @challenger names only an undecided version.
        client.delete_registered_model_alias(name, reg.CHALLENGER)
    else:
        d.decision = REJECTED
        d.new_champion_version = d.champion_version
    _record_gate(client, cfg, d)
    update_card_after_gate(client, cfg, challenger, d.metrics, f"{d.decision} on ds={ds}")
    return d


# ------------------------------------------------------------------ manual control


def _refuse_flagged(mv: ModelVersion) -> None:
    """A version flagged by an erasure request holds erased users' data: never champion again."""
    if reg.is_flagged(mv):
        raise reg.RegistryError(
            f"version {mv.version} holds data of erased users (erasure requests "
            f"{reg.erasure_requests(mv)}), so it cannot become champion; promote a version trained "
            "after the erasure, or let the next night retrain"
        )


def _record_manual(
    client: MlflowClient, cfg: EcrecConfig, entry: reg.HistoryEntry, decision: str
) -> dict[str, Any]:
    name = cfg.registered_model_name
    record = {
        "kind": "manual",
        "event_id": uuid.uuid4().hex,
        "decision": decision,
        "model": name,
        "new_champion_version": entry.version,
        "champion_version": entry.previous,
        "by": entry.by,
        "reason": entry.reason,
        "at": entry.at,
    }
    def persist(full: dict[str, Any]) -> None:
        record["decision_run_id"] = full["decision_run_id"]
        records.append_promotion_log(cfg, record)

    records.log_decision_run(
        client, cfg, record, parent_run_id=_training_run(client, name, entry.version),
        tags={"new_champion_version": entry.version, "champion_version": entry.previous},
        persist=persist,
    )
    set_decision_tags(client, name, entry.version, decision=decision,
                      reason=f"by {entry.by}: {entry.reason}", ds="", role="new_champion",
                      decision_run_id=record["decision_run_id"])
    return record


def manual_promote(
    client: MlflowClient,
    cfg: EcrecConfig,
    version: str,
    *,
    by: str,
    reason: str,
    check_artifact: bool = True,
    loader: Loader | None = None,
) -> dict[str, Any]:
    """Make ``version`` champion by hand (after checking its artifact loads) and record it."""
    name = cfg.registered_model_name
    _refuse_flagged(reg.get_version(client, name, version))
    current = reg.get_alias_version(client, name, reg.CHAMPION)
    if current is not None and str(current.version) == str(version):
        raise reg.RegistryError(f"version {version} is already the champion of {name!r}")
    if check_artifact:
        load_checked(loader, name, str(version))
    entry = reg.set_champion(client, name, str(version), action="manual", by=by, reason=reason)
    return _record_manual(client, cfg, entry, MANUAL_PROMOTE)


def manual_rollback(
    client: MlflowClient,
    cfg: EcrecConfig,
    *,
    by: str,
    reason: str,
    check_artifact: bool = True,
    loader: Loader | None = None,
) -> dict[str, Any]:
    """Move ``champion`` back to the previous champion and record it."""
    name = cfg.registered_model_name
    target = reg.previous_champion(client, name)
    _refuse_flagged(reg.get_version(client, name, target))
    if check_artifact:
        load_checked(loader, name, target)
    entry = reg.rollback_champion(client, name, by=by, reason=reason)
    return _record_manual(client, cfg, entry, ROLLBACK)
