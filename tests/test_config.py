"""ecrec_lib.config: precedence, coercion, unknown keys, and the pseudonymization key."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ecrec_lib.config import (
    ConfigError,
    EcrecConfig,
    add_config_args,
    config_from_args,
    load_config,
    resolve_pseudonymization_key,
)

SECRET = "a-very-secret-key-0123456789"


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ecrec.yaml"
    path.write_text(text)
    return path


def test_defaults_without_yaml_or_env() -> None:
    assert load_config(env={}) == EcrecConfig()


def test_precedence_defaults_yaml_env_overrides(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "top_k: 50\nepochs: 3\nlake_root: /yaml/lake\nseed: 1\n")
    env = {"ECREC_TOP_K": "70", "ECREC_LAKE_ROOT": "/env/lake"}
    cfg = load_config(path, env=env, lake_root="/cli/lake", seed=None)
    assert cfg.epochs == 3  # YAML over default
    assert cfg.top_k == 70  # env over YAML
    assert cfg.lake_root == "/cli/lake"  # explicit override over env
    assert cfg.seed == 1  # a None override is ignored
    assert cfg.batch_size == EcrecConfig().batch_size  # untouched default


def test_yaml_path_from_ecrec_config_env(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "n_related: 7\n")
    assert load_config(env={"ECREC_CONFIG": str(path)}).n_related == 7


def test_empty_env_value_does_not_override(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, "top_k: 50\n")
    assert load_config(path, env={"ECREC_TOP_K": ""}).top_k == 50


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("top_k", "25", 25),
        ("learning_rate", "0.01", 0.01),
        ("late_tolerance_hours", "3", 3.0),
        ("exclude_purchased", "no", False),
        ("exclude_purchased", "ON", True),
        ("exclude_purchased", "0", False),
        ("spark_master", "local[2]", "local[2]"),
    ],
)
def test_env_values_are_coerced_to_the_field_type(key: str, raw: str, value: object) -> None:
    got = getattr(load_config(env={f"ECREC_{key.upper()}": raw}), key)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(
    ("key", "raw", "expects"),
    [("top_k", "ten", "int"), ("learning_rate", "fast", "float"), ("exclude_purchased", "maybe", "bool")],
)
def test_bad_env_value_names_key_and_variable(key: str, raw: str, expects: str) -> None:
    with pytest.raises(ConfigError, match=rf"'{key}' expects {expects}.*ECREC_{key.upper()}"):
        load_config(env={f"ECREC_{key.upper()}": raw})


def test_bad_yaml_value_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'epochs' expects int, got 'many'"):
        load_config(yaml_file(tmp_path, "epochs: many\n"), env={})


def test_yaml_bool_is_not_an_int(tmp_path: Path) -> None:
    # YAML `true` must not silently become epochs=1.
    with pytest.raises(ConfigError, match="'epochs' expects int"):
        load_config(yaml_file(tmp_path, "epochs: true\n"), env={})


def test_unknown_yaml_keys_are_listed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown keys \['lake', 'topk'\]"):
        load_config(yaml_file(tmp_path, "topk: 5\nlake: x\ntop_k: 5\n"), env={})


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'lake'"):
        load_config(env={}, lake="/x")


def test_unknown_env_variables_are_ignored() -> None:
    assert load_config(env={"ECREC_NOT_A_FIELD": "1", "ECREC_PSEUDO_KEY": SECRET}) == EcrecConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [("- a\n- b\n", "must hold a mapping"), ("top_k: [1, 2\n", "not valid YAML")],
)
def test_malformed_yaml_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(yaml_file(tmp_path, text), env={})


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", env={})


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(yaml_file(tmp_path, ""), env={}) == EcrecConfig()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"encoder_mode": "full"}, "encoder_mode must be"),
        ({"device": "tpu"}, "device must be"),
        ({"warehouse_url": "mysql://x"}, "warehouse_url must start with"),
        ({"top_k": 0}, "'top_k' must be positive"),
        ({"lookback_days": -1}, "'lookback_days' must be positive"),
    ],
)
def test_invalid_values_are_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env={}, **overrides)


def test_config_is_frozen() -> None:
    cfg = load_config(env={})
    with pytest.raises(AttributeError):
        cfg.top_k = 5  # type: ignore[misc]


def test_registry_uri_defaults_to_tracking_uri() -> None:
    cfg = load_config(env={})
    assert cfg.registry_uri == cfg.mlflow_tracking_uri
    assert load_config(env={}, mlflow_registry_uri="sqlite:///r.db").registry_uri == "sqlite:///r.db"


def test_job_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = yaml_file(tmp_path, "top_k: 11\nlake_root: /yaml/lake\n")
    monkeypatch.setenv("ECREC_LAKE_ROOT", "/env/lake")
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    cfg = config_from_args(parser.parse_args(["--config", str(path), "--lake", "/cli/lake"]), top_k=None)
    assert (cfg.top_k, cfg.lake_root) == (11, "/cli/lake")
    cfg = config_from_args(parser.parse_args(["--config", str(path)]))
    assert cfg.lake_root == "/env/lake"  # no --lake: env wins over YAML


# --- pseudonymization key ---------------------------------------------------------------


def test_key_from_env() -> None:
    assert resolve_pseudonymization_key({"ECREC_PSEUDO_KEY": SECRET}) == SECRET.encode()


def test_key_from_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET + "\n")
    assert resolve_pseudonymization_key({"ECREC_PSEUDO_KEY_FILE": str(key_file)}) == SECRET.encode()
    # The variable wins over the file.
    env = {"ECREC_PSEUDO_KEY": "other-key-0123456789", "ECREC_PSEUDO_KEY_FILE": str(key_file)}
    assert resolve_pseudonymization_key(env) == b"other-key-0123456789"


def test_key_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ECREC_PSEUDO_KEY_FILE points to .*does not exist"):
        resolve_pseudonymization_key({"ECREC_PSEUDO_KEY_FILE": str(tmp_path / "none")})


def test_short_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        resolve_pseudonymization_key({"ECREC_PSEUDO_KEY": "short"})


def test_key_from_airflow_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real Airflow lookup: a connection defined through AIRFLOW_CONN_<ID>."""
    pytest.importorskip("airflow.sdk")
    monkeypatch.setenv(
        "AIRFLOW_CONN_ECREC_PSEUDONYMIZATION",
        '{"conn_type": "generic", "password": "key-from-airflow-conn-123456"}',
    )
    assert resolve_pseudonymization_key({}) == b"key-from-airflow-conn-123456"


def test_no_key_anywhere_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_ECREC_PSEUDONYMIZATION", raising=False)
    with pytest.raises(ConfigError, match="no pseudonymization key: set ECREC_PSEUDO_KEY"):
        resolve_pseudonymization_key({})


def test_key_never_appears_in_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(SECRET)
    monkeypatch.setenv("ECREC_PSEUDO_KEY", SECRET)
    monkeypatch.setenv("ECREC_PSEUDO_KEY_FILE", str(key_file))
    cfg = load_config()
    assert resolve_pseudonymization_key() == SECRET.encode()
    assert SECRET not in repr(cfg)
    assert SECRET not in str(cfg.to_dict())
    assert not any("pseudo" in name for name in cfg.to_dict())


def test_duckdb_file_named_like_schema_is_refused() -> None:
    # DuckDB names the catalog after the file; catalog == schema makes `ecrec.t` ambiguous.
    with pytest.raises(ConfigError, match="ambiguous"):
        load_config(env={"ECREC_WAREHOUSE_URL": "duckdb:///./w/ecrec.duckdb"})
    assert load_config(env={}).warehouse_url.endswith("/warehouse.duckdb")


PG_PASSWORD = "pg-Pa55word-xyz"
PG_URL = f"postgresql://ecrec:{PG_PASSWORD}@warehouse-db:5432/ecrec"


def test_to_dict_and_repr_redact_credentials() -> None:
    cfg = load_config(env={"ECREC_WAREHOUSE_URL": PG_URL,
                           "ECREC_MLFLOW_TRACKING_URI": f"https://ml:{PG_PASSWORD}@mlflow/?token=t0k"})
    assert cfg.warehouse_url == PG_URL  # the attribute is what the jobs connect with
    shown = cfg.to_dict()
    assert shown["warehouse_url"] == "postgresql://ecrec:***@warehouse-db:5432/ecrec"
    assert shown["mlflow_tracking_uri"] == "https://ml:***@mlflow/?token=***"
    assert PG_PASSWORD not in str(shown) and PG_PASSWORD not in repr(cfg) and "t0k" not in repr(cfg)
    assert shown["top_k"] == cfg.top_k and set(shown) == set(EcrecConfig.__dataclass_fields__)


def test_config_errors_redact_credentials(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="warehouse_url must start with") as err:
        load_config(env={"ECREC_WAREHOUSE_URL": f"mysql://ecrec:{PG_PASSWORD}@db/ecrec"})
    assert PG_PASSWORD not in str(err.value) and "mysql://ecrec:***@db/ecrec" in str(err.value)
    bad = yaml_file(tmp_path, f"warehouse_url: postgresql://u:{PG_PASSWORD}@h/d\ntop_k: [\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(bad, env={})
    assert PG_PASSWORD not in str(err.value)


def test_field_from_file(tmp_path: Path) -> None:
    """ECREC_<FIELD>_FILE: a Docker/Kubernetes secret holds the whole value."""
    secret = tmp_path / "warehouse_url"
    secret.write_text(PG_URL + "\n")
    cfg = load_config(env={"ECREC_WAREHOUSE_URL_FILE": str(secret), "ECREC_TOP_K_FILE": ""})
    assert cfg.warehouse_url == PG_URL
    # the file is read like any ECREC_ value: typed, and explicit overrides still win
    (tmp_path / "k").write_text("42")
    assert load_config(env={"ECREC_TOP_K_FILE": str(tmp_path / "k")}).top_k == 42
    assert load_config(env={"ECREC_WAREHOUSE_URL_FILE": str(secret)},
                       warehouse_url="duckdb:///x/w.duckdb").warehouse_url == "duckdb:///x/w.duckdb"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ECREC_WAREHOUSE_URL": PG_URL, "ECREC_WAREHOUSE_URL_FILE": "{file}"},
         "both ECREC_WAREHOUSE_URL and ECREC_WAREHOUSE_URL_FILE are set"),
        ({"ECREC_WAREHOUSE_URL_FILE": "{missing}"}, "ECREC_WAREHOUSE_URL_FILE points to .* does not exist"),
        ({"ECREC_WAREHOUSE_URL_FILE": "{empty}"}, "which is empty"),
    ],
)
def test_field_file_errors(tmp_path: Path, env: dict[str, str], message: str) -> None:
    (tmp_path / "file").write_text(PG_URL)
    (tmp_path / "empty").write_text("  \n")
    paths = {"file": tmp_path / "file", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    env = {k: v.format(**paths) for k, v in env.items()}
    with pytest.raises(ConfigError, match=message) as err:
        load_config(env=env)
    assert PG_PASSWORD not in str(err.value)


def test_min_query_users_must_be_positive() -> None:
    assert EcrecConfig().min_query_users == 5
    with pytest.raises(ConfigError, match="min_query_users"):
        load_config(env={"ECREC_MIN_QUERY_USERS": "0"})
