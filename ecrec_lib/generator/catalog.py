"""The synthetic catalog: items with category, brand, price, text and a listing date."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ecrec_lib.generator import constants as K
from ecrec_lib.generator.vocab import CATEGORIES, VARIANTS
from ecrec_lib.schema import CATEGORY_SEP

DAY = 86_400
N_CATEGORIES = len(CATEGORIES)
SUBCATS: tuple[tuple[int, int], ...] = tuple(
    (ci, si) for ci, cat in enumerate(CATEGORIES) for si in range(len(cat.subcategories))
)
N_SUBCATS = len(SUBCATS)
MAX_BRANDS = max(len(c.brands) for c in CATEGORIES)
MAX_NOUNS = max(len(c.subcategories[s].nouns) for c, s in ((CATEGORIES[a], b) for a, b in SUBCATS))


def item_id(index: int) -> str:
    return f"P{index:07d}"


@dataclass
class Catalog:
    """All items of the whole run (column arrays indexed by item number)."""

    ids: list[str]
    cat: np.ndarray  # top-level category index
    sub: np.ndarray  # global subcategory index into SUBCATS
    brand: np.ndarray  # brand index within the category
    adj: np.ndarray
    mat: np.ndarray
    noun: np.ndarray  # noun index within the subcategory
    variant: np.ndarray
    price: np.ndarray  # float, two decimals (x.99)
    tier: np.ndarray  # 0/1/2: price tercile within the subcategory
    created_ts: np.ndarray  # epoch seconds
    created_day: np.ndarray  # day index relative to the start (negative: before)
    popularity: np.ndarray  # Zipf weight
    titles: list[str]
    descriptions: list[str]
    category_weights: np.ndarray  # how big each top-level category is (sums to 1)

    def __len__(self) -> int:
        return len(self.ids)

    def category_path(self, i: int) -> str:
        ci, si = SUBCATS[int(self.sub[i])]
        return CATEGORIES[ci].name + CATEGORY_SEP + CATEGORIES[ci].subcategories[si].name

    def brand_name(self, i: int) -> str:
        return CATEGORIES[int(self.cat[i])].brands[int(self.brand[i])]

    def noun_word(self, i: int) -> str:
        ci, si = SUBCATS[int(self.sub[i])]
        return CATEGORIES[ci].subcategories[si].nouns[int(self.noun[i])]


def new_items_per_day(items: int, days: int) -> int:
    per_day = int(round(items * K.NEW_ITEMS_PER_DAY))
    return min(per_day, int(items * K.MAX_NEW_SHARE) // max(days, 1))


def build_catalog(rng: np.random.Generator, items: int, days: int, start_ts: int) -> Catalog:
    """Draw ``items`` items: most listed before the start, a few more on every day."""
    if items < N_SUBCATS:
        raise ValueError(f"--items must be at least {N_SUBCATS} (one per subcategory), got {items}")
    per_day = new_items_per_day(items, days)
    n_initial = items - per_day * days
    created_day = np.concatenate(
        [-rng.integers(1, 366, n_initial), np.repeat(np.arange(days), per_day)]
    ).astype(np.int64)
    created_ts = start_ts + created_day * DAY + rng.integers(0, DAY, items)

    cat_weights = rng.dirichlet(np.full(N_CATEGORIES, 4.0))
    # Every subcategory gets at least one item so every pool is non-empty.
    sub = np.concatenate(
        [np.arange(N_SUBCATS), _draw_subcats(rng, cat_weights, items - N_SUBCATS)]
    )
    sub = sub[rng.permutation(items)]
    cat = np.array([SUBCATS[s][0] for s in range(N_SUBCATS)])[sub]

    n_brands = np.array([len(c.brands) for c in CATEGORIES])
    brand_rank_w = np.arange(1, MAX_BRANDS + 1, dtype=float) ** -K.BRAND_ZIPF_EXPONENT
    brand = np.empty(items, dtype=np.int64)
    for ci in range(N_CATEGORIES):
        mask = cat == ci
        w = brand_rank_w[: n_brands[ci]] / brand_rank_w[: n_brands[ci]].sum()
        brand[mask] = rng.choice(n_brands[ci], size=int(mask.sum()), p=w)
    adj = _uniform_index(rng, cat, [len(c.adjectives) for c in CATEGORIES])
    mat = _uniform_index(rng, cat, [len(c.materials) for c in CATEGORIES])
    n_nouns = [len(CATEGORIES[a].subcategories[b].nouns) for a, b in SUBCATS]
    noun = _uniform_index(rng, sub, n_nouns)
    variant = rng.integers(0, len(VARIANTS), items)

    base = np.array([CATEGORIES[a].subcategories[b].base_price for a, b in SUBCATS])
    brand_factor = rng.lognormal(0.0, 0.3, (N_CATEGORIES, MAX_BRANDS))
    raw_price = base[sub] * brand_factor[cat, brand] * rng.lognormal(0.0, K.PRICE_SIGMA, items)
    price = np.maximum(np.floor(raw_price), 0.0) + 0.99
    tier = np.zeros(items, dtype=np.int64)
    for s in range(N_SUBCATS):
        mask = sub == s
        lo, hi = np.quantile(price[mask], [1 / 3, 2 / 3])
        tier[mask] = (price[mask] > lo).astype(int) + (price[mask] > hi).astype(int)

    popularity = (rng.permutation(items) + 1.0) ** -K.ZIPF_EXPONENT
    with_material = rng.random(items) < 0.7
    uses = _uniform_index(rng, cat, [len(c.uses) for c in CATEGORIES])
    titles, descriptions = [], []
    for i in range(items):
        c = CATEGORIES[cat[i]]
        ci, si = SUBCATS[sub[i]]
        sc = c.subcategories[si]
        noun_w = sc.nouns[noun[i]]
        material = c.materials[mat[i]]
        words = [c.brands[brand[i]], c.adjectives[adj[i]].title()]
        if with_material[i]:
            words.append(material.title())
        words.append(noun_w.title())
        titles.append(" ".join(words) + ", " + VARIANTS[variant[i]].title())
        descriptions.append(
            f"{c.adjectives[adj[i]].capitalize()} {noun_w} by {c.brands[brand[i]]}, made of "
            f"{material}. Ideal for {c.uses[uses[i]]}. Part of our {sc.name.lower()} range."
        )
    return Catalog(
        ids=[item_id(i) for i in range(items)],
        cat=cat, sub=sub, brand=brand, adj=adj, mat=mat, noun=noun, variant=variant,
        price=price, tier=tier, created_ts=created_ts, created_day=created_day,
        popularity=popularity, titles=titles, descriptions=descriptions,
        category_weights=cat_weights,
    )


def _draw_subcats(rng: np.random.Generator, cat_weights: np.ndarray, n: int) -> np.ndarray:
    sub_w = np.array([cat_weights[a] / len(CATEGORIES[a].subcategories) for a, _ in SUBCATS])
    return rng.choice(N_SUBCATS, size=n, p=sub_w / sub_w.sum())


def _uniform_index(rng: np.random.Generator, group: np.ndarray, sizes: list[int]) -> np.ndarray:
    """A uniform index into a per-group list whose length is ``sizes[group]``."""
    return np.floor(rng.random(len(group)) * np.asarray(sizes)[group]).astype(np.int64)


def iso_utc(ts: np.ndarray) -> list[str]:
    """Epoch seconds -> ``YYYY-MM-DDTHH:MM:SS+00:00`` strings."""
    text = np.datetime_as_string(np.asarray(ts, dtype="datetime64[s]"), unit="s")
    return [t + "+00:00" for t in text.tolist()]


@dataclass
class CatalogJson:
    """Per-item JSON fragments, encoded once and reused by every snapshot and event."""

    id_json: list[str]  # '"P0000001"'
    price_json: list[str]  # '12.99'
    row_prefix: list[str]  # '{"item_id":...,"price":12.99,' without in_stock/created_at
    created_json: list[str]


def encode_catalog(catalog: Catalog) -> CatalogJson:
    id_json = [json.dumps(i) for i in catalog.ids]
    price_json = [f"{p:.2f}" for p in catalog.price.tolist()]
    prefix = []
    for i in range(len(catalog)):
        prefix.append(
            f'{{"item_id":{id_json[i]},"title":{json.dumps(catalog.titles[i])},'
            f'"description":{json.dumps(catalog.descriptions[i])},'
            f'"category_path":{json.dumps(catalog.category_path(i))},'
            f'"brand":{json.dumps(catalog.brand_name(i))},"price":{price_json[i]},'
        )
    created = [json.dumps(t) for t in iso_utc(catalog.created_ts)]
    return CatalogJson(id_json, price_json, prefix, created)


def snapshot_lines(
    catalog: Catalog,
    enc: CatalogJson,
    day: int,
    in_stock: np.ndarray,
    rng: np.random.Generator,
    dirty_rate: float,
) -> tuple[list[str], dict[str, int]]:
    """JSON lines of the catalog snapshot of ``day``: every item listed up to that day."""
    listed = np.flatnonzero(catalog.created_day <= day)
    lines = [
        f'{enc.row_prefix[i]}"in_stock":{"true" if in_stock[i] else "false"},'
        f'"created_at":{enc.created_json[i]}}}'
        for i in listed.tolist()
    ]
    dirt = {k: 0 for k in K.CATALOG_DIRT_KINDS}
    if dirty_rate <= 0:
        return lines, dirt
    n = len(lines)
    taken = np.zeros(n, dtype=bool)
    picks = {}
    for kind in K.CATALOG_DIRT_KINDS:
        count = min(max(1, int(rng.binomial(n, dirty_rate))), int((~taken).sum()))
        chosen = np.sort(rng.choice(np.flatnonzero(~taken), size=count, replace=False))
        taken[chosen] = True
        picks[kind] = chosen
        dirt[kind] = count
    for j in picks["missing_title"].tolist():
        i = int(listed[j])
        empty = "null" if j % 2 else '""'
        lines[j] = lines[j].replace(f'"title":{json.dumps(catalog.titles[i])}', f'"title":{empty}', 1)
    for j in picks["negative_price"].tolist():
        i = int(listed[j])
        lines[j] = lines[j].replace(f'"price":{enc.price_json[i]},', f'"price":-{enc.price_json[i]},', 1)
    extra = []
    for j in picks["conflicting_duplicate"].tolist():
        i = int(listed[j])
        other = f"{catalog.price[i] * 1.5 + 1:.2f}"
        extra.append(
            lines[j]
            .replace(f'"price":{enc.price_json[i]},', f'"price":{other},', 1)
            .replace('"title":"', '"title":"NEW ', 1)
        )
    # A re-sent row lands later in the feed, so the last row is not always the right one.
    lines.extend(extra)
    return lines, dirt
