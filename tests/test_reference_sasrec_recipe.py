"""scripts/reference/sasrec_recipe.py: RecBole's SASRec recipe in plain torch (a lab reference,
not product code): its fast every-position training computes the prefix samples' states, and it
learns a planted pattern."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("sasrec_recipe", ROOT / "scripts/reference/sasrec_recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


recipe = _load()


def _args(**kw) -> argparse.Namespace:
    base = recipe.build_parser().parse_args(["--data", "unused"])
    return argparse.Namespace(**{**vars(base), **kw})


@pytest.mark.parametrize("variant", [{}, {"pre_ln": True, "norm_input": True}])
def test_every_position_state_is_its_prefix_samples_state(variant):
    torch.manual_seed(0)
    model = recipe.SASRec(20, _args(**variant)).eval()
    seq = [np.array([3, 7, 1, 9, 4]), np.array([5, 2])]
    padded, lengths = recipe._pad(seq, 20)
    with torch.no_grad():
        every = model.states(padded, lengths)
        for r, s in enumerate(seq):
            for t in range(1, len(s) + 1):
                one, n = recipe._pad([s[:t]], 20)
                torch.testing.assert_close(model.states(one, n)[0, t - 1], every[r, t - 1])


def test_learns_a_planted_cycle_and_writes_its_result(tmp_path: Path):
    rng = np.random.default_rng(3)
    rows = ["user_id,item_id,timestamp,seq_pos"]
    for u in range(150):
        start = int(rng.integers(0, 20))
        for pos in range(int(rng.integers(5, 9))):
            rows.append(f"u{u},item{(start + pos) % 20},{1_700_000_000 + 86400 * pos},{pos}")
    (tmp_path / "interactions.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "recipe.json"
    result = recipe.main(["--data", str(tmp_path), "--epochs", "3", "--batch", "64",
                          "--lr", "0.01", "--dropout", "0.1", "--threads", "1", "--out", str(out)])
    # popularity is flat over 20 items: a model that learned nothing has NDCG@10 near 0.2
    assert result["test"]["ndcg@10"] > 0.8
    assert json.loads(out.read_text())["test"] == result["test"]
    assert not (tmp_path / "recipe.json.tmp").exists()
