"""The CSV dataset loader and the quality benchmark job, end to end on tiny literal data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ecrec_lib.datasets import DatasetError, load_csv_dataset
from ecrec_lib.evaluation import evaluate_scores, leave_one_out
from ecrec_lib.evaluation.served import served_score_fn
from ecrec_lib.models.artifact import load_recommender_dir
from ecrec_lib.models.blend import (
    LINEAR_SHARE_GRID,
    PRODUCT_WEIGHT_GRID,
    RANKER_PRODUCT_WEIGHT_GRID,
    USER_SHARE_GRID,
    WEIGHT_GRID,
)
from ecrec_lib.training.trainer import eval_histories
from jobs import benchmark_quality

N_PATTERN_ITEMS = 30
_COLORS = ("red", "blue", "green", "black", "white", "pink")
_PRODUCTS = ("lipstick", "shampoo", "nail polish", "face cream", "perfume")


def _write(path: Path, text: str) -> None:
    path.write_text(text.strip() + "\n")


def _planted_dataset(root: Path, with_items: bool, n_users: int = 120) -> Path:
    """Users walk a fixed cycle i -> i+1 (mod 30) from a random start: the next item is fully
    predictable from the last one, while popularity is flat."""
    rng = np.random.default_rng(3)
    rows = ["user_id,item_id,timestamp,seq_pos"]
    for u in range(n_users):
        start, length = int(rng.integers(0, N_PATTERN_ITEMS)), int(rng.integers(4, 8))
        for pos in range(length):
            item = (start + pos) % N_PATTERN_ITEMS
            rows.append(f"u{u},item{item},{1_700_000_000 + 86400 * pos},{pos}")
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "interactions.csv", "\n".join(rows))
    if with_items:
        lines = ["item_id,title,brand,categories"]
        for i in range(N_PATTERN_ITEMS):
            title = f"{_COLORS[i % 6].title()} {_PRODUCTS[i // 6]} no. {i}"
            lines.append(f"item{i},{title},Brand{i % 3},Cat{i % 2}|Sub{i % 4}")
        _write(root / "items.csv", "\n".join(lines))
    return root


# ---------------------------------------------------------------- loader


def test_loader_orders_by_seq_pos_and_builds_text(tmp_path: Path):
    _write(
        tmp_path / "interactions.csv",
        """
user_id,item_id,timestamp,seq_pos
b,x,100,1
a,y,50,0
b,y,100,0
b,z,90,2
a,x,60,1
""",
    )
    _write(
        tmp_path / "items.csv",
        """
item_id,title,brand,categories
x,Red lipstick,Acme,Makeup|Lips
y,Shampoo,,Hair Care
unused,Never bought,,
""",
    )
    data, has_items = load_csv_dataset(tmp_path)
    assert has_items
    seqs = {
        u: [data.item_ids[i] for i in s]
        for u, s in zip(data.user_keys, data.sequences, strict=True)
    }
    # seq_pos wins over timestamp (b's z is earlier in time but last in sequence)
    assert seqs == {"a": ["y", "x"], "b": ["y", "x", "z"]}
    assert sorted(data.item_ids) == ["x", "y", "z"]  # only interacted items are ranked
    x = data.item_ids.index("x")
    assert data.item_text[x] == "Red lipstick | Acme | Makeup > Lips"
    assert data.item_category[x] == "Makeup"
    assert data.item_text[data.item_ids.index("z")] == ""  # not in items.csv


def test_loader_orders_by_timestamp_without_seq_pos(tmp_path: Path):
    _write(tmp_path / "interactions.csv", "user_id,item_id,timestamp\nu,b,20\nu,a,10\nu,c,20")
    data, has_items = load_csv_dataset(tmp_path)
    assert not has_items
    assert [data.item_ids[i] for i in data.sequences[0]] == ["a", "b", "c"]  # ties: file order
    assert data.item_text == ["", "", ""]


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({}, "interactions.csv not found"),
        ({"interactions.csv": ""}, "empty"),
        ({"interactions.csv": "user_id,item_id\nu,a"}, r"lacks the column\(s\) \['timestamp'\]"),
        ({"interactions.csv": "user_id,item_id,timestamp"}, "no interactions"),
        ({"interactions.csv": "user_id,item_id,timestamp\nu,a,yesterday"}, "must hold integers"),
        ({"interactions.csv": "user_id,item_id,timestamp\n,a,1"}, "empty user_id"),
        (
            {"interactions.csv": "user_id,item_id,timestamp,seq_pos\nu,a,1,0\nu,b,1,0"},
            "seq_pos must be unique",
        ),
        (
            {"interactions.csv": "user_id,item_id,timestamp\nu,a,1", "items.csv": "item_id\na"},
            r"lacks the column\(s\) \['title'\]",
        ),
        (
            {
                "interactions.csv": "user_id,item_id,timestamp\nu,a,1",
                "items.csv": "item_id,title\na,A\na,B",
            },
            "more than once",
        ),
    ],
)
def test_loader_errors(tmp_path: Path, files: dict[str, str], match: str):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=match):
        load_csv_dataset(tmp_path)


def test_loader_missing_dir(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_csv_dataset(tmp_path / "nope")


# ---------------------------------------------------------------- job


def test_job_missing_dir_exits_2(tmp_path: Path, capsys):
    assert benchmark_quality.main(["--data", str(tmp_path / "nope"), "--models", "pop"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_job_rejects_unknown_model(tmp_path: Path):
    with pytest.raises(SystemExit):
        benchmark_quality.main(["--data", str(tmp_path), "--models", "pop,bert4rec"])


def test_job_rejects_unknown_model_config_key(tmp_path: Path, capsys):
    data_dir = _planted_dataset(tmp_path / "d", with_items=False, n_users=10)
    args = ["--data", str(data_dir), "--models", "sasrec_id", "--set", "hidden=64"]
    assert benchmark_quality.main(args) == 2
    assert "unknown ModelConfig field(s) ['hidden']" in capsys.readouterr().err


def test_job_baselines_end_to_end(tmp_path: Path, capsys):
    data_dir = _planted_dataset(tmp_path / "d", with_items=False)
    out = tmp_path / "r.json"
    rc = benchmark_quality.main(
        [
            "--data",
            str(data_dir),
            "--models",
            "pop,itemknn,userknn,linear,two_tower",
            "--seeds",
            "1",
            "--out",
            str(out),
            "--lake",
            str(tmp_path / "lake"),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["dataset"]["n_eval_users"] == 120 and res["dataset"]["n_items"] == N_PATTERN_ITEMS
    assert res["models"]["two_tower"] == {"status": "n/a (no items.csv)"}
    for name in ("pop", "itemknn", "userknn", "linear"):
        metrics = res["models"][name]["metrics"]
        assert set(benchmark_quality.REPORT_METRICS) <= set(metrics)
        assert all(
            0.0 <= s["mean"] <= 1.0 for k, s in metrics.items() if "@" in k and "novelty" not in k
        )
    # the planted next-item pattern: kNN finds it, popularity cannot
    assert res["models"]["itemknn"]["metrics"]["recall@5"]["mean"] > 0.9
    assert res["models"]["pop"]["metrics"]["recall@5"]["mean"] < 0.4
    assert res["models"]["userknn"]["metrics"]["recall@5"]["mean"] > 0.4
    assert res["models"]["userknn"]["seeds"] == ["deterministic"]
    assert res["models"]["linear"]["metrics"]["recall@5"]["mean"] > 0.9
    assert res["models"]["linear"]["seeds"] == ["deterministic"]
    assert res["machine"]["cpu_cores"] >= 1
    table = capsys.readouterr().out
    assert "item-kNN" in table and "user-kNN" in table and "SLIST" in table
    assert "n/a (no items.csv)" in table


def test_job_runs_the_learned_ranker_alone(tmp_path: Path, capsys):
    """The ranker row: LambdaRank over the neighbourhood parts, trained on each training
    sequence's last item; too few such queries and the row says why instead."""
    out = tmp_path / "r.json"
    data_dir = _planted_dataset(tmp_path / "d", with_items=False, n_users=320)
    argv = ["--data", str(data_dir), "--models", "ranker,pop", "--seeds", "2", "--out", str(out),
            "--lake", str(tmp_path / "lake")]
    assert benchmark_quality.main(argv) == 0
    res = json.loads(out.read_text())
    ranker = res["models"]["ranker"]
    assert ranker["seeds"] == ["deterministic"] and ranker["metrics"]["recall@5"]["mean"] > 0.9
    assert ranker["config"]["ranker"]["labelled_in_candidates"] >= 200
    assert "learned ranker" in capsys.readouterr().out
    small = _planted_dataset(tmp_path / "small", with_items=False, n_users=60)
    argv = ["--data", str(small), "--models", "ranker", "--seeds", "1", "--out", str(out),
            "--lake", str(tmp_path / "lake")]
    assert benchmark_quality.main(argv) == 0
    status = json.loads(out.read_text())["models"]["ranker"]["status"]
    assert status.startswith("n/a (") and "fewer than min_queries=200" in status


def test_job_reports_linear_na_on_a_catalog_above_its_limit(tmp_path: Path, monkeypatch, capsys):
    """A catalog too large for SLIST's dense solve: its row says so, the other models still run."""
    from ecrec_lib.models.neighbourhood import LinearTransitions

    monkeypatch.setattr(LinearTransitions, "max_items", N_PATTERN_ITEMS - 1)
    out = tmp_path / "r.json"
    data_dir = _planted_dataset(tmp_path / "data", with_items=False)
    argv = ["--data", str(data_dir), "--models", "pop,linear,itemknn", "--seeds", "1",
            "--out", str(out), "--lake", str(tmp_path / "lake")]
    assert benchmark_quality.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["models"]["linear"] == {
        "status": f"n/a ({N_PATTERN_ITEMS} items > max_items {N_PATTERN_ITEMS - 1})"}
    assert res["models"]["itemknn"]["metrics"]["recall@5"]["mean"] > 0.9
    assert "items > max_items" in capsys.readouterr().out


NEURAL_FLAGS = [
    "--set",
    "dim=32",
    "--set",
    "batch_size=32",
    "--set",
    "warmup_steps=0",
    "--set",
    "lr=0.005",
    "--set",
    "max_seq_len=8",
    "--set",
    "num_threads=1",
    "--device",
    "cpu",
]


@pytest.mark.slow
def test_job_neural_models_learn_the_pattern(tmp_path: Path, capsys):
    data_dir = _planted_dataset(tmp_path / "d", with_items=True)
    out = tmp_path / "r.json"
    rc = benchmark_quality.main(
        [
            "--data",
            str(data_dir),
            "--models",
            "pop,ranker,sasrec_id,two_tower",
            "--seeds",
            "1",
            "--epochs",
            "12",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--save-models",
            str(tmp_path / "models"),
            *NEURAL_FLAGS,
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    pop = res["models"]["pop"]["metrics"]["ndcg@5"]["mean"]
    for name in ("sasrec_id", "two_tower"):
        r = res["models"][name]
        assert r["status"] == "ok"
        assert r["config"]["use_text"] is (name == "two_tower")
        assert r["train_seconds"]["mean"] > 0 and len(r["runs"]) == 1
        assert all(0.0 <= r["metrics"][k]["mean"] <= 1.0 for k in benchmark_quality.REPORT_METRICS)
        assert r["metrics"]["ndcg@5"]["mean"] > pop + 0.2, name
    # the two-tower run's blend is reported from the same run, with its chosen weight
    blend = res["models"]["two_tower+blend"]
    assert blend["status"] == "ok" and len(blend["blend"]) == 1
    chosen = blend["blend"][0]
    grid = WEIGHT_GRID if chosen["kind"] == "mixture" else (
        (RANKER_PRODUCT_WEIGHT_GRID if chosen["ranker_share"] > 0 else PRODUCT_WEIGHT_GRID) + (0.0,))
    assert chosen["weight"] in grid and chosen["user_share"] in USER_SHARE_GRID
    assert "+ neighbourhood blend" in capsys.readouterr().out
    assert chosen["linear_share"] in LINEAR_SHARE_GRID
    # one neighbourhood fit (and one refit with the validation targets) serves the ranker row
    # and the blend (neither depends on the seed); the refit ranker is what both test
    refit = chosen["refit"]["ranker"]
    assert refit == res["models"]["ranker"]["config"]["ranker"] | {
        "feature_gain": refit["feature_gain"]}
    assert refit["queries"] > chosen["ranker"]["queries"]  # the validation targets label more
    assert list(res["neighbourhood_seconds"]) == ["with_ranker"]
    assert chosen["neighbourhood_seconds"] == res["neighbourhood_seconds"]["with_ranker"]
    assert chosen["refit"]["seconds"] == res["neighbourhood_refit_seconds"]["with_ranker"]
    assert res["models"]["ranker"]["train_seconds"]["mean"] == pytest.approx(
        res["neighbourhood_seconds"]["with_ranker"]
        + res["neighbourhood_refit_seconds"]["with_ranker"], abs=0.2)
    assert "validation targets" in res["protocol"]
    # --save-models: each seed's model is a loadable artifact that ranks as it did in the run
    saved = {name: res["models"][name]["saved_to"][0] for name in ("sasrec_id", "two_tower")}
    assert saved["two_tower"] == str(tmp_path / "models" / "two_tower_seed0")
    rec = load_recommender_dir(saved["two_tower"])
    data, _ = load_csv_dataset(data_dir)
    _, _, test = leave_one_out(data.sequences)
    served = served_score_fn(rec, eval_histories(rec.item_ids, test, data), test, rec.item_ids, None)
    got = evaluate_scores(served, test, data.n_items, ks=(5,))
    assert got["ndcg@5"] == pytest.approx(blend["metrics"]["ndcg@5"]["mean"], abs=1e-6)


@pytest.mark.slow
def test_job_without_items_runs_id_model_and_marks_text_na(tmp_path: Path):
    data_dir = _planted_dataset(tmp_path / "d", with_items=False, n_users=40)
    out = tmp_path / "r.json"
    rc = benchmark_quality.main(
        [
            "--data",
            str(data_dir),
            "--models",
            "sasrec_id,two_tower",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--valid-users",
            "10",
            "--out",
            str(out),
            *NEURAL_FLAGS,
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["models"]["two_tower"]["status"] == "n/a (no items.csv)"
    assert res["models"]["sasrec_id"]["seeds"] == [0, 1]
    assert len(res["models"]["sasrec_id"]["runs"]) == 2


@pytest.mark.slow
@pytest.mark.real_data
def test_real_beauty_popularity_sanity(amazon_dir: Path, tmp_path: Path):
    """The README's evaluator check: popularity HR@10 is about 0.015, NDCG@10 about 0.007."""
    out = tmp_path / "r.json"
    assert (
        benchmark_quality.main(["--data", str(amazon_dir), "--models", "pop", "--out", str(out)])
        == 0
    )
    res = json.loads(out.read_text())
    assert res["dataset"]["n_eval_users"] == 22363
    m = res["models"]["pop"]["metrics"]
    assert 0.010 < m["recall@10"]["mean"] < 0.020
    assert 0.005 < m["ndcg@10"]["mean"] < 0.009


def test_job_runs_the_temporal_and_cold_item_protocols(tmp_path: Path, capsys):
    data_dir = _planted_dataset(tmp_path / "d", with_items=True, n_users=200)
    out = tmp_path / "t.json"
    argv = ["--data", str(data_dir), "--protocol", "temporal", "--models", "pop,itemknn",
            "--seeds", "1", "--max-users", "150", "--out", str(out), "--lake", str(tmp_path / "lake")]
    assert benchmark_quality.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["protocol_name"] == "temporal" and "global time cut" in res["protocol"]
    split = res["split"]
    assert split["valid_cut"] < split["test_cut"] and split["n_test_rows"] > 0
    assert res["models"]["itemknn"]["metrics"]["recall@5"]["mean"] > 0.9  # the cycle still holds
    out = tmp_path / "c.json"
    argv = ["--data", str(data_dir), "--protocol", "cold_items", "--seeds", "1",
            "--models", "pop,brandpop,textsim", "--out", str(out), "--lake", str(tmp_path / "lake")]
    assert benchmark_quality.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["protocol_name"] == "cold_items" and res["split"]["cold_items"] == 3
    got = {m: r["metrics"]["recall@20"]["mean"] for m, r in res["models"].items()}
    assert set(got) == {"pop", "brandpop", "textsim"}
    # a held-out item has no training popularity: popularity never ranks it in the top 20
    assert got["pop"] == 0.0 and got["brandpop"] > 0.0
    assert "brand popularity" in capsys.readouterr().out


def test_sasrec_row_is_trained_by_sasrecs_recipe_whatever_the_overrides():
    cfg = benchmark_quality.model_config("sasrec_id", 0, "cpu", 30, {})
    assert (cfg.block_layout, cfg.batch_by_length, cfg.lr, cfg.cooc_loss_weight, cfg.patience) == (
        "post_ln", False, 1e-3, 0.0, 5)
    assert not (cfg.use_text or cfg.use_side or cfg.cooc_blend)
    tried = benchmark_quality.model_config("sasrec_id", 0, "cpu", 30, {"lr": 0.005, "patience": 30,
                                                                      "cpu_bf16": True})
    assert (tried.lr, tried.patience, tried.cpu_bf16) == (1e-3, 5, True)  # outside it: applied
    assert benchmark_quality.model_config("two_tower", 0, "cpu", 30, {"patience": 30}).patience == 30
    two_tower = benchmark_quality.model_config("two_tower", 0, "cpu", 30, {})
    assert two_tower.block_layout == "pre_ln" and two_tower.cooc_loss_weight > 0
