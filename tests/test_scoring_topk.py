"""The exact top-K kernel against the plain numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from ecrec_lib.scoring.topk import (
    bf16_gemm_is_safe,
    topk_inner_product,
    topk_numpy_argpartition,
    topk_reference,
)

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _int_data(n, m, d, seed):
    # Small integers: every dot product is exact in fp32 and ties are frequent.
    rng = np.random.default_rng(seed)
    return (rng.integers(-2, 3, (n, d)).astype(np.float32),
            rng.integers(-2, 3, (m, d)).astype(np.float32), rng)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(64, 3000, 8, 10), (40, 900, 16, 100), (9, 5, 4, 10)])
def test_kernel_matches_reference_exactly_with_ties(precision, shape):
    n, m, d, k = shape
    users, items, rng = _int_data(n, m, d, seed=m)
    exclude = [rng.choice(m, rng.integers(0, 4), replace=False) for _ in range(n)]
    mask = rng.random(m) > 0.2
    got = topk_inner_product(users, items, k, exclude=exclude, item_mask=mask,
                             precision=precision, item_chunk=256, threads=1)
    ref = topk_reference(users, items, k, exclude=exclude, item_mask=mask)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.scores, ref.scores)
    if m > k:
        assert got.stats["tie_fallback_rows"] > 0  # the data really had boundary ties


def test_kernel_on_random_floats_same_sets_as_numpy_argpartition():
    rng = np.random.default_rng(3)
    users = rng.standard_normal((50, 32)).astype(np.float32)
    items = rng.standard_normal((20000, 32)).astype(np.float32)
    got = topk_inner_product(users, items, 50, threads=1)
    ref_idx, ref_sc = topk_numpy_argpartition(users, items, 50)
    agree = np.mean([set(a) == set(b) for a, b in zip(got.indices, ref_idx, strict=True)])
    assert agree == 1.0
    np.testing.assert_allclose(got.scores, ref_sc, rtol=1e-5, atol=1e-5)
    assert (np.diff(got.scores, axis=1) <= 0).all()


def test_excluded_and_masked_items_never_returned():
    users, items, _ = _int_data(20, 500, 8, seed=1)
    best = topk_reference(users, items, 5).indices
    exclude = [row[:2] for row in best]  # each user's two best items
    mask = np.ones(500, bool)
    mask[best[:, 2]] = False  # and their third best is out of stock
    got = topk_inner_product(users, items, 5, exclude=exclude, item_mask=mask, threads=1)
    for u in range(20):
        assert not set(got.indices[u]) & (set(exclude[u]) | set(np.flatnonzero(~mask)))


def test_fewer_eligible_items_than_k_pads_with_minus_one():
    users, items, _ = _int_data(3, 6, 4, seed=2)
    mask = np.array([True, True, False, True, False, False])
    got = topk_inner_product(users, items, 5, item_mask=mask, exclude=[[0], [], []], threads=1)
    assert (got.indices[0] >= 0).sum() == 2 and (got.indices[1] >= 0).sum() == 3
    assert np.isneginf(got.scores[0, 2:]).all()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same width"):
        topk_inner_product(np.zeros((2, 3)), np.zeros((4, 5)), 2)
    with pytest.raises(ValueError, match="k must be positive"):
        topk_inner_product(np.zeros((2, 3)), np.zeros((4, 3)), 0)
    with pytest.raises(ValueError, match="item_mask"):
        topk_inner_product(np.zeros((2, 3)), np.zeros((4, 3)), 2, item_mask=np.ones(3, bool))


def test_bf16_probe_runs():
    assert bf16_gemm_is_safe("cpu", 16) in (True, False)


@pytest.mark.gpu
def test_cuda_kernel_matches_cpu():
    users, items, _ = _int_data(100, 5000, 16, seed=5)
    cpu = topk_inner_product(users, items, 20, device="cpu", threads=1)
    gpu = topk_inner_product(users, items, 20, device="cuda")
    np.testing.assert_array_equal(cpu.indices, gpu.indices)


faiss = pytest.importorskip("faiss")


@pytest.mark.parametrize("shape", [(64, 3000, 8, 10), (40, 900, 16, 100), (9, 5, 4, 10),
                                   (300, 2000, 4, 20)])
@pytest.mark.parametrize("blocks", [(1024, 1024), (16, 64)])
def test_faiss_path_matches_kernel_and_reference_with_exclusions_and_ties(shape, blocks):
    from ecrec_lib.scoring.topk_faiss import topk_faiss

    n, m, d, k = shape
    users, items, rng = _int_data(n, m, d, seed=m + 1)
    # Histories of very different lengths (one user has seen most of the catalog), repeats
    # included; small blocks put users and exclusions across many heaps and GEMM chunks.
    exclude = [rng.choice(m, rng.integers(0, 4), replace=True) for _ in range(n)]
    exclude[0] = rng.choice(m, (3 * m) // 4, replace=False)
    mask = rng.random(m) > 0.2
    got = topk_faiss(users, items, k, exclude=exclude, item_mask=mask, threads=2,
                     user_block=blocks[0], item_chunk=blocks[1])
    kern = topk_inner_product(users, items, k, exclude=exclude, item_mask=mask, threads=1)
    ref = topk_reference(users, items, k, exclude=exclude, item_mask=mask)
    np.testing.assert_array_equal(got.indices, kern.indices)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_array_equal(got.scores, ref.scores)
    for u in range(n):
        assert not set(got.indices[u]) & set(exclude[u])
    if d <= 8 and m > 4 * k:
        # Few distinct small-integer scores: ties at the k-th place were recomputed.
        assert got.stats["tie_fallback_rows"] > 0


def test_faiss_path_same_sets_as_kernel_on_random_floats():
    from ecrec_lib.scoring.topk_faiss import topk_faiss

    rng = np.random.default_rng(4)
    users = rng.standard_normal((200, 32)).astype(np.float32)
    items = rng.standard_normal((20000, 32)).astype(np.float32)
    exclude = [rng.choice(20000, rng.integers(0, 60), replace=False) for _ in range(200)]
    got = topk_faiss(users, items, 50, exclude=exclude, threads=2)
    kern = topk_inner_product(users, items, 50, exclude=exclude, threads=1)
    np.testing.assert_array_equal(got.indices, kern.indices)
    np.testing.assert_allclose(got.scores, kern.scores, rtol=1e-5, atol=1e-5)
    assert got.stats["tie_fallback_rows"] <= 2  # float ties are rare: the heaps decide the rows


def test_topk_exact_chooses_a_path_and_names_bad_methods():
    from ecrec_lib.scoring.topk_faiss import choose_method, topk_exact

    assert choose_method("cpu", "fp32") == "faiss"
    assert choose_method("cuda", "fp32") == "kernel"
    assert choose_method("cpu", "bf16") == "kernel"
    users, items, _ = _int_data(5, 300, 8, seed=7)
    a = topk_exact(users, items, 7, device="cpu", method="faiss")
    b = topk_exact(users, items, 7, device="cpu", method="kernel", threads=1)
    c = topk_exact(users, items, 7, device="cpu")
    assert a.stats["method"] == "faiss" and "method" not in b.stats
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(c.indices, b.indices)
    with pytest.raises(ValueError, match="method must be"):
        topk_exact(users, items, 7, method="annoy")
    with pytest.raises(ValueError, match="same width"):
        topk_exact(np.zeros((2, 3)), np.zeros((4, 5)), 2)


def test_topk_exact_publishes_the_same_bits_whichever_path_runs():
    """The path depends on the machine (a GPU, faiss installed); two machines must publish equal
    scores, so both paths' picks are rescored by one fixed summation (bit-identical, same
    order)."""
    from ecrec_lib.scoring.topk_faiss import topk_exact

    rng = np.random.default_rng(9)
    users = rng.standard_normal((300, 64)).astype(np.float32)
    items = rng.standard_normal((5000, 64)).astype(np.float32)
    exclude = [rng.choice(5000, rng.integers(0, 30), replace=False) for _ in range(300)]
    a = topk_exact(users, items, 40, exclude=exclude, device="cpu", method="faiss", threads=2)
    b = topk_exact(users, items, 40, exclude=exclude, device="cpu", method="kernel", threads=1)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.scores.tobytes() == b.scores.tobytes()
    assert (np.diff(a.scores, axis=1) <= 0).all()  # still best first


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_threshold_reads_few_scores_per_user_and_stays_exact(precision):
    # Many chunks of random floats: after the first chunk only groups reaching the running
    # threshold are read, so far fewer scores than the catalog are merged per user; every
    # user's best items sit in the chunks they excluded or in the last one, to test the rise.
    rng = np.random.default_rng(7)
    users = rng.standard_normal((60, 16)).astype(np.float32)
    items = rng.standard_normal((20000, 16)).astype(np.float32)
    best = topk_reference(users, items, 30).indices
    exclude = [row[:10] for row in best]
    got = topk_inner_product(users, items, 20, exclude=exclude, precision=precision,
                             item_chunk=1024, threads=1)
    ref = topk_reference(users, items, 20, exclude=exclude)
    if precision == "fp32":
        np.testing.assert_array_equal(got.indices, ref.indices)
    else:  # re-scored in another summation order: the same sets, scores within rounding
        assert all(set(a) == set(b) for a, b in zip(got.indices, ref.indices, strict=True))
        np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-5, atol=1e-5)
    assert got.stats["candidates_per_user"] < 0.05 * len(items)
