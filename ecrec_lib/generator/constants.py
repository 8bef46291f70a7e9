"""Behavioural constants of the synthetic shop, in one place so docs and tests can cite them.

Rates are per event of the previous funnel stage unless said otherwise.
"""

from __future__ import annotations

# --- funnel (search -> view -> click -> add_to_cart -> purchase) ------------------------
P_SEARCH_SESSION = 0.55  # share of sessions that start with a search (the rest browse)
MEAN_VIEWS_PER_SESSION = 5.0  # 1 + Poisson(MEAN - 1) item impressions per session
CLICK_PER_VIEW = 0.30  # P(click | view)
ADD_TO_CART_PER_CLICK = 0.20  # P(add_to_cart | click)
PURCHASE_PER_ADD_TO_CART = 0.40  # P(purchase | add_to_cart)
QUANTITY_TWO = 0.12  # P(quantity >= 2) for add_to_cart / purchase
QUANTITY_THREE = 0.03  # P(quantity == 3)

# Where a view's item comes from (the rest: global popularity, i.e. exploration).
P_VIEW_SUBCATEGORY = 0.65  # the session's subcategory (brand/price/noun-conditioned pools)
P_VIEW_CATEGORY = 0.25  # anywhere in the session's top-level category
P_POOL_BRAND = 0.35  # within a subcategory: the user's preferred brand of that category
P_POOL_TIER = 0.30  # within a subcategory: the user's price tier
P_SEARCH_NOUN_POOL = 0.5  # search sessions: views matching the query's noun
# Query shapes (ecrec_lib.generator.sessions._query): bare noun, adjective + noun, brand + noun,
# material + noun, noun + variant, subcategory name. Broad queries dominate real search logs;
# they are the head queries that enough distinct users issue to be published (min_query_users).
QUERY_TEMPLATE_WEIGHTS = (0.25, 0.08, 0.08, 0.08, 0.06, 0.45)

# --- popularity and catalog --------------------------------------------------------------
ZIPF_EXPONENT = 1.0  # item weight = rank ** -ZIPF_EXPONENT over a random global ranking
BRAND_ZIPF_EXPONENT = 0.8  # how unevenly a category's items spread over its brands
PRICE_SIGMA = 0.35  # log-normal noise of an item's price around its subcategory/brand level
OUT_OF_STOCK_RATE = 0.06  # share of items flagged in_stock=false on a given day
OUT_OF_STOCK_WEIGHT = 0.2  # out-of-stock items are shown this much less often
NEW_ITEMS_PER_DAY = 0.01  # x items: listed each day (created_at = that day), cold start
NEW_USERS_PER_DAY = 0.02  # x users: first seen each day, each with >= 1 session that day
MAX_NEW_SHARE = 0.5  # never more than this share of users/items arrive after the start

# --- users -----------------------------------------------------------------------------
SESSIONS_PER_USER_PER_DAY = 0.3  # default volume: sessions/day = eligible users x this
ACTIVITY_SIGMA = 0.8  # log-normal spread of per-user activity
FAVORITE_CATEGORY_MASS = 0.85  # weight on a user's 1-3 planted favorite categories
PREF_DRIFT_PER_DAY = 0.02  # daily blend of preferences towards a random category
PRICE_TIER_PROBS = (0.35, 0.40, 0.25)  # low / mid / high
MAIN_DEVICE_SHARE = 0.85
DEVICE_WEIGHTS = (0.35, 0.45, 0.08, 0.12)  # aligned with schema.DEVICES
EMAIL_SHARE = 0.6  # logged-in users: their events carry an email (PII)
# Sessions by UTC hour of the day (relative weights).
HOURLY_WEIGHTS = (
    2, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 8, 9, 9, 8, 8, 8, 9, 10, 11, 11, 9, 6, 4,
)

# --- dirt (--dirty-rate r) ---------------------------------------------------------------
# Each event kind hits about r x (the day's generated events), on disjoint events.
EVENT_DIRT_KINDS = (
    "duplicate_event_id",  # the exact line re-sent later in the file
    "malformed_json",  # line truncated mid-record
    "unknown_item_id",  # item event whose item_id is in no catalog
    "missing_user_id",  # user_id null (half) or absent (half)
    "other_utc_offset",  # same instant written in another UTC offset: valid, normalize it
    "out_of_window_time",  # event_time shifted 2-30 days into the future (60%) or the past
    "negative_price",  # item event with price < 0
    "extra_pii_fields",  # user_agent, phone, name, address added to the record
)
BOT_KIND = "bot_events"  # extra events from bot users, ~r x events (at least BOT_MIN_EVENTS)
BOT_MIN_EVENTS = 150
BOT_EVENTS_PER_BOT = 400
BOT_EVENTS_PER_MINUTE = (200, 600)  # a bot's firing rate is uniform in this range
CATALOG_DIRT_KINDS = (
    "missing_title",  # title null or empty
    "negative_price",  # price < 0
    "conflicting_duplicate",  # a second row with the same item_id and different content
)
# Catalog dirt: max(1, Binomial(rows, r)) rows per kind and snapshot when r > 0.
