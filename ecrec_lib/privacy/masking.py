"""Masking of personal data in free text and raw JSON lines: one rule, two implementations.

:func:`mask_text_py` / :func:`mask_line_py` are the plain-Python reference;
:func:`mask_text_col` / :func:`mask_line_col` apply the same regular expressions as Spark
column expressions (``regexp_replace``: no Python worker, no extra pass), used by the clean
stage on free text (search queries) and on the lines kept in ``quarantine/``. Every pattern
is written in the subset where Python's ``re`` and Java's ``java.util.regex`` agree (ASCII
classes spelled out, no ``\\d``/``\\s``), and a parity test runs both on the same inputs.

Two steps, in this order:

1. **Patterns** (anywhere in the text): e-mail addresses -> ``<email>``, IPv4 and IPv6
   addresses -> ``<ip>``, card-number-like runs of 13-19 digits -> ``<card>``, phone numbers
   (8-15 digits with optional ``+``, spaces, dots, dashes, parentheses) -> ``<phone>``. ISO
   dates and times are left alone.
2. **JSON fields** (lines only): the value of ``"user_id"``, ``"session_id"`` and
   ``"event_id"`` becomes the caller's keyed pseudonym (or ``<user_id>`` ... when it has none),
   the value of every ``schema.PII_FIELDS`` key becomes ``<redacted>``, whatever its JSON type,
   also in a truncated line. Patterns run first so they never cut into a pseudonym.

Over-masking (a product number that looks like a phone number) is the accepted price: masked
text is for people reading quarantine and reports, the exact line stays in ``quarantine_raw/``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ecrec_lib.schema import PII_FIELDS

if TYPE_CHECKING:
    from pyspark.sql import Column

_HEX = "[0-9A-Fa-f]"
_WS = "[ \\t\\r\\n]*"  # JSON whitespace (Python's \s is wider than Java's)

# (name, pattern, replacement token), applied in this order.
PATTERNS: tuple[tuple[str, str, str], ...] = (
    # a local part only from the start of its run, possessive: linear on a 200,000-letter word
    # (a plain [..]+@ retries from every position of the run: quadratic)
    ("email", "(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]++@[A-Za-z0-9-]++(?:\\.[A-Za-z0-9-]++)++",
     "<email>"),
    ("ipv4", "(?<![0-9.])(?:[0-9]{1,3}\\.){3}[0-9]{1,3}(?![0-9])(?!\\.[0-9])", "<ip>"),
    # full 8-group form, or any form with "::"; not inside a word (std::vector stays)
    ("ipv6", f"(?<![0-9A-Za-z:])(?:(?:{_HEX}{{1,4}}:){{7}}{_HEX}{{1,4}}"
             f"|(?:{_HEX}{{1,4}}:){{0,6}}{_HEX}{{0,4}}::(?:{_HEX}{{1,4}}:){{0,6}}{_HEX}{{0,4}})"
             "(?![0-9A-Za-z:])", "<ip>"),
    ("card", "(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])", "<card>"),
    # not inside an alphanumeric id or a time (10:00 2024...), never from an ISO date on
    ("phone", "(?<![0-9A-Za-z+])(?<![0-9]:)(?![0-9]{4}-[0-9]{2}-[0-9]{2})"
              "\\+?[0-9](?:[ ().-]{0,2}[0-9]){7,14}"
              "(?![0-9A-Za-z])", "<phone>"),
)
PSEUDONYM_FIELDS = ("user_id", "session_id", "event_id")  # replaced by keyed pseudonyms
REDACTED = "<redacted>"
# A JSON value: a string (its closing quote optional: truncated lines), a flat object or
# array (a deeper one is cut at its first inner close, every scalar in it still goes), or any
# bare token (number, literal) up to the next separator.
# Unrolled and possessive ("[^"\\]*+(?:\\.[^"\\]*+)*+): an alternation inside a star recurses
# once per character in Java's engine and overflows the stack on a long string.
_VALUE = ('(?:"[^"\\\\]*+(?:\\\\.[^"\\\\]*+)*+"?|\\{[^{}]*+\\}?|\\[[^\\[\\]]*+\\]?'
          '|[^,}\\]]*+)')


def field_pattern(names: tuple[str, ...]) -> str:
    """``"name": value`` for any of ``names`` as a top-level-looking JSON member (a key inside
    a string value is escaped, ``\\"name\\"``, and never matches)."""
    alt = "|".join(re.escape(n) for n in names)
    return f'(?<!\\\\)"({alt})"{_WS}:{_WS}{_VALUE}'


_PII_PATTERN = field_pattern(PII_FIELDS)
_COMPILED = tuple((re.compile(p), token) for _, p, token in PATTERNS)
_PII_RE = re.compile(_PII_PATTERN)
_FIELD_RE = {name: re.compile(field_pattern((name,))) for name in PSEUDONYM_FIELDS}


def _token(name: str) -> str:
    return f"<{name}>"


def mask_text_py(text: str | None) -> str | None:
    """Reference: ``text`` with e-mails, IPs, card numbers and phone numbers replaced."""
    if text is None:
        return None
    for regex, token in _COMPILED:
        text = regex.sub(token, text)
    return text


def mask_line_py(line: str | None, pseudonyms: Mapping[str, str | None] | None = None) -> str | None:
    """Reference: a raw JSON line (valid or not) with patterns masked, PII fields redacted and
    ``user_id`` / ``session_id`` / ``event_id`` values replaced by ``pseudonyms[name]``
    (``<name>`` when absent or None)."""
    if line is None:
        return None
    pseudonyms = pseudonyms or {}
    out = mask_text_py(line)
    assert out is not None
    out = _PII_RE.sub(lambda m: f'"{m.group(1)}":"{REDACTED}"', out)
    for name in PSEUDONYM_FIELDS:
        value = pseudonyms.get(name) or _token(name)
        out = _FIELD_RE[name].sub(lambda _m, n=name, v=value: f'"{n}":"{v}"', out)
    return out


def mask_text_col(col: Column | str) -> Column:
    """Spark twin of :func:`mask_text_py` (null stays null)."""
    from pyspark.sql import functions as F

    out = F.col(col) if isinstance(col, str) else col
    for _, pattern, token in PATTERNS:
        out = F.regexp_replace(out, pattern, token)
    return out


def mask_line_col(line: Column | str, pseudonyms: Mapping[str, Column] | None = None) -> Column:
    """Spark twin of :func:`mask_line_py`; ``pseudonyms`` maps a field of
    :data:`PSEUDONYM_FIELDS` to a (nullable) column holding its keyed pseudonym."""
    from pyspark.sql import functions as F

    pseudonyms = pseudonyms or {}
    # a raw line may hold invalid UTF-8 (quarantined as invalid_utf8): U+FFFD for those bytes
    # here, so the masked text is always valid (the exact bytes are kept in quarantine_raw)
    out = mask_text_col(F.make_valid_utf8(F.col(line) if isinstance(line, str) else line))
    # Java's replacement syntax: $1 is the group (Python's \1); the tokens hold no $ or \.
    out = F.regexp_replace(out, _PII_PATTERN, f'"$1":"{REDACTED}"')
    for name in PSEUDONYM_FIELDS:
        given = pseudonyms.get(name)
        value = F.lit(_token(name)) if given is None else F.coalesce(given, F.lit(_token(name)))
        # a pseudonym is hex: nothing in it is special to Java's replacement syntax
        out = F.regexp_replace(out, F.lit(field_pattern((name,))),
                               F.concat(F.lit(f'"{name}":"'), value, F.lit('"')))
    return out
