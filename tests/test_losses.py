"""The chunked catalog cross-entropy equals the plain expression, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ecrec_lib.training.losses import catalog_cross_entropy


def _plain(h, items, target, rows, cols, bias):  # noqa: ANN001, ANN202
    z = h @ items.T
    if bias is not None:
        z = z + bias
    if rows is not None:
        z = z.index_put((rows, cols), torch.tensor(float("-inf"), dtype=z.dtype))
    return F.cross_entropy(z, target)


@pytest.mark.parametrize("chunk_bytes", [None, 4 * 50 * 3])  # one chunk; 3 rows per chunk
@pytest.mark.parametrize("with_mask,with_bias", [(False, False), (True, False), (True, True)])
def test_catalog_cross_entropy_matches_plain_softmax(chunk_bytes, with_mask, with_bias) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(0)
    h = torch.randn(11, 8, generator=g, requires_grad=True)
    items = torch.randn(50, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 50, (11,), generator=g)
    rows = cols = bias = None
    if with_mask:  # unsorted, with a repeat, never a row's target
        rows = torch.tensor([7, 0, 3, 3, 10, 0])
        cols = (target[rows] + torch.tensor([1, 2, 3, 3, 5, 7])) % 50
    if with_bias:
        bias = torch.randn(50, generator=g, requires_grad=True)
    want = _plain(h, items, target, rows, cols, bias)
    want_grads = torch.autograd.grad(want, [h, items] + ([bias] if with_bias else []))
    got = catalog_cross_entropy(h, items, target, rows, cols, bias, chunk_bytes=chunk_bytes)
    got_grads = torch.autograd.grad(got, [h, items] + ([bias] if with_bias else []))
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk_bytes", [None, 4 * 50 * 3])
def test_catalog_cross_entropy_row_bias_adds_fixed_entries_to_the_logits(chunk_bytes) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(2)
    h = torch.randn(11, 8, generator=g, requires_grad=True)
    items = torch.randn(50, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 50, (11,), generator=g)
    # unsorted rows, one entry on a target, rows 4 and 9 without entries, a masked column too
    b_rows = torch.tensor([10, 0, 3, 0, 7, 2, 5])
    b_cols = torch.tensor([4, 9, int(target[3]), 1, 30, 2, 49])
    b_vals = torch.tensor([2.0, 1.5, 3.0, 0.5, 1.0, 4.0, 0.25])
    dense = torch.zeros(11, 50).index_put((b_rows, b_cols), b_vals)
    m_rows, m_cols = torch.tensor([7]), torch.tensor([30 if int(target[7]) != 30 else 31])
    z = (h @ items.T + dense).index_put((m_rows, m_cols), torch.tensor(float("-inf")))
    want = F.cross_entropy(z, target)
    want_grads = torch.autograd.grad(want, [h, items])
    got = catalog_cross_entropy(h, items, target, m_rows, m_cols, chunk_bytes=chunk_bytes,
                                row_bias=(b_rows, b_cols, b_vals))
    got_grads = torch.autograd.grad(got, [h, items])
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="same length"):
        catalog_cross_entropy(h, items, target, row_bias=(b_rows, b_cols[:2], b_vals))


def test_catalog_cross_entropy_refuses_bad_shapes_and_a_masked_target_is_infinite() -> None:
    h, items = torch.randn(2, 4), torch.randn(5, 4)
    target = torch.tensor([1, 2])
    # the trainer never masks a target; if it did, its NaN/inf guard would stop the run
    assert torch.isinf(catalog_cross_entropy(h, items, target, torch.tensor([0]), torch.tensor([1])))
    with pytest.raises(ValueError, match="one item per row"):
        catalog_cross_entropy(h, items, torch.tensor([1]))
    with pytest.raises(ValueError, match="go together"):
        catalog_cross_entropy(h, items, target, mask_rows=torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(rows, d\)"):
        catalog_cross_entropy(h, torch.randn(5, 3), target)


def test_catalog_cross_entropy_under_cpu_autocast_is_close_to_the_plain_expression() -> None:
    g = torch.Generator().manual_seed(1)
    h = torch.randn(9, 8, generator=g, requires_grad=True)
    items = torch.randn(40, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 40, (9,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy((h @ items.T).float(), target)
        got = catalog_cross_entropy(h, items, target, chunk_bytes=4 * 40 * 4)
    want_grads = torch.autograd.grad(want, [h, items])
    got_grads = torch.autograd.grad(got, [h, items])
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-3)
