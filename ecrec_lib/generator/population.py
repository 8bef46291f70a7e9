"""Synthetic users: latent category / brand / price preferences that drift slowly."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ecrec_lib.generator import constants as K
from ecrec_lib.generator.catalog import MAX_BRANDS, N_CATEGORIES
from ecrec_lib.generator.vocab import CATEGORIES, COUNTRIES, COUNTRY_WEIGHTS, FIRST_NAMES
from ecrec_lib.schema import DEVICES


def user_id(index: int) -> str:
    return f"U{index:07d}"


@dataclass
class Population:
    ids: list[str]
    first_day: np.ndarray  # day index of the first session; -1: existing before the start
    activity: np.ndarray  # relative session rate
    cat_weights: np.ndarray  # (users, categories): current preference, rows sum to 1
    favorites: np.ndarray  # (users, 3): planted favorite categories, -1 = none
    pref_brand: np.ndarray  # (users, categories): preferred brand index per category
    price_tier: np.ndarray  # 0/1/2
    country: np.ndarray  # index into COUNTRIES
    device: np.ndarray  # main device, index into DEVICES
    id_json: list[str]
    ip_json: list[str]
    email_json: list[str]  # 'null' for users that are not logged in

    def __len__(self) -> int:
        return len(self.ids)

    def drift(self, rng: np.random.Generator, category_weights: np.ndarray) -> None:
        """One day of drift: blend every user a little towards a random category."""
        n = len(self)
        target = rng.choice(N_CATEGORIES, size=n, p=category_weights)
        self.cat_weights *= 1.0 - K.PREF_DRIFT_PER_DAY
        self.cat_weights[np.arange(n), target] += K.PREF_DRIFT_PER_DAY


def new_users_per_day(users: int, days: int) -> int:
    per_day = int(round(users * K.NEW_USERS_PER_DAY))
    return min(per_day, int(users * K.MAX_NEW_SHARE) // max(days, 1))


def build_population(
    rng: np.random.Generator, users: int, days: int, category_weights: np.ndarray
) -> Population:
    if users < 1:
        raise ValueError(f"--users must be positive, got {users}")
    per_day = new_users_per_day(users, days)
    n_initial = users - per_day * days
    first_day = np.concatenate([np.full(n_initial, -1), np.repeat(np.arange(days), per_day)])
    activity = rng.lognormal(0.0, K.ACTIVITY_SIGMA, users)

    # Planted favorites: 1-3 distinct categories drawn by category size (Gumbel top-k).
    scores = np.log(category_weights)[None, :] + rng.gumbel(size=(users, N_CATEGORIES))
    top3 = np.argsort(-scores, axis=1, kind="stable")[:, :3]
    n_fav = rng.choice([1, 2, 3], size=users, p=[0.4, 0.4, 0.2])
    fav_w = rng.dirichlet(np.ones(3), size=users)
    fav_w[np.arange(3)[None, :] >= n_fav[:, None]] = 0.0
    fav_w /= fav_w.sum(axis=1, keepdims=True)
    # Favorites ordered by weight, strongest first.
    order = np.argsort(-fav_w, axis=1, kind="stable")
    top3 = np.take_along_axis(top3, order, axis=1)
    fav_w = np.take_along_axis(fav_w, order, axis=1)
    favorites = np.where(fav_w > 0, top3, -1)
    cat_weights = np.full((users, N_CATEGORIES), (1 - K.FAVORITE_CATEGORY_MASS) / N_CATEGORIES)
    rows = np.repeat(np.arange(users), 3)
    np.add.at(cat_weights, (rows, top3.ravel()), K.FAVORITE_CATEGORY_MASS * fav_w.ravel())

    n_brands = np.array([len(c.brands) for c in CATEGORIES])
    brand_w = np.arange(1, MAX_BRANDS + 1, dtype=float) ** -K.BRAND_ZIPF_EXPONENT
    cum = np.cumsum(brand_w)
    # Inverse-CDF draw per (user, category) restricted to that category's brand count.
    u = rng.random((users, N_CATEGORIES)) * cum[n_brands - 1][None, :]
    pref_brand = np.minimum(np.searchsorted(cum, u), n_brands[None, :] - 1)

    price_tier = rng.choice(3, size=users, p=K.PRICE_TIER_PROBS)
    country = rng.choice(len(COUNTRIES), size=users, p=np.array(COUNTRY_WEIGHTS) / sum(COUNTRY_WEIGHTS))
    device = rng.choice(len(DEVICES), size=users, p=K.DEVICE_WEIGHTS)
    octets = rng.integers(1, 255, (users, 4))
    octets[:, 0] = rng.integers(11, 224, users)
    ips = [f'"{a}.{b}.{c}.{d}"' for a, b, c, d in octets.tolist()]
    has_email = rng.random(users) < K.EMAIL_SHARE
    names = rng.integers(0, len(FIRST_NAMES), users)
    emails = [
        f'"{FIRST_NAMES[n]}.{i}@mail.example.com"' if e else "null"
        for i, (n, e) in enumerate(zip(names.tolist(), has_email.tolist(), strict=True))
    ]
    ids = [user_id(i) for i in range(users)]
    return Population(
        ids=ids, first_day=first_day, activity=activity, cat_weights=cat_weights,
        favorites=favorites, pref_brand=pref_brand, price_tier=price_tier, country=country,
        device=device, id_json=[json.dumps(i) for i in ids], ip_json=ips, email_json=emails,
    )
