"""Which search queries may leave the clean zone: k-anonymous ones not shaped like personal data.

A query is published (``features/search_pairs``, ``scores/query_topk`` and the warehouse) only
when at least ``min_query_users`` distinct users issued it in the window, and never when it
looks like an email address, an IP address, a phone number or a card number (people paste
them into search boxes). The patterns are plain strings valid in both Python ``re`` and Java
regex, so the Spark feature job (``rlike``/``regexp_extract``) and the pandas scoring job
classify a query identically (:func:`query_pii_kind` is the reference).

The PII masking of the clean/quarantine stage (``ecrec_lib.privacy.masking``) recognises the
same shapes; when both are present, keep one set of patterns.
"""

from __future__ import annotations

import re

# user@host.tld, anywhere in the query.
EMAIL_PATTERN = r"[^\s@]+@[^\s@]+\.[A-Za-z]{2,}"
# Dotted quad, not part of a longer run of digits and dots.
IPV4_PATTERN = r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"
# Seven or more digits, optionally separated by spaces, dots, dashes, slashes or brackets, with
# an optional leading '+': phone numbers (7-12 digits) and card numbers (13 or more). A product
# code of that length is held back too: a search log cannot tell it from a phone number.
LONG_NUMBER_PATTERN = r"\+?\d(?:[\s().\-/]*\d){6,}"
CARD_MIN_DIGITS = 13  # payment card numbers have 13-19 digits; phone numbers (E.164) up to 15

PII_KINDS = ("email", "ip", "card", "phone")

_EMAIL = re.compile(EMAIL_PATTERN)
_IPV4 = re.compile(IPV4_PATTERN)
_LONG_NUMBER = re.compile(LONG_NUMBER_PATTERN)


def query_pii_kind(query: str) -> str | None:
    """``"email"``, ``"ip"``, ``"card"`` or ``"phone"`` when ``query`` holds something of that
    shape (first match in that order), else None."""
    if _EMAIL.search(query):
        return "email"
    if _IPV4.search(query):
        return "ip"
    m = _LONG_NUMBER.search(query)
    if m:
        return "card" if sum(c.isdigit() for c in m.group(0)) >= CARD_MIN_DIGITS else "phone"
    return None


def hold_back_reason(query: str, n_users: int, min_users: int) -> str | None:
    """Why ``query`` (issued by ``n_users`` distinct users) must not be published, or None:
    ``"pii_<kind>"`` for a PII-shaped query, ``"below_k"`` under ``min_users`` users."""
    kind = query_pii_kind(query)
    if kind is not None:
        return f"pii_{kind}"
    if n_users < min_users:
        return "below_k"
    return None


__all__ = [
    "CARD_MIN_DIGITS",
    "EMAIL_PATTERN",
    "IPV4_PATTERN",
    "LONG_NUMBER_PATTERN",
    "PII_KINDS",
    "hold_back_reason",
    "query_pii_kind",
]
