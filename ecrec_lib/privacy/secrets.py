"""Secrets stay in their store: the one redaction every log line, error and MLflow record uses.

Credentials ride inside URL-shaped config values (``postgresql://user:PASSWORD@host/db``,
``https://host/x?token=T``, libpq ``password=P``). :func:`redact_text` finds them in any text
and replaces the secret part with ``***``; :func:`redact` walks dicts and lists (a config, MLflow
params, a model card's table) and also masks whole values whose key names a secret
(``*_password``, ``*_token`` ...). Everything that logs a config or a URL, sends one to MLflow or
puts one in an error message goes through these functions:

* ``EcrecConfig.to_dict()`` / ``repr`` and ``ConfigError`` messages (``ecrec_lib.config``);
* job logs (:class:`RedactingFormatter`, installed by ``jobs.common.setup_logging``) and the
  lines a job streams into the Airflow task log (``ecrec_lib.orchestration``);
* MLflow params, tags and JSON artifacts (``ecrec_lib.tracking``), model cards
  (``ecrec_lib.model_card``) and warehouse connection errors (``ecrec_lib.warehouse.backend``).

User names (``postgresql://ecrec@host``) are kept: they are not secrets and they help read an
error. A secret passed as a bare user name (``https://TOKEN@host``) is not recognised: give
tokens as the password or a ``?token=`` parameter.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REDACTED = "***"

# A URL in free text: scheme://, then everything up to whitespace or a quote/bracket that
# usually ends it in a log line or a repr.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")
# Query parameter or key=value names that hold a secret (case-insensitive, part of a name).
_SECRET_NAME = re.compile(
    r"pass|pwd|secret|token(?!iz)|api_?key|access_?key|credential|signature|(^|[_\-.])sig$|auth",
    re.IGNORECASE,
)
# Config/dict keys whose whole value is a secret.
_SECRET_KEY = re.compile(r"password|passwd|secret|token(?!iz)|credential|api_?key", re.IGNORECASE)
# libpq/ODBC style ``password=...`` and ``token: ...`` outside URLs.
_KV = re.compile(
    r"(?P<key>\b[\w.\-]*(?:password|passwd|pwd|secret|token(?!iz)|api_?key)[\w.\-]*)"
    r"(?P<sep>['\"]?\s*[=:]\s*)(?P<val>\"[^\"]*\"|'[^']*'|[^\s,;&'\"]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{8,}")


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        if eq and value and _SECRET_NAME.search(name):
            value = REDACTED
        parts.append(f"{name}{eq}{value}")
    return "&".join(parts)


def redact_url(url: str) -> str:
    """``url`` with the password of its user info and secret query parameters replaced by ``***``.

    The user info ends at the last ``@`` before the query (a password may hold ``@``); only its
    part after the first ``:`` is a password. Text that is not a URL comes back unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    head, tail = rest[:cut], rest[cut:]
    at = head.rfind("@")
    if at >= 0:
        user, colon, password = head[:at].partition(":")
        if colon and password:
            head = f"{user}:{REDACTED}{head[at:]}"
    if tail.startswith("?"):
        query, hash_, frag = tail[1:].partition("#")
        tail = "?" + _redact_query(query) + hash_ + frag
    return f"{scheme}://{head}{tail}"


def redact_text(text: str) -> str:
    """``text`` with every credential it carries replaced by ``***``: URL passwords and secret
    query parameters, ``password=...``-style pairs and ``Bearer``/``Basic`` tokens."""
    if not text:
        return text
    out = _URL.sub(lambda m: redact_url(m.group(0)), text)
    out = _KV.sub(lambda m: f"{m.group('key')}{m.group('sep')}{REDACTED}", out)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", out)


def is_secret_key(name: str) -> bool:
    """Whether a config/dict key names a value that is a secret as a whole."""
    return bool(_SECRET_KEY.search(name))


def redact(value: Any) -> Any:
    """A copy of ``value`` safe to log or send to MLflow: strings through :func:`redact_text`,
    mappings and sequences walked, values of secret-named keys masked whole."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if is_secret_key(str(k)) and value[k] not in (None, "")
                    else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


class SecretError(ValueError):
    """A secret's environment variable or file is wrong; the message names it, never the value."""


def secret_from_env(name: str, env: Mapping[str, str] | None = None) -> str:
    """The secret in ``$name`` or in the file named by ``$name_FILE`` (a Docker/Kubernetes
    secret); "" when neither is set. Setting both is refused: which one wins would be a guess."""
    env = os.environ if env is None else env
    value, file_var = env.get(name, ""), f"{name}_FILE"
    if value and env.get(file_var):
        raise SecretError(f"both {name} and {file_var} are set; set only one of them")
    if value or not env.get(file_var):
        return value
    path = Path(env[file_var])
    if not path.is_file():
        raise SecretError(f"{file_var} points to {path}, which does not exist")
    value = path.read_text().strip()
    if not value:
        raise SecretError(f"{file_var} points to {path}, which is empty")
    return value


class RedactingFormatter(logging.Formatter):
    """A log formatter whose output (message, arguments and traceback) holds no credential."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


__all__ = ["REDACTED", "RedactingFormatter", "SecretError", "is_secret_key", "redact", "redact_text",
           "redact_url", "secret_from_env"]
