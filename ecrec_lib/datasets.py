"""Load a benchmark dataset from CSV files into :class:`ecrec_lib.training.data.TrainingData`.

Layout of a dataset directory (the Amazon Beauty release in ``../shared/data/amazon_beauty``
follows it):

- ``interactions.csv`` (required): ``user_id,item_id,timestamp[,seq_pos]`` — one row per
  interaction; each user's sequence is ordered by ``seq_pos`` when present, else by
  ``timestamp`` (file order breaks ties).
- ``items.csv`` (optional): ``item_id,title[,brand,categories,description,price]`` —
  ``categories`` is a ``|``-separated path (``Makeup|Nails|Nail Polish``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ecrec_lib.schema import CATEGORY_SEP
from ecrec_lib.training.data import TrainingData

log = logging.getLogger(__name__)

INTERACTIONS_FILE = "interactions.csv"
ITEMS_FILE = "items.csv"
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "title")
ITEM_OPTIONAL_COLUMNS = ("brand", "categories", "description", "price")
CSV_CATEGORY_SEP = "|"


class DatasetError(ValueError):
    """The dataset directory or one of its files cannot be used; the message says how to fix it."""


def _read_csv(path: Path, required: tuple[str, ...], what: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[])
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path} is empty: it needs a header row {','.join(required)}") from exc
    except pd.errors.ParserError as exc:
        raise DatasetError(f"{path} is not a valid CSV file ({exc})") from exc
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path} lacks the column(s) {missing}; {what} needs {list(required)} "
            f"(found {list(df.columns)})"
        )
    return df


def _integer_column(df: pd.DataFrame, col: str, path: Path) -> np.ndarray:
    values = pd.to_numeric(df[col].str.strip(), errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise DatasetError(
            f"{path}: column {col!r} must hold integers; {int(bad.sum())} row(s) do not "
            f"(first at data row {first + 1}: {df[col].iloc[first]!r})"
        )
    return values.to_numpy(dtype=np.int64)


def load_interactions(path: Path) -> pd.DataFrame:
    """Validated interactions with columns user_id, item_id, timestamp (int), order (int)."""
    df = _read_csv(path, INTERACTION_COLUMNS, "interactions.csv")
    if df.empty:
        raise DatasetError(f"{path} has a header but no interactions")
    for col in ("user_id", "item_id"):
        df[col] = df[col].str.strip()
        empty = df[col] == ""
        if empty.any():
            raise DatasetError(
                f"{path}: {int(empty.sum())} row(s) have an empty {col} "
                f"(first at data row {int(np.flatnonzero(empty.to_numpy())[0]) + 1}); "
                "fill or remove them"
            )
    out = pd.DataFrame(
        {
            "user_id": df["user_id"],
            "item_id": df["item_id"],
            "timestamp": _integer_column(df, "timestamp", path),
        }
    )
    has_pos = "seq_pos" in df.columns
    out["seq_pos"] = _integer_column(df, "seq_pos", path) if has_pos else out["timestamp"]
    if has_pos:
        dup = out.duplicated(["user_id", "seq_pos"])
        if dup.any():
            raise DatasetError(
                f"{path}: {int(dup.sum())} row(s) repeat a (user_id, seq_pos) pair; "
                "seq_pos must be unique within each user"
            )
    return out


def load_items(path: Path) -> pd.DataFrame:
    """Validated items with columns item_id, title, brand, category_path, category, description."""
    df = _read_csv(path, ITEM_COLUMNS, "items.csv")
    for col in ITEM_OPTIONAL_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    df = df.fillna("")
    df["item_id"] = df["item_id"].str.strip()
    if (df["item_id"] == "").any():
        raise DatasetError(f"{path}: {int((df['item_id'] == '').sum())} row(s) have no item_id")
    dup = df["item_id"].duplicated()
    if dup.any():
        raise DatasetError(
            f"{path}: item_id {df['item_id'][dup].iloc[0]!r} appears more than once "
            f"({int(dup.sum())} duplicate rows); keep one row per item"
        )
    levels = df["categories"].str.split(CSV_CATEGORY_SEP, regex=False)
    levels = levels.map(lambda xs: [x.strip() for x in xs if x.strip()])
    df["category_path"] = levels.map(CATEGORY_SEP.join)
    df["category"] = levels.map(lambda xs: xs[0] if xs else "")
    return df[["item_id", "title", "brand", "category_path", "category", "description"]]


def load_csv_dataset(data_dir: str | Path) -> tuple[TrainingData, bool]:
    """Load ``data_dir`` into TrainingData; the flag says whether items.csv was present.

    The item index covers every item with at least one interaction (the ranking catalog);
    item text is empty when items.csv is absent or lacks the item.
    """
    # The item tower's own text builder, so benchmark and nightly training read the same text.
    from ecrec_lib.models.recommender import item_text

    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(
            f"dataset directory {root} does not exist; pass --data DIR holding {INTERACTIONS_FILE}"
        )
    inter_path = root / INTERACTIONS_FILE
    if not inter_path.is_file():
        raise DatasetError(
            f"{inter_path} not found; a dataset directory needs {INTERACTIONS_FILE} "
            f"with columns {','.join(INTERACTION_COLUMNS)}[,seq_pos]"
        )
    inter = load_interactions(inter_path)
    inter["_row"] = np.arange(len(inter))
    inter = inter.sort_values(["user_id", "seq_pos", "timestamp", "_row"], kind="stable")

    item_ids = list(pd.unique(inter["item_id"]))  # first appearance order, deterministic
    index = {item: i for i, item in enumerate(item_ids)}
    n = len(item_ids)
    titles = [""] * n
    brands = [""] * n
    cat_paths = [""] * n
    cats = [""] * n
    descs = [""] * n
    items_path = root / ITEMS_FILE
    has_items = items_path.is_file()
    if has_items:
        items = load_items(items_path)
        known = items["item_id"].map(index)
        unused = int(known.isna().sum())
        if unused:
            log.warning("%d item(s) in %s have no interactions; not ranked", unused, items_path)
        for row, i in zip(items.itertuples(index=False), known, strict=True):
            if pd.isna(i):
                continue
            i = int(i)
            titles[i], brands[i], cat_paths[i] = row.title, row.brand, row.category_path
            cats[i], descs[i] = row.category, row.description
        missing = n - int(known.notna().sum())
        if missing:
            log.warning(
                "%d interacted item(s) are missing from %s: empty text", missing, items_path
            )

    codes = inter["item_id"].map(index).to_numpy(dtype=np.int64)
    users, starts = np.unique(inter["user_id"].to_numpy(), return_index=True)
    bounds = list(starts) + [len(inter)]
    seqs = [codes[bounds[k] : bounds[k + 1]] for k in range(len(users))]
    times = inter["timestamp"].to_numpy(dtype=np.int64)
    event_times = [times[bounds[k] : bounds[k + 1]] for k in range(len(users))]
    data = TrainingData(
        item_ids=[str(i) for i in item_ids],
        item_text=[
            item_text(t, b, c, d)
            for t, b, c, d in zip(titles, brands, cat_paths, descs, strict=True)
        ],
        item_category=cats,
        item_brand=brands,
        user_keys=[str(u) for u in users],
        sequences=seqs,
        event_times=event_times,
        item_category_path=list(cat_paths),
    )
    data.validate()
    return data, has_items
