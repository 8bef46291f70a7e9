"""ecrec_lib.privacy.secrets: one redaction for URLs, text, configs and logs; secrets from files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ecrec_lib.privacy.secrets import (
    REDACTED,
    RedactingFormatter,
    SecretError,
    redact,
    redact_text,
    redact_url,
    secret_from_env,
)

PW = "S3cr3t-pw"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"postgresql://ecrec:{PW}@db:5432/warehouse", "postgresql://ecrec:***@db:5432/warehouse"),
        (f"postgresql+psycopg://ecrec:{PW}@db/airflow", "postgresql+psycopg://ecrec:***@db/airflow"),
        # a password holding '@' and '/' (not percent-encoded) is still cut at the last '@'
        ("postgresql://u:p@ss/w0rd@db/w", "postgresql://u:***@db/w"),
        (f"https://mlflow:5000/api?token={PW}&x=1", "https://mlflow:5000/api?token=***&x=1"),
        (f"postgresql://db/w?user=u&password={PW}&sslmode=require",
         "postgresql://db/w?user=u&password=***&sslmode=require"),
        (f"s3://bucket/p?X-Amz-Signature={PW}&X-Amz-Credential=AK", "s3://bucket/p?X-Amz-Signature=***&X-Amz-Credential=***"),
        # nothing secret: unchanged
        ("postgresql://ecrec@db:5432/warehouse", "postgresql://ecrec@db:5432/warehouse"),
        ("duckdb:///./warehouse/warehouse.duckdb", "duckdb:///./warehouse/warehouse.duckdb"),
        ("sqlite:///./mlruns/mlflow.db", "sqlite:///./mlruns/mlflow.db"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("./lake", "./lake"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert redact_text(f"connecting to '{url}' now") == f"connecting to '{expected}' now"


def test_redact_text_finds_credentials_outside_urls() -> None:
    text = (f"conninfo host=db password={PW} user=u; Authorization: Bearer {PW}abcdef; "
            f"{{'warehouse_url': 'postgresql://u:{PW}@h/d', 'api_key': '{PW}'}}")
    out = redact_text(text)
    assert PW not in out
    assert "host=db" in out and "user=u" in out and "postgresql://u:***@h/d" in out
    assert redact_text("tokenizer=bert lookback_days: 30") == "tokenizer=bert lookback_days: 30"


def test_redact_walks_mappings_and_masks_secret_keys() -> None:
    value = {"warehouse_url": f"postgresql://u:{PW}@h/d", "db_password": PW, "nested": [f"http://x:{PW}@h",
             {"token": PW}], "top_k": 100, "tokenizer_path": "/m", "empty_secret": ""}
    out = redact(value)
    assert PW not in repr(out)
    assert out["top_k"] == 100 and out["tokenizer_path"] == "/m" and out["empty_secret"] == ""
    assert out["db_password"] == REDACTED and out["nested"][1]["token"] == REDACTED
    assert value["db_password"] == PW  # the input is not mutated


def test_formatter_redacts_message_args_and_traceback() -> None:
    fmt = RedactingFormatter("%(levelname)s %(message)s")
    try:
        raise RuntimeError(f"cannot reach postgresql://u:{PW}@db/w")
    except RuntimeError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "config: %s",
                               ({"url": f"http://u:{PW}@h"},), exc_info)
    out = fmt.format(record)
    assert PW not in out
    assert "http://u:***@h" in out and "postgresql://u:***@db/w" in out and "Traceback" in out


def test_secret_from_env_and_file(tmp_path: Path) -> None:
    f = tmp_path / "s"
    f.write_text(f"{PW}\n")
    assert secret_from_env("X_SECRET", {"X_SECRET": PW}) == PW
    assert secret_from_env("X_SECRET", {"X_SECRET_FILE": str(f)}) == PW
    assert secret_from_env("X_SECRET", {}) == ""
    with pytest.raises(SecretError, match="both X_SECRET and X_SECRET_FILE") as err:
        secret_from_env("X_SECRET", {"X_SECRET": PW, "X_SECRET_FILE": str(f)})
    assert PW not in str(err.value)
    with pytest.raises(SecretError, match="does not exist"):
        secret_from_env("X_SECRET", {"X_SECRET_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="empty"):
        secret_from_env("X_SECRET", {"X_SECRET_FILE": str(tmp_path / "empty")})


def test_job_logging_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs.common import setup_logging

    setup_logging()
    try:
        logging.getLogger("jobs.test").info("config: %s", {"warehouse_url": f"postgresql://u:{PW}@h/d"})
        err = capsys.readouterr().err
        assert "postgresql://u:***@h/d" in err and PW not in err
    finally:
        logging.basicConfig(force=True)


def test_task_log_and_failure_of_a_job_hold_no_password(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """run_job streams a job's output into the Airflow task log: a flag or a line carrying a
    password must reach neither the log nor the JobFailed message."""
    from ecrec_lib.orchestration import JobFailed, run_job

    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/sh\necho "ERROR cannot connect to $6"\nexit 1\n')
    fake_python.chmod(0o755)
    url = f"postgresql://ecrec:{PW}@db:5432/warehouse"
    with caplog.at_level(logging.INFO), pytest.raises(JobFailed) as err:
        run_job("publish_scores", "2024-01-01", python=str(fake_python), warehouse_url=url,
                logger=logging.getLogger("task"))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "cannot connect to postgresql://ecrec:***@db:5432/warehouse" in logged
    assert PW not in logged and PW not in str(err.value)
    assert "--warehouse-url postgresql://ecrec:***@db" in str(err.value)


@pytest.mark.parametrize(
    ("query", "kind"),
    [
        ("nail polish", None), ("iphone 15 pro 256gb", None), ("55 inch tv 2024", None),
        ("jane.doe@example.com", "email"), ("mail me at a.b@shop.co.uk", "email"),
        ("10.0.0.12", "ip"), ("+49 171 2345678", "phone"), ("(030) 123-4567", "phone"),
        ("4111 1111 1111 1111", "card"), ("4111-1111-1111-1111", "card"),
    ],
)
def test_query_pii_kind(query: str, kind: str | None) -> None:
    from ecrec_lib.privacy.queries import hold_back_reason, query_pii_kind

    assert query_pii_kind(query) == kind
    assert hold_back_reason(query, 100, 5) == (f"pii_{kind}" if kind else None)
    assert hold_back_reason(query, 4, 5) == (f"pii_{kind}" if kind else "below_k")


def test_spark_jobs_authenticate_when_a_secret_is_set(tmp_path: Path) -> None:
    from jobs.common import SPARK_AUTH_SECRET_ENV, spark_auth_conf

    assert spark_auth_conf({}) == {}
    f = tmp_path / "spark_secret"
    f.write_text(PW)
    for env in ({SPARK_AUTH_SECRET_ENV: PW}, {f"{SPARK_AUTH_SECRET_ENV}_FILE": str(f)}):
        assert spark_auth_conf(env) == {"spark.authenticate": "true", "spark.authenticate.secret": PW}
