"""Evaluation splits of per-user item sequences: leave-one-out (the sequential-recommendation
protocol), a global temporal cut, and cold items held out of training."""

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

    def sample(self, n: int, rng: np.random.Generator) -> EvalSet:
        """``n`` rows drawn by ``rng`` without replacement, in their order here; the set itself
        when ``n`` is 0 or not below its length."""
        if not 0 < n < len(self):
            return self
        return self.subset(np.sort(rng.choice(len(self), n, replace=False)))


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


def with_validation_targets(train: list[np.ndarray], valid: EvalSet) -> list[np.ndarray]:
    """``train`` with each validation row's target appended to its user's sequence: the events
    model selection held out, returned to the fit once the settings are chosen (test targets
    stay out). Every split here gives a validation row its user's training sequence as history;
    a row that does not (its target would not follow that sequence) is refused."""
    out = [np.asarray(s, dtype=np.int64) for s in train]
    if len(np.unique(valid.users)) < len(valid.users):
        raise ValueError("validation rows repeat a user: one target per user can be appended")
    for r, u in enumerate(valid.users):
        if not 0 <= u < len(out) or not np.array_equal(valid.histories[r], out[u]):
            raise ValueError(f"validation row {r} (user {u}) does not continue that user's training "
                             "sequence: its target cannot be appended; refit from the split that "
                             "made both")
    for r, u in enumerate(valid.users):
        out[u] = np.append(out[u], valid.targets[r])
    return out


TEMPORAL_TEST_FRACTION = 0.1  # share of all events after the test cut
TEMPORAL_VALID_FRACTION = 0.1  # share of the events before the test cut after the valid cut


def cut_leaving(times: np.ndarray, fraction: float) -> int:
    """The latest time that leaves about ``fraction`` of ``times`` strictly after it (ties at
    the cut stay before it, so a day-granular log may leave a little less)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the share of events after a cut must be in (0, 1), got {fraction}")
    t = np.sort(np.asarray(times, dtype=np.int64))
    if not len(t):
        raise ValueError("no event times: a temporal split needs timestamps")
    return int(t[min(len(t) - 1, int(np.ceil((1.0 - fraction) * len(t))) - 1)])


def _first_index_after(times: np.ndarray, cut: int) -> int:
    """Position of the first event after ``cut`` (the length when there is none)."""
    after = np.flatnonzero(np.asarray(times) > cut)
    return int(after[0]) if len(after) else len(times)


def _first_after(sequences: list[np.ndarray], times: list[np.ndarray], cut: int,
                 until: int | None) -> EvalSet:
    """Rows for users with an event in (cut, until]: target = their first item after ``cut``,
    history = their items up to ``cut``."""
    users, hist, tgt = [], [], []
    for u, (seq, t) in enumerate(zip(sequences, times, strict=True)):
        after = np.flatnonzero(np.asarray(t) > cut)
        if not len(after) or (until is not None and t[after[0]] > until):
            continue
        users.append(u)
        hist.append(np.asarray(seq[:after[0]], dtype=np.int64).copy())
        tgt.append(int(seq[after[0]]))
    return EvalSet(np.asarray(users, dtype=np.int64), hist, np.asarray(tgt, dtype=np.int64))


def temporal_split(
    sequences: list[np.ndarray],
    times: list[np.ndarray],
    test_cut: int | None = None,
    valid_cut: int | None = None,
) -> tuple[list[np.ndarray], EvalSet, EvalSet, dict[str, int]]:
    """A global time split: (train, valid, test, cuts).

    ``test_cut`` (default: :func:`cut_leaving` the last 10% of events after it): each user
    with an event after it is tested on their first item after it, given their history up to
    the cut. ``valid_cut`` (default: the last 10% of the events up to the test cut after it) is
    the same for validation, on the users active in ``(valid_cut, test_cut]``. Every model is
    fitted on the events up to ``valid_cut`` (one entry per user, a prefix of each sequence),
    so neither a validation nor a test target is in training; test histories hold the events
    between the cuts, as a nightly run's histories hold the days since the model's training.
    Sequences keep their own order (``seq_pos``): a user's events "up to a cut" are those
    before their first event after it, so an out-of-order timestamp never splits a history."""
    if len(sequences) != len(times):
        raise ValueError(f"one time array per sequence: {len(sequences)} sequences, "
                         f"{len(times)} time arrays")
    for u, (s, t) in enumerate(zip(sequences, times, strict=True)):
        if len(s) != len(t):
            raise ValueError(f"sequence {u} has {len(s)} items but {len(t)} times")
    flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in times] or [np.zeros(0, np.int64)])
    if test_cut is None:
        test_cut = cut_leaving(flat, TEMPORAL_TEST_FRACTION)
    if valid_cut is None:
        valid_cut = cut_leaving(flat[flat <= test_cut], TEMPORAL_VALID_FRACTION)
    if valid_cut >= test_cut:
        raise ValueError(f"the validation cut ({valid_cut}) must be before the test cut "
                         f"({test_cut})")
    train = [np.asarray(s, dtype=np.int64)[:_first_index_after(t, valid_cut)].copy()
             for s, t in zip(sequences, times, strict=True)]
    valid = _first_after(sequences, times, valid_cut, test_cut)
    test = _first_after(sequences, times, test_cut, None)
    if not len(test):
        raise ValueError(f"no event after the test cut {test_cut}: nothing to test")
    return train, valid, test, {"valid_cut": int(valid_cut), "test_cut": int(test_cut)}


COLD_ITEM_FRACTION = 0.1  # share of the interacted items held out of training


def cold_item_split(
    sequences: list[np.ndarray],
    n_items: int,
    fraction: float = COLD_ITEM_FRACTION,
    seed: int = 0,
) -> tuple[list[np.ndarray], EvalSet, EvalSet, np.ndarray]:
    """Items never seen in training: (train, valid, test, cold items).

    A seeded ``fraction`` of the interacted items is held out of training entirely. Test rows:
    users whose last item is a cold one, ranked given everything before it. Every other user
    whose sequence keeps 2+ warm items is a validation row (target: their last warm item).
    Training holds each user's warm items (validation targets removed), so no cold item and no
    validation target is in it."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the share of cold items must be in (0, 1), got {fraction}")
    seen = np.unique(np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences]
                                    or [np.zeros(0, np.int64)]))
    if len(seen) and (seen[0] < 0 or seen[-1] >= n_items):
        raise ValueError(f"sequences refer to items outside 0..{n_items - 1}")
    n_cold = max(1, int(round(fraction * len(seen))))
    cold = np.sort(np.random.default_rng(seed).choice(seen, n_cold, replace=False))
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[cold] = True
    train: list[np.ndarray] = []
    v_users, v_hist, v_tgt, t_users, t_hist, t_tgt = [], [], [], [], [], []
    for u, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int64)
        warm = seq[~is_cold[seq]]
        if len(seq) >= 2 and is_cold[seq[-1]]:
            t_users.append(u)
            t_hist.append(seq[:-1].copy())
            t_tgt.append(int(seq[-1]))
            train.append(warm.copy())
        elif len(warm) >= 2:
            v_users.append(u)
            v_hist.append(warm[:-1].copy())
            v_tgt.append(int(warm[-1]))
            train.append(warm[:-1].copy())
        else:
            train.append(warm.copy())
    valid = EvalSet(np.asarray(v_users, dtype=np.int64), v_hist, np.asarray(v_tgt, dtype=np.int64))
    test = EvalSet(np.asarray(t_users, dtype=np.int64), t_hist, np.asarray(t_tgt, dtype=np.int64))
    if not len(test):
        raise ValueError("no user's last item is a cold item: nothing to test; use more data "
                         "or a larger cold fraction")
    return train, valid, test, cold
