"""Build the ``interactions.csv`` / ``items.csv`` dataset layout (``ecrec_lib.datasets``) from
the McAuley lab's 2014 Amazon review files, which a user downloads themselves.

Inputs (one category, e.g. Beauty):
  * ``reviews_<Category>_5.json.gz``: the 5-core reviews, one JSON object per line
    (``reviewerID``, ``asin``, ``unixReviewTime``, ...);
  * ``meta_<Category>.json.gz``: item metadata, one *Python literal* per line (single quotes,
    not strict JSON: read with ``ast.literal_eval``): ``asin``, ``title``, ``brand``,
    ``categories`` (a list of category paths, each a list of levels).

Protocol (what :func:`prepare` writes):
  * one review = one interaction: ``user_id`` = reviewerID, ``item_id`` = asin, ``timestamp`` =
    unixReviewTime (unix seconds, day granularity); a repeated (user, item, time) row is kept
    once;
  * ``seq_pos``: 0-based position in the user's sequence, ordered by timestamp, ties by the
    line order of the reviews file; rows are written by user_id, then seq_pos;
  * items: every reviewed asin; ``title`` from the metadata ("" when absent); ``brand`` only for
    brands with at least ``min_brand_items`` reviewed items ("" otherwise); ``categories`` the
    first metadata path that starts with the category's top level (e.g. "Beauty"), below that
    level, levels joined by ``|`` ("" when none);
  * ``withhold_last``: each user's last interaction goes to ``heldout.csv`` (same columns)
    instead of ``interactions.csv``, as in the shared copy of Amazon Beauty, whose last
    interactions are kept for independent evaluation.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ecrec_lib.datasets import DatasetError

MIN_BRAND_ITEMS = 5
_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


@dataclass(frozen=True)
class PrepareSummary:
    users: int
    items: int
    interactions: int
    heldout: int
    items_without_metadata: int


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a gzip or plain text file, blank lines skipped."""
    if not path.is_file():
        raise DatasetError(f"{path} not found: download it from the McAuley lab's Amazon review "
                           "data (2014) page and pass its path")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    yield n, line
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} cannot be read ({exc}): re-download it") from exc


def read_reviews(path: str | Path) -> pd.DataFrame:
    """user_id, item_id, timestamp and the file line of every review."""
    path = Path(path)
    rows = []
    for n, line in _lines(path):
        try:
            r = json.loads(line)
            rows.append((str(r["reviewerID"]), str(r["asin"]), int(r["unixReviewTime"]), n))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}, line {n}: not a review with reviewerID, asin and "
                               f"unixReviewTime ({exc!r}); is this the 5-core reviews file?") from None
    if not rows:
        raise DatasetError(f"{path} holds no review")
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "line"])


def read_metadata(path: str | Path, wanted: set[str]) -> pd.DataFrame:
    """item_id, title, brand, categories (list of paths) of the ``wanted`` items; the lines
    of other items are not parsed."""
    path = Path(path)
    rows = []
    for n, line in _lines(path):
        found = _ASIN.search(line)
        if found is None:
            raise DatasetError(f"{path}, line {n}: no 'asin' field; is this the metadata file?")
        if found.group(1) not in wanted:
            continue
        try:
            meta = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError) as exc:
            raise DatasetError(f"{path}, line {n}: not a Python literal ({exc}); the metadata "
                               "file is read line by line with ast.literal_eval") from None
        if not isinstance(meta, dict):
            raise DatasetError(f"{path}, line {n}: expected a dict per line, got {type(meta).__name__}")
        rows.append((str(meta["asin"]), str(meta.get("title") or "").strip(),
                     str(meta.get("brand") or "").strip(), meta.get("categories") or []))
    out = pd.DataFrame(rows, columns=["item_id", "title", "brand", "categories"])
    return out.drop_duplicates("item_id", keep="first")


def category_levels(paths: list, top: str) -> str:
    """The first path starting with ``top``, below it, levels joined by ``|``."""
    for levels in paths:
        if isinstance(levels, (list, tuple)) and levels and str(levels[0]).strip() == top:
            return "|".join(str(x).strip().replace("|", "/") for x in levels[1:] if str(x).strip())
    return ""


def build_interactions(reviews: pd.DataFrame, withhold_last: bool
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, held out) with columns user_id, item_id, timestamp, seq_pos."""
    df = reviews.drop_duplicates(["user_id", "item_id", "timestamp"], keep="first")
    df = df.sort_values(["user_id", "timestamp", "line"], kind="stable")
    df = df.assign(seq_pos=df.groupby("user_id").cumcount())
    df = df[["user_id", "item_id", "timestamp", "seq_pos"]].reset_index(drop=True)
    if not withhold_last:
        return df, df.iloc[:0]
    last = df.groupby("user_id")["seq_pos"].transform("max") == df["seq_pos"]
    return df[~last].reset_index(drop=True), df[last].reset_index(drop=True)


def build_items(item_ids: list[str], meta: pd.DataFrame, top: str,
                min_brand_items: int = MIN_BRAND_ITEMS) -> pd.DataFrame:
    """items.csv rows for ``item_ids`` (see the module docstring)."""
    m = meta.set_index("item_id").reindex(item_ids)
    brand = m["brand"].fillna("")
    counts = brand[brand != ""].value_counts()
    keep = set(counts[counts >= min_brand_items].index)
    return pd.DataFrame({
        "item_id": item_ids,
        "title": m["title"].fillna("").to_numpy(),
        "brand": [b if b in keep else "" for b in brand],
        "categories": [category_levels(c if isinstance(c, list) else [], top)
                       for c in m["categories"]],
    })


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    """Write atomically: a kill leaves the previous file (or none), never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def prepare(reviews_path: str | Path, meta_path: str | Path, out_dir: str | Path,
            top_category: str = "Beauty", withhold_last: bool = False,
            min_brand_items: int = MIN_BRAND_ITEMS) -> PrepareSummary:
    """Read both files and write ``interactions.csv``, ``items.csv`` (and ``heldout.csv`` with
    ``withhold_last``) under ``out_dir``; re-running replaces them."""
    reviews = read_reviews(reviews_path)
    interactions, heldout = build_interactions(reviews, withhold_last)
    item_ids = sorted(set(reviews["item_id"]))
    meta = read_metadata(meta_path, set(item_ids))
    items = build_items(item_ids, meta, top_category, min_brand_items)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(items, out / "items.csv")
    if withhold_last:
        _write_csv(heldout, out / "heldout.csv")
    elif (out / "heldout.csv").exists():
        (out / "heldout.csv").unlink()  # a stale held-out file of an earlier run would mislead
    _write_csv(interactions, out / "interactions.csv")
    return PrepareSummary(users=int(interactions["user_id"].nunique()), items=len(items),
                          interactions=len(interactions), heldout=len(heldout),
                          items_without_metadata=int(len(item_ids) - meta["item_id"].isin(item_ids).sum()))
