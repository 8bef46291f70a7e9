"""Leave-one-out split of per-user item sequences (the sequential-recommendation protocol)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_EVAL_LENGTH = 3  # one training item, one validation target, one test target


@dataclass
class EvalSet:
    """Rows to evaluate: row ``r`` asks to rank ``targets[r]`` given ``histories[r]``."""

    users: np.ndarray  # int64 index into the original list of sequences
    histories: list[np.ndarray]  # int64 item indices, oldest first
    targets: np.ndarray  # int64 item index to retrieve

    def __post_init__(self) -> None:
        if not (len(self.users) == len(self.histories) == len(self.targets)):
            raise ValueError(
                f"EvalSet fields must have the same length, got users={len(self.users)}, "
                f"histories={len(self.histories)}, targets={len(self.targets)}"
            )

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, rows: np.ndarray) -> EvalSet:
        """The rows at ``rows`` (e.g. a sample of users for fast validation)."""
        rows = np.asarray(rows, dtype=np.int64)
        return EvalSet(self.users[rows], [self.histories[r] for r in rows], self.targets[rows])


def leave_one_out(sequences: list[np.ndarray]) -> tuple[list[np.ndarray], EvalSet, EvalSet]:
    """Split each sequence into train = seq[:-2], valid target seq[-2], test target seq[-1].

    Validation histories are ``seq[:-2]``, test histories ``seq[:-1]`` (the validation
    item is known when the test item is predicted). Users with fewer than 3 items keep
    their whole sequence in train and are not evaluated. ``train`` has one entry per input
    sequence, in order, so indices into it are user indices.
    """
    train: list[np.ndarray] = []
    users: list[int] = []
    v_hist: list[np.ndarray] = []
    v_tgt: list[int] = []
    t_hist: list[np.ndarray] = []
    t_tgt: list[int] = []
    for u, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        if seq.ndim != 1:
            raise ValueError(f"sequence {u} must be 1-D, got shape {seq.shape}")
        if len(seq) < MIN_EVAL_LENGTH:
            train.append(seq.copy())
            continue
        train.append(seq[:-2].copy())
        users.append(u)
        v_hist.append(seq[:-2].copy())
        v_tgt.append(int(seq[-2]))
        t_hist.append(seq[:-1].copy())
        t_tgt.append(int(seq[-1]))
    users_arr = np.asarray(users, dtype=np.int64)
    valid = EvalSet(users_arr, v_hist, np.asarray(v_tgt, dtype=np.int64))
    test = EvalSet(users_arr.copy(), t_hist, np.asarray(t_tgt, dtype=np.int64))
    return train, valid, test
