"""Column names and value sets of every lake dataset: the single source for code and docs.

docs/data_contracts.md describes the same tables in prose; the Great Expectations
suites in ``expectations/`` and the Spark schemas in ``ecrec_lib.pipeline`` are built
from these constants, so a rename happens in exactly one place.
"""

from __future__ import annotations

# --- events ---------------------------------------------------------------------------
EVENT_TYPES = ("search", "view", "click", "add_to_cart", "purchase")
ITEM_EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")  # events that carry an item_id
DEVICES = ("desktop", "mobile", "tablet", "app")

# Raw events: gzipped JSON lines under raw/events/ds=D/. Name -> JSON type in the contract.
RAW_EVENT_FIELDS: dict[str, str] = {
    "event_id": "string",  # unique per event; trackers retry, so duplicates happen
    "event_time": "string",  # ISO-8601 with UTC offset, e.g. 2024-01-01T09:30:00+01:00
    "user_id": "string",  # the shop's account/cookie id: personal data, pseudonymized in clean
    "session_id": "string",
    "event_type": "string",  # one of EVENT_TYPES
    "item_id": "string",  # null for search
    "query": "string",  # the raw search text, for search events
    "position": "integer",  # rank of the item on the page it was shown on (nullable)
    "price": "number",  # unit price seen by the user (nullable for search)
    "quantity": "integer",  # for add_to_cart / purchase
    "device": "string",
    "country": "string",  # ISO-3166 alpha-2
    "ip": "string",  # PII: never reaches clean data
    "email": "string",  # PII: never reaches clean data
}
RAW_EVENT_REQUIRED = ("event_id", "event_time", "user_id", "session_id", "event_type")
PII_FIELDS = ("ip", "email", "user_agent", "phone", "name", "address")

# Raw catalog snapshot: gzipped JSON lines under raw/catalog/ds=D/.
RAW_CATALOG_FIELDS: dict[str, str] = {
    "item_id": "string",
    "title": "string",
    "description": "string",
    "category_path": "string",  # levels joined by " > ", e.g. "Beauty > Makeup > Nails"
    "brand": "string",
    "price": "number",
    "in_stock": "boolean",
    "created_at": "string",  # ISO-8601 with offset: when the item was first listed
}
RAW_CATALOG_REQUIRED = ("item_id", "title")  # price may be null (Amazon data has none)
CATEGORY_SEP = " > "

# --- clean (Parquet) ------------------------------------------------------------------
CLEAN_EVENT_COLUMNS = (
    "event_id",
    "event_time",  # timestamp, UTC
    "user_key",  # HMAC-SHA256(user_id) hex: the only user identifier past the clean stage
    "session_id",
    "event_type",
    "item_id",
    "query",  # normalized: NFKC, lower case, single spaces, trimmed (search only)
    "position",
    "price",
    "quantity",
    "device",
    "country",
)
CLEAN_CATALOG_COLUMNS = (
    "item_id",
    "title",
    "description",
    "category_path",
    "category",  # first level of category_path
    "brand",
    "price",
    "in_stock",
    "created_at",  # timestamp, UTC
)
# why, and the line with personal data masked (ecrec_lib.privacy.masking); the exact line is
# only in the restricted quarantine_raw zone
QUARANTINE_EXTRA_COLUMNS = ("reason", "masked_line")
# quarantine_raw/<dataset>/ds=D (restricted): the row's id in quarantine (event_id keyed /
# item_id), its reason, the exact raw bytes, and whether they are the original line or, for a
# line whose contract fields parsed, those raw fields re-serialized as JSON.
QUARANTINE_RAW_EVENT_COLUMNS = ("event_id", "user_key", "reason", "raw_line", "line_is_original")
QUARANTINE_RAW_CATALOG_COLUMNS = ("item_id", "reason", "raw_line", "line_is_original")

# Quarantine reasons (the `reason` column).
REASON_MALFORMED = "malformed_json"
REASON_MISSING_USER = "missing_user_id"
REASON_MISSING_REQUIRED = "missing_required_field"
REASON_UNKNOWN_ITEM = "unknown_item_id"
REASON_BAD_EVENT_TYPE = "invalid_event_type"
REASON_NEGATIVE_PRICE = "negative_price"
REASON_BAD_QUANTITY = "non_positive_quantity"
REASON_OUT_OF_WINDOW = "outside_ds_window"
REASON_BAD_TIME = "unparsable_event_time"
REASON_BOT = "bot_traffic"
REASON_MISSING_TITLE = "missing_title"
REASON_BAD_PRICE = "bad_price"
REASON_DUPLICATE_ITEM = "conflicting_item_id"
REASON_INVALID_UTF8 = "invalid_utf8"  # the line is not valid UTF-8 (never decoded with U+FFFD)
REASON_TOO_LONG = "field_too_long"  # the line or a string field over its contract limit
REASON_WRONG_TYPE = "wrong_type"  # a field of the wrong JSON type (e.g. a number as user_id)
REASON_BAD_TIMESTAMP = "bad_timestamp"  # a timestamp without UTC offset (never read as UTC)

# --- features (Parquet under features/<name>/ds=D/) -------------------------------------
# user_sequences: one row per user active in the lookback window.
USER_SEQUENCE_COLUMNS = (
    "user_key",
    "item_ids",  # array<string>: last max_seq_len item events, oldest first
    "event_types",  # array<string>, aligned with item_ids
    "event_times",  # array<long>: epoch seconds, aligned with item_ids
    "n_events",  # total item events of the user in the window
    "last_event_time",  # timestamp
    "country",  # most recent
    "device",  # most recent
)
ITEM_STATS_COLUMNS = (
    "item_id",
    "views",
    "clicks",
    "add_to_carts",
    "purchases",
    "ctr",  # smoothed clicks / views
    "cvr",  # smoothed purchases / clicks
    "popularity",  # exponentially time-decayed interaction count
    "trending_score",  # last day's rate vs. the window's daily mean, smoothed
)
USER_PROFILE_COLUMNS = (
    "user_key",
    "recency_days",  # days since the last event, at the end of ds
    "frequency",  # number of sessions in the window
    "monetary",  # sum of purchase price * quantity
    "category_affinity",  # map<string,double>: share of item events per top-level category
    "brand_affinity",  # map<string,double>
    "top_category",
    "price_band",  # low | mid | high (terciles of the catalog price)
    "country",
    "device",
)
SEARCH_PAIR_COLUMNS = ("query", "item_id", "clicks", "purchases", "n")
COOCCURRENCE_COLUMNS = ("item_id", "other_item_id", "count")

# --- scores (Parquet under scores/<table>/ds=D/ and warehouse tables) ------------------
USER_TOPK_COLUMNS = (
    "ds", "user_key", "rank", "item_id", "score", "reason_item_id", "strategy", "model_version",
)
ITEM_RELATED_COLUMNS = ("ds", "item_id", "rank", "related_item_id", "score")
QUERY_TOPK_COLUMNS = ("ds", "query", "rank", "item_id", "score")
TRENDING_COLUMNS = ("ds", "segment", "rank", "item_id", "score")
