"""jobs.prepare_dataset: the 2014 Amazon review files -> interactions.csv / items.csv, on a tiny
fixture in the real files' formats (JSON reviews, Python-literal metadata), gzipped."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from ecrec_lib.datasets import load_csv_dataset
from jobs.prepare_dataset import main

DAY = 86_400
REVIEWS = [  # (reviewer, asin, day): u1 reviews b and a on the same day, b first in the file
    ("u1", "b", 3), ("u2", "a", 1), ("u1", "a", 3), ("u1", "c", 1), ("u2", "c", 2),
    ("u2", "c", 2), ("u3", "a", 5), ("u3", "b", 6),
]
META = [
    {"asin": "a", "title": "Red nail polish", "brand": "OPI",
     "categories": [["Beauty", "Makeup", "Nails"], ["Other"]], "salesRank": {"Beauty": 3}},
    {"asin": "b", "title": "Shampoo's best", "brand": "Dove", "categories": [["Hair"], ["Beauty", "Hair Care"]]},
    {"asin": "zzz", "title": "never reviewed", "brand": "X", "categories": [["Beauty"]]},
    {"asin": "c", "brand": "OPI", "categories": []},
]


def _write_fixture(tmp_path: Path, meta_lines: list[str] | None = None) -> tuple[Path, Path]:
    reviews = tmp_path / "reviews_Beauty_5.json.gz"
    with gzip.open(reviews, "wt") as f:
        for user, asin, day in REVIEWS:
            f.write(json.dumps({"reviewerID": user, "asin": asin, "overall": 5.0,
                                "unixReviewTime": day * DAY, "reviewTime": "x"}) + "\n")
    meta = tmp_path / "meta_Beauty.json.gz"
    with gzip.open(meta, "wt") as f:
        for line in meta_lines if meta_lines is not None else [repr(m) for m in META]:
            f.write(line + "\n")  # Python literals (single quotes), as the real file
    return reviews, meta


def _run(tmp_path: Path, *extra: str, meta_lines: list[str] | None = None) -> int:
    reviews, meta = _write_fixture(tmp_path, meta_lines)
    return main(["--reviews", str(reviews), "--meta", str(meta), "--out", str(tmp_path / "out"),
                 "--min-brand-items", "2", *extra])


def test_prepare_builds_the_dataset_layout(tmp_path: Path) -> None:
    assert "'asin': 'a'" in repr(META[0])  # the fixture really is not strict JSON
    assert _run(tmp_path) == 0
    inter = pd.read_csv(tmp_path / "out" / "interactions.csv", dtype={"user_id": str})
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "seq_pos"]
    # by user, then time, ties in file order (u1: c on day 1, then b before a on day 3);
    # u2's repeated (c, day 2) review is kept once
    got = [(r.user_id, r.item_id, r.timestamp // DAY, r.seq_pos) for r in inter.itertuples()]
    assert got == [("u1", "c", 1, 0), ("u1", "b", 3, 1), ("u1", "a", 3, 2),
                   ("u2", "a", 1, 0), ("u2", "c", 2, 1), ("u3", "a", 5, 0), ("u3", "b", 6, 1)]
    items = pd.read_csv(tmp_path / "out" / "items.csv", keep_default_na=False)
    assert list(items.columns) == ["item_id", "title", "brand", "categories"]
    rows = {r.item_id: r for r in items.itertuples()}
    assert set(rows) == {"a", "b", "c"}  # reviewed items only
    assert rows["a"].title == "Red nail polish" and rows["a"].categories == "Makeup|Nails"
    assert rows["b"].categories == "Hair Care"  # the first path under Beauty
    # OPI has 2 reviewed items (a, c): kept; Dove has 1: dropped; c has no title
    assert rows["a"].brand == "OPI" and rows["c"].brand == "OPI" and rows["b"].brand == ""
    assert rows["c"].title == "" and rows["c"].categories == ""
    assert not (tmp_path / "out" / "heldout.csv").exists()
    # the benchmark loader reads it
    data, has_items = load_csv_dataset(tmp_path / "out")
    assert has_items and data.n_items == 3 and len(data.sequences) == 3


def test_withhold_last_moves_each_users_last_interaction(tmp_path: Path) -> None:
    assert _run(tmp_path, "--withhold-last") == 0
    inter = pd.read_csv(tmp_path / "out" / "interactions.csv")
    held = pd.read_csv(tmp_path / "out" / "heldout.csv")
    assert sorted(zip(held.user_id, held.item_id, held.seq_pos, strict=True)) == [
        ("u1", "a", 2), ("u2", "c", 1), ("u3", "b", 1)]
    assert len(inter) == 4 and inter.groupby("user_id")["seq_pos"].max().tolist() == [1, 0, 0]
    # re-running without the flag replaces the files whole: no stale held-out file
    assert _run(tmp_path) == 0
    assert not (tmp_path / "out" / "heldout.csv").exists()
    assert len(pd.read_csv(tmp_path / "out" / "interactions.csv")) == 7


@pytest.mark.parametrize(("meta_lines", "message"), [
    (["{'asin': 'a', 'title': 'broken"], "line 1: not a Python literal"),
    (["{'title': 'no id'}"], "line 1: no 'asin' field"),
])
def test_bad_metadata_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     meta_lines: list[str], message: str) -> None:
    assert _run(tmp_path, meta_lines=meta_lines) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "interactions.csv").exists()


def test_missing_or_malformed_reviews_name_the_fix(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _, meta = _write_fixture(tmp_path)
    assert main(["--reviews", str(tmp_path / "nope.json.gz"), "--meta", str(meta),
                 "--out", str(tmp_path / "out")]) == 2
    assert "not found: download it" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n{"asin": "b"}\n')
    assert main(["--reviews", str(bad), "--meta", str(meta), "--out", str(tmp_path / "out")]) == 2
    assert "bad.json, line 2: not a review" in capsys.readouterr().err
