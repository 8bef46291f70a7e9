"""The external reference for the SASRec-style row: RecBole's SASRec (full cross-entropy) on the
benchmark's own leave-one-out split, with the settings issue 32 quotes for it.

RecBole is not a dependency of ecrec: it pins NumPy < 2 and imports Ray at start, so it runs in
a virtual environment of its own::

    python3.11 -m venv /tmp/recbole
    /tmp/recbole/bin/pip install torch==2.13.0 recbole==1.2.1 "numpy<2" "pandas<2.3" \
        "scipy<1.14" "setuptools<81"
    /tmp/recbole/bin/python scripts/reference/recbole_sasrec.py \
        --data ../shared/data/amazon_beauty --work /tmp/recbole-work --out reference.json

The split is the benchmark's: each user's events in ``seq_pos`` order (written to RecBole as
its time field, so its time-ordered leave-one-out keeps that order, same-day events included),
the last visible item the test target, the one before it the validation target, full ranking
over every item with the user's history excluded. The model: hidden size 64, 2 layers, 2 heads,
inner size 256, dropout 0.5 (hidden and attention), max length 50, Adam at lr 1e-3, batch 256,
30 epochs, validation NDCG@10 every ``--eval-step`` epochs choosing the checkpoint that is
tested. Prints and writes the validation history and the test metrics as JSON.

RecBole's own full-sort evaluation of a *sequential* model does not remove the user's history
items from the ranking (its ``FullSortEvalDataLoader`` passes no history index for them); the
benchmark's protocol does. Both are reported: ``test`` is RecBole's, ``test_history_excluded``
ranks the same checkpoint's scores with the input sequence's items removed (the target kept),
ties counted against the model, as ``ecrec_lib.evaluation.metrics`` does. Only the second is
comparable with the benchmark's table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DATASET = "beauty_loo"


def write_atomic_file(data: Path, work: Path) -> int:
    """``interactions.csv`` as RecBole's ``.inter`` file; returns the number of rows."""
    import pandas as pd

    df = pd.read_csv(data / "interactions.csv").sort_values(["user_id", "seq_pos"], kind="stable")
    out = pd.DataFrame({"user_id:token": df["user_id"], "item_id:token": df["item_id"],
                        "timestamp:float": df["seq_pos"].astype(float)})
    folder = work / "dataset" / DATASET
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{DATASET}.inter.tmp"
    out.to_csv(tmp, sep="\t", index=False)
    tmp.replace(folder / f"{DATASET}.inter")
    return len(out)


def history_excluded_metrics(model, loader, item_field: str, seq_field: str) -> dict[str, float]:  # noqa: ANN001
    """Recall / NDCG at 10 and 20 of ``model`` on ``loader`` with each row's input items
    removed from the ranking (the target kept) and ties counted against the model."""
    import torch

    ranks = []
    model.eval()
    with torch.no_grad():
        for interaction, _, _, _ in loader:
            scores = model.full_sort_predict(interaction)
            scores[:, 0] = -float("inf")  # RecBole's padding item
            target = interaction[item_field]
            rows = torch.arange(len(target))
            target_score = scores[rows, target]
            scores.scatter_(1, interaction[seq_field], -float("inf"))
            scores[rows, target] = target_score
            ranks.append((scores >= target_score[:, None]).sum(1) - 1)
    rank = torch.cat(ranks).double()
    out = {}
    for k in (10, 20):
        hit = (rank < k).double()
        out[f"recall@{k}"] = round(hit.mean().item(), 4)
        out[f"ndcg@{k}"] = round((hit / torch.log2(rank + 2)).mean().item(), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with interactions.csv")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (data, checkpoints)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON result here too")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eval-step", type=int, default=2, help="validate every N epochs")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not (args.data / "interactions.csv").is_file():
        parser.error(f"{args.data}/interactions.csv does not exist: pass the benchmark's data folder")

    data, work = args.data.resolve(), args.work.resolve()
    out = args.out.resolve() if args.out else None
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # RecBole writes its log folders into the working directory

    import torch

    # RecBole 1.2.1 saves its config inside the checkpoint; torch >= 2.6 loads weights only.
    plain_load = torch.load
    torch.load = lambda *a, **k: plain_load(*a, **{"weights_only": False, **k})
    torch.set_num_threads(args.threads)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_logger, init_seed

    rows = write_atomic_file(data, work)
    config = Config(model="SASRec", dataset=DATASET, config_dict={
        "data_path": str(work / "dataset"), "checkpoint_dir": str(work / "saved"),
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "MAX_ITEM_LIST_LENGTH": 50, "loss_type": "CE", "train_neg_sample_args": None,
        "hidden_size": 64, "inner_size": 256, "n_layers": 2, "n_heads": 2,
        "hidden_dropout_prob": 0.5, "attn_dropout_prob": 0.5, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12, "initializer_range": 0.02,
        "learning_rate": 1e-3, "train_batch_size": 256, "eval_batch_size": 4096,
        "epochs": args.epochs, "stopping_step": args.epochs, "eval_step": args.eval_step,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                      "group_by": "user"},
        "metrics": ["Recall", "NDCG"], "topk": [10, 20], "valid_metric": "NDCG@10",
        "device": "cpu", "use_gpu": False, "seed": args.seed, "reproducibility": True,
        "show_progress": False, "log_wandb": False,
    })
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)

    class RecordingTrainer(Trainer):
        """RecBole's trainer, keeping each validation and the epoch of the saved checkpoint."""

        def __init__(self, *a, **k) -> None:  # noqa: ANN002, ANN003
            super().__init__(*a, **k)
            self.best_epoch: int | None = None
            self.history: list[dict] = []
            self.cur_epoch = 0

        def _save_checkpoint(self, epoch: int, *a, **k) -> None:  # noqa: ANN002, ANN003
            self.best_epoch = epoch
            super()._save_checkpoint(epoch, *a, **k)

        def _valid_epoch(self, *a, **k):  # noqa: ANN002, ANN003, ANN202
            score, res = super()._valid_epoch(*a, **k)
            self.history.append({"epoch": self.cur_epoch + 1, **{m: float(v) for m, v in res.items()}})
            return score, res

        def _train_epoch(self, train_data, epoch_idx, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            self.cur_epoch = epoch_idx
            return super()._train_epoch(train_data, epoch_idx, *a, **k)

    trainer = RecordingTrainer(config, SASRec(config, train.dataset))
    started = time.time()
    best_valid, best_result = trainer.fit(train, valid, saved=True, show_progress=False, verbose=True)
    train_s = time.time() - started
    test_result = trainer.evaluate(test, load_best_model=True, show_progress=False)
    item_field = config["ITEM_ID_FIELD"]
    seq_field = item_field + config["LIST_SUFFIX"]
    excluded = history_excluded_metrics(trainer.model, test, item_field, seq_field)
    result = {
        "recbole": __import__("recbole").__version__, "rows": rows, "users": dataset.user_num - 1,
        "items": dataset.item_num - 1, "epochs": args.epochs, "seed": args.seed,
        "train_seconds": round(train_s, 1), "best_valid_ndcg@10": best_valid,
        "best_epoch": None if trainer.best_epoch is None else trainer.best_epoch + 1,
        "valid_at_best": dict(best_result), "test": dict(test_result),
        "test_history_excluded": excluded, "valid": trainer.history,
    }
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if out:  # atomic: a killed run never leaves half a result
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
