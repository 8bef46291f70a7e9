"""Co-occurrence blend: the two-tower softmax mixed with neighbourhood distributions.

The two-tower model generalizes (text, categories, long histories); item-to-item
co-occurrence (item-kNN) memorizes "bought together" pairs exactly, including pairs bought in
either order; session neighbours (user-kNN) vote with whole overlapping histories. Mixing the
*distributions* over the catalog is a standard, well-behaved ensemble:

    p(i | u) = (1 - w) * softmax(cos(u, .) / tau)_i + w * nb(u, i)
    nb(u, i) = (1 - a - b) * itemknn(u, i) + a * userknn(u, i) + b * linear(u, i)

where each neighbourhood part is a distribution over the catalog (its non-negative scores
divided by their sum): item-kNN, user-kNN (session neighbours) and the linear transition model
(:class:`~ecrec_lib.models.neighbourhood.LinearTransitions`, SLIST). A user for whom user-kNN or
the linear model has no positive score gives that part's share to item-kNN. A fourth part,
optional, is the learned candidate ranker (:mod:`ecrec_lib.models.ranker`): LambdaRank over the
three parts' scores and item side features, trained on each training sequence's last item;
with share ``c`` the neighbourhood part becomes
``(1 - a - b - c) * itemknn(u, i) + a * userknn(u, i) + b * linear(u, i) + c * ranker(u, i)``:
a blend's ``a``, ``b`` and ``c`` are the served shares (they sum to at most 1; the search
chooses ``a`` and ``b`` without the ranker, then ``c``, and serves ``a`` and ``b`` times
``1 - c``).

A second kind, the **product of experts** (``kind="product"``), adds the neighbourhood
evidence in log space instead of mixing probabilities:

    s'(u, i) = cos(u, i) + (w * tau) * log(nb(u, i) + eps)

i.e. ``log p(i | u) = log softmax(cos / tau)_i + w log(nb(u, i) + eps) + const``. An item
must please both experts to rank high, where the mixture lets either one alone lift it; on
Amazon Beauty it beat the mixture by 3% validation NDCG@10 (BENCHMARKS.md, product-of-experts blend).

The kind, ``w``, ``eps``, the shares ``a`` and ``b`` and the kNN settings are chosen on the
validation targets after training (``w = 0`` when no blend helps, ``a = 0`` / ``b = 0`` when a
part does not), so the blend can only match or beat the model on validation.
Scores are reported on the cosine scale; for the mixture ``s'(u, i) = tau * log(p(u, i) * Z_u)`` with
``Z_u = sum_j exp(cos(u, j) / tau)``, so an item without co-occurrence keeps
``cos(u, i) + tau * log(1 - w)``: downstream re-ranking weights keep their meaning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ecrec_lib.models.neighbourhood import (
    CatalogTooLargeError,
    ItemKNN,
    LinearTransitions,
    UserKNN,
    refitted,
    row_distribution,
    tune_item_knn,
)
from ecrec_lib.models.ranker import CandidateRanker

log = logging.getLogger(__name__)
WEIGHT_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
PRODUCT_WEIGHT_GRID: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)  # w of the product kind
# floor added to nb(u, i) before the log; a large eps tends to the linear blend
# cos + (w tau / eps) nb, a small one to the pure product (the grid spans both sides of the
# value that won on Beauty, 1e-3)
PRODUCT_EPS_GRID: tuple[float, ...] = (1e-4, 1e-3, 3e-3, 1e-2, 3e-2)
BLEND_KINDS = ("mixture", "product")
USER_SHARE_GRID: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7)  # share of user-kNN in nb(u, .)
LINEAR_SHARE_GRID: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 1.0)  # share of LinearTransitions
RANKER_SHARE_GRID: tuple[float, ...] = (0.3, 0.5, 0.7, 0.85, 1.0)  # share of the learned ranker
# w of the product kind beside the ranker: up to weights where the ranker's order decides and
# the cosine only breaks its ties and ranks the items outside its candidates
RANKER_PRODUCT_WEIGHT_GRID: tuple[float, ...] = PRODUCT_WEIGHT_GRID + (8.0, 16.0, 32.0)
# Floats the blend search may hold for its validation rows (5 per row and item, about 1.6 GB):
# every setting of the grid reuses them; past it each setting recomputes every part, the
# learned ranker included, and the search takes many times longer.
BLEND_CACHE_FLOATS = 400_000_000
PARAMS_FILE = "blend.json"
SIM_FILE = "blend_sim.npz"
USERS_FILE = "blend_users.npz"
LINEAR_FILE = "blend_linear.npz"
# (item-kNN, user-kNN, linear or None) fitted on the training sequences -> (ranker or None, report)
RankerFit = Callable[[ItemKNN, UserKNN, LinearTransitions | None],
                     tuple[CandidateRanker | None, dict[str, Any]]]


def cacheable_rows(n_items: int, cache_floats: int = BLEND_CACHE_FLOATS) -> int:
    """How many validation rows the blend search can hold: its five parts per row (cosine and
    the item-kNN, user-kNN, linear and ranker distributions) over ``n_items`` items."""
    return cache_floats // (5 * max(n_items, 1))


@dataclass
class Neighbourhood:
    """The blend's neighbourhood parts fitted on the training sequences: everything in a blend
    that does not depend on the neural model, so one fit can serve several models trained on
    the same split (the benchmark's seeds). ``knn_valid_ndcg``: tuned item-kNN's validation
    NDCG@10; ``ranker_report``: the ranker fit's report, or None when no ranker was asked for."""

    item_knn: ItemKNN
    knn_valid_ndcg: float
    user_knn: UserKNN | None
    linear: LinearTransitions | None
    ranker: CandidateRanker | None
    ranker_report: dict[str, Any] | None
    seconds: float


def fit_neighbourhood(
    train_seqs: Sequence[np.ndarray],
    n_items: int,
    valid_histories: Sequence[np.ndarray],
    valid_eval: Callable[[Callable[[np.ndarray], torch.Tensor]], float],
    user_knn: bool = True,
    linear: LinearTransitions | bool = True,
    ranker_fit: RankerFit | None = None,
) -> Neighbourhood:
    """Item-kNN tuned on validation NDCG@10, user-kNN (``user_knn``), the linear transition
    model (``linear``: True fits it, a fitted model is reused; a catalog too large for it
    leaves it out with a warning) and the learned ranker (``ranker_fit``, needs user-kNN), all
    fitted on ``train_seqs``; ``valid_eval`` as in :func:`fit_blend`."""
    t0 = time.perf_counter()
    knn_score, item_knn = tune_item_knn(train_seqs, n_items, lambda knn: valid_eval(
        lambda pos: torch.as_tensor(knn.score([valid_histories[i] for i in pos]))))
    users = UserKNN().fit(train_seqs, n_items) if user_knn else None
    lin: LinearTransitions | None = None
    if linear is not True and linear is not False:
        lin = linear
    elif linear:
        try:
            lin = LinearTransitions().fit(train_seqs, n_items)
        except CatalogTooLargeError as exc:
            log.warning("blend without the linear transition model: %s", exc)
    ranker, ranker_report = None, None
    if ranker_fit is not None and users is not None:
        ranker, ranker_report = ranker_fit(item_knn, users, lin)
    return Neighbourhood(item_knn, knn_score, users, lin, ranker, ranker_report,
                         time.perf_counter() - t0)


def refit_neighbourhood(neighbourhood: Neighbourhood, seqs: Sequence[np.ndarray], n_items: int,
                        ranker_fit: RankerFit | None = None) -> Neighbourhood:
    """The same parts with the same settings (item-kNN's tuned ones included) fitted again on
    ``seqs``: once validation has chosen the settings, its targets return to the fit
    (:func:`~ecrec_lib.evaluation.split.with_validation_targets`), so the served parts know
    every user's latest events but the test's. ``ranker_fit`` refits the ranker (None: none)."""
    t0 = time.perf_counter()
    item_knn = refitted(neighbourhood.item_knn, seqs, n_items)
    users = (refitted(neighbourhood.user_knn, seqs, n_items)
             if neighbourhood.user_knn is not None else None)
    lin = (refitted(neighbourhood.linear, seqs, n_items)
           if neighbourhood.linear is not None else None)
    ranker, report = None, None
    if neighbourhood.ranker is not None and ranker_fit is not None and users is not None:
        ranker, report = ranker_fit(item_knn, users, lin)
    return Neighbourhood(item_knn, neighbourhood.knn_valid_ndcg, users, lin, ranker, report,
                         time.perf_counter() - t0)


@dataclass
class CoocBlend:
    """A fitted item-kNN (and optionally user-kNN) plus the mixing weights and the model's
    softmax temperature."""

    knn: ItemKNN
    weight: float
    inv_temperature: float
    user_knn: UserKNN | None = None
    user_share: float = 0.0  # a: share of the user-kNN distribution in the neighbourhood part
    kind: str = "mixture"  # mixture of distributions | product of experts (log space)
    eps: float = 1e-4  # product kind: floor added to the neighbourhood probability
    linear: LinearTransitions | None = None
    linear_share: float = 0.0  # b: share of the linear transition model's distribution
    ranker: CandidateRanker | None = None
    ranker_share: float = 0.0  # c: share of the learned ranker's distribution

    def __post_init__(self) -> None:
        if self.kind not in BLEND_KINDS:
            raise ValueError(f"blend kind must be one of {BLEND_KINDS}, got {self.kind!r}")
        if self.kind == "product" and self.eps <= 0:
            raise ValueError(f"a product blend needs eps > 0 (log of zero), got {self.eps}")
        shares = (self.user_share, self.linear_share, self.ranker_share)
        if min(shares) < 0 or sum(shares) > 1 + 1e-9:
            raise ValueError(f"the user-kNN, linear and ranker shares must be >= 0 and sum to at "
                             f"most 1, got {self.user_share}, {self.linear_share} and "
                             f"{self.ranker_share}")
        if self.ranker_share > 0 and (self.ranker is None or self.user_knn is None):
            raise ValueError("a ranker share > 0 needs the ranker and the user-kNN it reads")

    def with_parts(self, neighbourhood: Neighbourhood) -> CoocBlend:
        """This blend's settings over ``neighbourhood``'s parts (a refit of the ones it was
        chosen with, :func:`refit_neighbourhood`); a part it does not serve stays out."""
        if self.ranker is not None and neighbourhood.ranker is None:
            raise ValueError("this blend serves a ranker but the refitted parts have none: refit "
                             "them with the ranker's fit")
        return dataclasses.replace(
            self, knn=neighbourhood.item_knn,
            user_knn=neighbourhood.user_knn if self.user_knn is not None else None,
            linear=neighbourhood.linear if self.linear is not None else None,
            ranker=neighbourhood.ranker if self.ranker is not None else None)

    # ------------------------------------------------------------------ scoring
    def knn_probs(self, histories: Sequence[np.ndarray], columns: np.ndarray | None = None,
                  n_columns: int = 0, anchor_ts: np.ndarray | None = None) -> torch.Tensor:
        """(len(histories), n_items) neighbourhood distribution per user (rows sum to 1): the
        item-kNN distribution, mixed with the user-kNN and linear ones the blend has. ItemKNN adds a
        tiny popularity prior, so a user without co-occurrences gets the popularity
        distribution; a user without session neighbours (or without a positive linear score)
        gives that part's share to item-kNN.
        ``histories`` hold model item indices. With ``columns`` (model index -> column,
        -1 = absent), the distribution is laid out over ``n_columns`` columns (e.g. a catalog
        snapshot) and renormalized over the items present there. ``anchor_ts``: each user's last
        event time (epoch seconds), for the learned ranker's time features."""
        use_ranker = self.ranker is not None and self.ranker_share > 0
        raw = {"item": (self.knn.score(histories), 1.0)}
        for name, model, share in (("user", self.user_knn, self.user_share),
                                   ("linear", self.linear, self.linear_share)):
            if model is not None and (share > 0 or use_ranker):
                raw[name] = (model.score(histories), share)
        # over the model's items (the ranker's input); also the output rows when columns is None
        own = {name: row_distribution(s) for name, (s, _) in raw.items()} if use_ranker else {}

        def laid_out(name: str) -> torch.Tensor:
            if columns is None and name in own:
                return own[name]
            return row_distribution(raw[name][0], columns, n_columns)

        parts = [(laid_out(name), share) for name, (_, share) in raw.items()
                 if name != "item" and share > 0]
        if use_ranker:
            assert self.ranker is not None
            p_rank = self.ranker.probs(
                histories, own["item"].numpy(), own["user"].numpy(),
                own["linear"].numpy() if "linear" in own else None, anchor_ts,
                (self.knn.sim, self.linear.weights if self.linear is not None else None))
            # the shares are the served ones (fit_blend scaled a and b by 1 - c already)
            parts.append((row_distribution(p_rank, columns, n_columns), self.ranker_share))
        return _mix_neighbourhoods(laid_out("item"), parts)

    def mix(self, cos: torch.Tensor, histories: Sequence[np.ndarray],
            columns: np.ndarray | None = None, anchor_ts: np.ndarray | None = None) -> torch.Tensor:
        """Blended scores on the cosine scale for full rows ``cos`` (n, n_columns); ``columns``
        and ``anchor_ts`` as in :meth:`knn_probs`."""
        cos = torch.as_tensor(cos).float().cpu()
        if self.weight <= 0:
            return cos
        return combine(cos, self.inv_temperature, self.weight,
                       self.knn_probs(histories, columns, cos.shape[1], anchor_ts), self.kind,
                       self.eps)

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | Path) -> list[str]:
        """Write the blend next to a model artifact; returns the file names written."""
        out = Path(out_dir)
        sp.save_npz(out / SIM_FILE, self.knn.sim.tocsr(), compressed=True)
        np.save(out / "blend_popularity.npy", self.knn.popularity)
        files = [SIM_FILE, "blend_popularity.npy", PARAMS_FILE]
        params: dict[str, Any] = {
            "weight": self.weight, "inv_temperature": self.inv_temperature,
            "knn": {k: getattr(self.knn, k) for k in
                    ("window", "backward_weight", "alpha", "decay", "max_history")},
            "user_share": self.user_share if self.user_knn is not None else 0.0,
            "kind": self.kind, "eps": self.eps,
        }
        if self.user_knn is not None:
            sp.save_npz(out / USERS_FILE, self.user_knn.users.tocsr(), compressed=True)
            params["user_knn"] = asdict(self.user_knn)
            files.insert(2, USERS_FILE)
        if self.linear is not None:
            sp.save_npz(out / LINEAR_FILE, self.linear.weights, compressed=True)
            params["linear"] = asdict(self.linear)
            params["linear_share"] = self.linear_share
            files.insert(-1, LINEAR_FILE)
        if self.ranker is not None:
            names, params["ranker"] = self.ranker.save(out)
            params["ranker_share"] = self.ranker_share
            files[-1:-1] = names
        (out / PARAMS_FILE).write_text(json.dumps(params, indent=1))
        return files

    @classmethod
    def load(cls, root: str | Path) -> CoocBlend | None:
        root = Path(root)
        if not (root / PARAMS_FILE).is_file():
            return None
        params = json.loads((root / PARAMS_FILE).read_text())
        knn = ItemKNN(**params["knn"]).with_tables(sp.load_npz(root / SIM_FILE),
                                                   np.load(root / "blend_popularity.npy"))
        user_knn = None
        if params.get("user_knn") is not None:  # blends saved before user-kNN have none
            if not (root / USERS_FILE).is_file():
                raise FileNotFoundError(
                    f"{root / PARAMS_FILE} names a user-kNN but {USERS_FILE} is missing: the model "
                    "artifact is incomplete; re-register the run or restore the file")
            user_knn = UserKNN(**params["user_knn"]).with_table(sp.load_npz(root / USERS_FILE))
        linear = None
        if params.get("linear") is not None:  # blends saved before the linear part have none
            if not (root / LINEAR_FILE).is_file():
                raise FileNotFoundError(
                    f"{root / PARAMS_FILE} names a linear transition model but {LINEAR_FILE} is "
                    "missing: the model artifact is incomplete; re-register the run or restore "
                    "the file")
            # models saved before SLIS was added were fitted as SLIT alone
            settings = {"slis_weight": 0.0, **params["linear"]}
            linear = LinearTransitions(**settings).with_table(sp.load_npz(root / LINEAR_FILE))
        # blends saved before the learned ranker have none
        ranker = CandidateRanker.load(root, params["ranker"]) if params.get("ranker") else None
        # blends saved before the product kind existed are mixtures
        return cls(knn, float(params["weight"]), float(params["inv_temperature"]), user_knn,
                   float(params.get("user_share", 0.0)) if user_knn is not None else 0.0,
                   str(params.get("kind", "mixture")), float(params.get("eps", 1e-4)), linear,
                   float(params.get("linear_share", 0.0)) if linear is not None else 0.0,
                   ranker, float(params.get("ranker_share", 0.0)) if ranker is not None else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "inv_temperature": self.inv_temperature,
                "knn": asdict(self.knn), "user_share": self.user_share,
                "kind": self.kind, "eps": self.eps,
                "user_knn": asdict(self.user_knn) if self.user_knn is not None else None,
                "linear_share": self.linear_share,
                "linear": asdict(self.linear) if self.linear is not None else None,
                "ranker_share": self.ranker_share,
                "ranker": ({"n_candidates": self.ranker.n_candidates,
                            "temperature": self.ranker.temperature,
                            "use_time": self.ranker.use_time}
                           if self.ranker is not None else None)}


def mix_distributions(cos: torch.Tensor, inv_temperature: float, weight: float,
                      p_nb: torch.Tensor) -> torch.Tensor:
    """``tau * log((1 - w) softmax(cos / tau) + w p_nb) + tau * log Z``: the blend on the
    cosine scale (an item the neighbourhood part gives nothing keeps ``cos + tau log(1 - w)``)."""
    t = inv_temperature
    log_p_model = torch.log_softmax(cos * t, dim=1) + float(np.log1p(-weight))
    log_z = torch.logsumexp(cos * t, dim=1, keepdim=True)
    log_p_nb = torch.log(weight * p_nb)  # -inf where the neighbourhoods give nothing
    return (torch.logaddexp(log_p_model, log_p_nb) + log_z) / t


def product_of_experts(cos: torch.Tensor, inv_temperature: float, weight: float,
                       p_nb: torch.Tensor, eps: float) -> torch.Tensor:
    """``cos + w * tau * log(p_nb + eps)``: the model's log-softmax plus ``w`` times the log
    neighbourhood probability, on the cosine scale (an item the neighbourhood gives nothing
    keeps ``cos + w * tau * log(eps)``, the same shift for every such item of a user)."""
    return cos + (weight / inv_temperature) * torch.log(p_nb + eps)


def combine(cos: torch.Tensor, inv_temperature: float, weight: float, p_nb: torch.Tensor,
            kind: str, eps: float) -> torch.Tensor:
    """The blend of ``kind`` (see :data:`BLEND_KINDS`) for full rows, on the cosine scale."""
    if kind == "product":
        return product_of_experts(cos, inv_temperature, weight, p_nb, eps)
    return mix_distributions(cos, inv_temperature, weight, p_nb)


def _mix_neighbourhoods(p_item: torch.Tensor,
                        parts: Sequence[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """``(1 - sum shares) p_item + sum share * p`` per row over ``parts`` (distribution,
    share); in a row where a part is all zero (no session neighbours, no positive linear
    score) that part's share goes to ``p_item``."""
    if not parts:
        return p_item
    rest = torch.ones(p_item.shape[0], 1, dtype=p_item.dtype)
    acc = torch.zeros_like(p_item)
    for p, share in parts:
        has = (p.sum(1, keepdim=True) > 0).to(p_item.dtype) * share
        acc += has * p
        rest -= has
    # shares summing to 1 leave a rounding residue (-3e-8 in float32): a negative p_item share
    # would make p slightly negative where the other parts are zero, and log(p) NaN
    return acc + rest.clamp_(min=0.0) * p_item


def index_histories(model_item_ids: Sequence[str], histories: Sequence[Any]) -> list[np.ndarray]:
    """Item-id histories -> model item indices (ids the model does not know are skipped)."""
    index = {iid: i for i, iid in enumerate(model_item_ids)}
    return [np.asarray([index[str(i)] for i in (h if h is not None else []) if str(i) in index],
                       dtype=np.int64) for h in histories]


@dataclass(frozen=True)
class BlendSetting:
    """One point of the blend's grid: its kind, weight ``w``, the product kind's ``eps`` and
    the shares of user-kNN (``a``), the linear model (``b``) and the ranker (``c``) in the
    neighbourhood part."""

    kind: str = "mixture"
    weight: float = 0.0
    eps: float = 1e-4
    user_share: float = 0.0
    linear_share: float = 0.0
    ranker_share: float = 0.0

    @property
    def key(self) -> str:
        """The setting's name in the fit report's grid."""
        shares = f"a={self.user_share}"
        if self.linear_share > 0 or self.ranker_share > 0:
            shares += f",b={self.linear_share}"
        if self.ranker_share > 0:
            shares += f",c={self.ranker_share}"
        if self.kind == "product":
            return f"product,w={self.weight},eps={self.eps},{shares}"
        return f"w={self.weight},{shares}"

    def evaluation_order(self) -> tuple[float, float, float, str, float, float]:
        """Settings sharing a neighbourhood mix (and, for products, its log) are adjacent."""
        return (self.ranker_share, self.user_share, self.linear_share, self.kind, self.eps,
                self.weight)


class _ValidationScores:
    """The blend's scores on validation rows for any :class:`BlendSetting`: each row batch's
    cosine and part distributions are computed once (when the cache fits), the neighbourhood
    mix once per share group and its log once per ``eps``."""

    def __init__(self, histories: Sequence[np.ndarray], inv_temperature: float,
                 model_scores: Callable[[np.ndarray], torch.Tensor], item_knn: ItemKNN,
                 user_knn: UserKNN | None, linear: LinearTransitions | None,
                 ranker: CandidateRanker | None, anchor_ts: np.ndarray | None,
                 cacheable: bool) -> None:
        self.histories = histories
        self.inv_temperature = inv_temperature
        self.model_scores = model_scores
        self.item_knn, self.user_knn, self.linear, self.ranker = item_knn, user_knn, linear, ranker
        self.anchor_ts = anchor_ts
        self.cacheable = cacheable
        self._parts: dict[bytes, tuple[torch.Tensor, ...]] = {}
        self._held: dict[str, tuple[Any, dict[bytes, torch.Tensor]]] = {}

    def parts(self, pos: np.ndarray) -> tuple[Any, ...]:
        """(cosine, p_item, p_user, p_linear, p_ranker) of the rows at ``pos`` (None: absent)."""
        key = np.asarray(pos, dtype=np.int64).tobytes()
        if key in self._parts:
            return self._parts[key]
        hist = [self.histories[i] for i in pos]
        cos = torch.as_tensor(self.model_scores(pos)).float().cpu()
        p_item = row_distribution(self.item_knn.score(hist))
        p_user = row_distribution(self.user_knn.score(hist)) if self.user_knn is not None else None
        p_lin = row_distribution(self.linear.score(hist)) if self.linear is not None else None
        p_rank = None
        if self.ranker is not None and p_user is not None:
            anchors = self.anchor_ts[pos] if self.anchor_ts is not None else None
            p_rank = torch.as_tensor(self.ranker.probs(
                hist, p_item.numpy(), p_user.numpy(), p_lin.numpy() if p_lin is not None else None,
                anchors, (self.item_knn.sim, self.linear.weights if self.linear is not None else None)))
        out = (cos, p_item, p_user, p_lin, p_rank)
        if self.cacheable:
            self._parts[key] = out
        return out

    def _hold(self, slot: str, group: Any, pos: np.ndarray,
              compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``compute()`` kept for the current ``group`` of ``slot`` (one tensor per batch)."""
        if not self.cacheable:
            return compute()
        if slot not in self._held or self._held[slot][0] != group:
            self._held[slot] = (group, {})
        key = np.asarray(pos, dtype=np.int64).tobytes()
        if key not in self._held[slot][1]:
            self._held[slot][1][key] = compute()
        return self._held[slot][1][key]

    def neighbourhood(self, pos: np.ndarray, setting: BlendSetting) -> torch.Tensor:
        a, b, c = setting.user_share, setting.linear_share, setting.ranker_share

        def compute() -> torch.Tensor:
            _, p_item, p_user, p_lin, p_rank = self.parts(pos)
            mix = [(p, share * (1 - c)) for p, share in ((p_user, a), (p_lin, b))
                   if p is not None and share > 0]
            if c > 0 and p_rank is not None:
                mix.append((p_rank, c))
            return _mix_neighbourhoods(p_item, mix)

        return self._hold("nb", (a, b, c), pos, compute)

    def scores(self, setting: BlendSetting) -> Callable[[np.ndarray], torch.Tensor]:
        """The blended validation rows of ``setting`` (a ``score_fn``)."""
        def fn(pos: np.ndarray) -> torch.Tensor:
            cos = self.parts(pos)[0]
            if setting.weight <= 0:
                return cos
            if setting.kind == "product":  # product_of_experts, with the log held per eps
                group = (setting.user_share, setting.linear_share, setting.ranker_share, setting.eps)
                log_nb = self._hold("log", group, pos, lambda: torch.log(
                    self.neighbourhood(pos, setting) + setting.eps))
                return cos + (setting.weight / self.inv_temperature) * log_nb
            return combine(cos, self.inv_temperature, setting.weight,
                           self.neighbourhood(pos, setting), setting.kind, setting.eps)
        return fn


def _search(settings: Sequence[BlendSetting], evaluate: Callable[[BlendSetting], float],
            best: tuple[float, BlendSetting], grid: dict[str, float]) -> tuple[float, BlendSetting]:
    """Evaluate every setting (in :meth:`BlendSetting.evaluation_order`, so held mixes are
    reused) into ``grid``; the best is the first in the given order to beat ``best``."""
    got = {s: evaluate(s) for s in sorted(settings, key=BlendSetting.evaluation_order)}
    for setting in settings:
        grid[setting.key] = got[setting]
        if got[setting] > best[0] + 1e-12:
            best = (got[setting], setting)
    return best


def share_settings(user_shares: Sequence[float], linear_shares: Sequence[float],
                   weights: Sequence[float], product_weights: Sequence[float],
                   product_eps: Sequence[float]) -> list[BlendSetting]:
    """The first stage's grid: every user-kNN / linear share pair summing to at most 1, with
    the product kind's weights and floors; the mixture kind only without the linear part (the
    product won every Beauty seed, and the grid's cost grows with each share combination)."""
    out: list[BlendSetting] = []
    for a in (float(a) for a in user_shares):
        for b in (float(b) for b in linear_shares if a + b <= 1 + 1e-9):
            if b <= 0:
                out += [BlendSetting("mixture", float(w), 1e-4, a, b) for w in weights]
            out += [BlendSetting("product", float(w), float(e), a, b)
                    for w in product_weights for e in product_eps]
    return out


def ranker_settings(base: BlendSetting, ranker_shares: Sequence[float], weights: Sequence[float],
                    product_weights: Sequence[float], product_eps: Sequence[float]
                    ) -> list[BlendSetting]:
    """The second stage's grid: the ranker's share ``c`` beside the first stage's shares."""
    out: list[BlendSetting] = []
    for c in (float(c) for c in ranker_shares if c > 0):
        shares = {"user_share": base.user_share, "linear_share": base.linear_share, "ranker_share": c}
        out += [BlendSetting("mixture", float(w), 1e-4, **shares) for w in weights if w > 0]
        out += [BlendSetting("product", float(w), float(e), **shares)
                for w in product_weights for e in product_eps]
    return out


def fit_blend(
    train_seqs: Sequence[np.ndarray],
    n_items: int,
    inv_temperature: float,
    valid_histories: Sequence[np.ndarray],
    valid_eval: Callable[[Callable[[np.ndarray], torch.Tensor]], float],
    model_scores: Callable[[np.ndarray], torch.Tensor],
    weights: Sequence[float] = WEIGHT_GRID,
    user_shares: Sequence[float] = USER_SHARE_GRID,
    product_weights: Sequence[float] = PRODUCT_WEIGHT_GRID,
    product_eps: Sequence[float] = PRODUCT_EPS_GRID,
    linear_shares: Sequence[float] = LINEAR_SHARE_GRID,
    cache_floats: int = BLEND_CACHE_FLOATS,
    linear: LinearTransitions | None = None,
    ranker_fit: RankerFit | None = None,
    valid_anchor_ts: np.ndarray | None = None,
    ranker_shares: Sequence[float] = RANKER_SHARE_GRID,
    neighbourhood: Neighbourhood | None = None,
    ranker_product_weights: Sequence[float] = RANKER_PRODUCT_WEIGHT_GRID,
) -> tuple[CoocBlend, dict[str, Any]]:
    """Fit item-kNN on ``train_seqs`` (settings picked by validation NDCG@10), user-kNN and the
    linear transition model, then choose the blend's :class:`BlendSetting` on validation
    NDCG@10: first the kind, ``w`` (and ``eps``) and the user-kNN and linear shares ``a``, ``b``
    (:func:`share_settings`; ``w = 0``, ``a = 0`` and ``b = 0`` are always candidates), then the
    ranker's share ``c`` beside the chosen ``a``, ``b``, which are scaled by ``1 - c``
    (:func:`ranker_settings`, whose product weights are ``ranker_product_weights``).
    ``product_weights=()`` searches mixtures only,
    ``linear_shares=(0.0,)`` leaves the linear model out (as does a catalog too large for it,
    with a warning). ``valid_eval(score_fn) -> ndcg@10`` evaluates a score function over the
    validation rows; ``model_scores(pos)`` returns the model's cosine rows for those rows. The
    per-row parts are computed once and reused across the grid when they fit in
    ``cache_floats`` floats (5 x validation rows x items). ``linear``: a linear model already
    fitted on ``train_seqs``, used instead of fitting one.

    ``ranker_fit(item_knn, user_knn, linear) -> (ranker or None, report)`` fits the learned
    ranker from the fitted parts (:func:`ecrec_lib.models.ranker.fit_ranker`;
    ``valid_anchor_ts``: each validation row's time context, :func:`ranker.time_context`).

    ``neighbourhood``: parts already fitted on the same ``train_seqs`` and validation rows
    (:func:`fit_neighbourhood`), used as they are instead of fitting any (``linear`` and
    ``ranker_fit`` are then ignored; a part it lacks is left out of the grid)."""
    if neighbourhood is None:
        neighbourhood = fit_neighbourhood(
            train_seqs, n_items, valid_histories, valid_eval,
            user_knn=any(a > 0 for a in user_shares),
            linear=(linear if linear is not None else True) if any(b > 0 for b in linear_shares)
            else False,
            ranker_fit=ranker_fit)
    item_knn = neighbourhood.item_knn
    user_knn = neighbourhood.user_knn if any(a > 0 for a in user_shares) else None
    linear = neighbourhood.linear if any(b > 0 for b in linear_shares) else None
    ranker = neighbourhood.ranker if user_knn is not None else None  # it reads every part
    valid = _ValidationScores(valid_histories, inv_temperature, model_scores, item_knn, user_knn,
                              linear, ranker, valid_anchor_ts,
                              len(valid_histories) <= cacheable_rows(n_items, cache_floats))

    report: dict[str, Any] = {"knn_valid_ndcg@10": neighbourhood.knn_valid_ndcg, "grid": {}}
    for name, part in (("user_knn", user_knn), ("linear", linear)):
        if part is not None:
            report[f"{name}_valid_ndcg@10"] = valid_eval(
                lambda pos, part=part: torch.as_tensor(part.score([valid_histories[i] for i in pos])))
    model_alone = valid_eval(valid.scores(BlendSetting()))

    def evaluate(setting: BlendSetting) -> float:
        return model_alone if setting.weight <= 0 else valid_eval(valid.scores(setting))

    linear_grid = [b for b in linear_shares if b <= 0 or linear is not None]
    best_score, best = _search(
        share_settings(user_shares, linear_grid, weights, product_weights, product_eps),
        evaluate, (-1.0, BlendSetting()), report["grid"])
    if neighbourhood.ranker_report is not None:
        report["ranker"] = neighbourhood.ranker_report
    if ranker is not None:
        report["ranker_valid_ndcg@10"] = valid_eval(lambda pos: valid.parts(pos)[4])
        best_score, best = _search(
            ranker_settings(best, ranker_shares, weights,
                            ranker_product_weights if product_weights else (), product_eps),
            evaluate, (best_score, best), report["grid"])
    c = best.ranker_share
    # what is served: the user-kNN and linear shares scaled by the ranker's
    served = dataclasses.replace(best, user_share=best.user_share * (1 - c),
                                 linear_share=best.linear_share * (1 - c))
    # the mixture curve at the chosen user share (searched with b = 0 only)
    report["weights"] = {str(w): report["grid"][key] for w in weights
                         if (key := BlendSetting("mixture", float(w), 1e-4, best.user_share).key)
                         in report["grid"]}
    report.update({"weight": served.weight, "user_share": served.user_share,
                   "linear_share": served.linear_share, "kind": served.kind, "eps": served.eps,
                   "ranker_share": c, "valid_ndcg@10": best_score,
                   "model_valid_ndcg@10": model_alone})
    log.info("neighbourhood blend: %s, weight %.2f, user-kNN share %.2f, linear share %.2f, "
             "ranker share %.2f (valid NDCG@10 %.4f; model alone %.4f, item-kNN alone %.4f, "
             "user-kNN alone %.4f, linear alone %.4f, ranker alone %.4f)", served.kind,
             served.weight, served.user_share, served.linear_share, c, best_score, model_alone,
             neighbourhood.knn_valid_ndcg, report.get("user_knn_valid_ndcg@10", float("nan")),
             report.get("linear_valid_ndcg@10", float("nan")),
             report.get("ranker_valid_ndcg@10", float("nan")))
    keep_parts = c > 0  # the ranker reads every part
    return CoocBlend(item_knn, served.weight, inv_temperature,
                     user_knn if served.user_share > 0 or keep_parts else None, served.user_share,
                     served.kind, served.eps,
                     linear if served.linear_share > 0 or keep_parts else None,
                     served.linear_share, ranker if keep_parts else None, c), report
