"""Softmax cross-entropy over a whole catalog, computed in row chunks.

The next-item and item-item losses score every training position against every item: a
(positions, n_items) logit matrix, the largest tensor of a step (1,750 x 12,101 floats = 85 MB
on Amazon Beauty). Written the plain way (``h @ items.T``, a mask, ``F.cross_entropy``) that
matrix is allocated, copied and zero-filled several times per step, forward and backward. On a
2-core AVX2 CPU those passes, and the page faults of each fresh 85 MB allocation, took more time
than the matrix products themselves.

:func:`catalog_cross_entropy` never holds the whole matrix. For each chunk of rows (a few MB,
cache- and allocator-friendly) it computes the logits, their log-sum-exp, and, since the loss is
a scalar, right away the gradients: the chunk's logits become ``softmax - onehot`` in place and
are multiplied into the gradients of ``h`` and ``items``; backward only applies the upstream
factor. Three matrix products per chunk, as the plain expression has. The result equals
``F.cross_entropy(h @ items.T + col_bias, target)`` with the masked entries set to ``-inf``.
"""

from __future__ import annotations

import torch

CPU_CHUNK_BYTES = 4 << 20  # logits per chunk on CPU: cache-sized (4 MB: 137-176 ms per Beauty step,
# 16 MB: 179, 1 MB: 205; one 85 MB matrix with F.cross_entropy: 299)
CUDA_CHUNK_BYTES = 1 << 30  # GPUs prefer few large products


def _chunk_rows(n_rows: int, n_cols: int, device: torch.device, chunk_bytes: int | None) -> int:
    budget = chunk_bytes or (CUDA_CHUNK_BYTES if device.type == "cuda" else CPU_CHUNK_BYTES)
    return max(1, min(n_rows, budget // (4 * max(n_cols, 1))))


class _CatalogCrossEntropy(torch.autograd.Function):
    """Loss and gradients in one pass over the chunks: the loss is a scalar, so its gradients
    are known up to the upstream factor as soon as each chunk's softmax is (the forward would
    otherwise keep every chunk's logits, or backward recompute them: a 4th matrix product)."""

    @staticmethod
    def forward(ctx, h, items, target, mask_rows, mask_cols, col_bias, chunk,  # noqa: ANN001, ANN205
                bias_rows, bias_cols, bias_vals):  # noqa: ANN001
        n = len(h)
        autocast = torch.is_autocast_enabled(h.device.type)  # out= products would bypass it
        need = any(ctx.needs_input_grad[i] for i in (0, 1, 5))
        grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device) if need else None
        grad_items = torch.zeros(items.shape, dtype=torch.float32, device=h.device) if need else None
        grad_bias = (torch.zeros(col_bias.shape, dtype=torch.float32, device=h.device)
                     if need and col_bias is not None else None)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        # mask entries of chunk c: mask_rows (sorted) [bounds[c], bounds[c + 1]); one host copy
        starts = torch.arange(0, n + chunk, chunk, device=h.device)
        bounds = torch.searchsorted(mask_rows, starts).tolist()
        b_bounds = torch.searchsorted(bias_rows, starts).tolist()
        for c, start in enumerate(range(0, n, chunk)):
            stop = min(start + chunk, n)
            rows = torch.arange(stop - start, device=h.device)
            tgt = target[start:stop]
            z = (h[start:stop] @ items.T).float()
            if col_bias is not None:
                z += col_bias.float()
            lo, hi = b_bounds[c], b_bounds[c + 1]
            if hi > lo:
                z[bias_rows[lo:hi] - start, bias_cols[lo:hi]] += bias_vals[lo:hi].float()
            lo, hi = bounds[c], bounds[c + 1]
            if hi > lo:
                z[mask_rows[lo:hi] - start, mask_cols[lo:hi]] = float("-inf")
            picked = z[rows, tgt]
            m = z.amax(dim=1, keepdim=True)
            p = z.sub_(m).exp_()  # unnormalized softmax, in place
            sums = p.sum(dim=1, keepdim=True)
            total += (sums.log().squeeze(1) + m.squeeze(1) - picked).sum(dtype=torch.float64)
            if need:
                p.div_(sums)  # softmax
                p[rows, tgt] -= 1.0
                p.div_(n)
                if not autocast and p.dtype == items.dtype == h.dtype:  # no temporaries
                    torch.mm(p, items, out=grad_h[start:stop])
                    grad_items.addmm_(p.T, h[start:stop])
                else:
                    grad_h[start:stop] = p @ items
                    grad_items += (p.T @ h[start:stop]).float()
                if grad_bias is not None:
                    grad_bias += p.sum(dim=0)
        ctx.save_for_backward(grad_h, grad_items, grad_bias)
        ctx.dtypes = (h.dtype, items.dtype, None if col_bias is None else col_bias.dtype)
        return (total / n).float()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        grad_h, grad_items, grad_bias = ctx.saved_tensors
        dh, di, db = ctx.dtypes
        g = grad.float()
        return ((grad_h * g).to(dh), (grad_items * g).to(di), None, None, None,
                (grad_bias * g).to(db) if grad_bias is not None else None, None, None, None, None)


def catalog_cross_entropy(
    h: torch.Tensor,
    items: torch.Tensor,
    target: torch.Tensor,
    mask_rows: torch.Tensor | None = None,
    mask_cols: torch.Tensor | None = None,
    col_bias: torch.Tensor | None = None,
    chunk_bytes: int | None = None,
    row_bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(h @ items.T + col_bias)`` against ``target``.

    ``h`` (rows, d) and ``items`` (n_items, d) get gradients; ``(mask_rows, mask_cols)`` are
    entries removed from the softmax (set to ``-inf``); a row's own target must not be among
    them (the loss is then infinite, which the trainer's NaN/inf guard reports); ``col_bias``
    (n_items,) is added to every row (e.g. a logQ correction) and gets a gradient when it
    requires one. ``row_bias = (rows, cols, values)`` adds fixed per-entry values to the logits
    (at most one entry per (row, col); no gradient), e.g. a prior model's log-probabilities.
    Runs under autocast like the plain expression would.
    """
    if h.dim() != 2 or items.dim() != 2 or h.shape[1] != items.shape[1]:
        raise ValueError(f"h must be (rows, d) and items (n_items, d), got {tuple(h.shape)} and "
                         f"{tuple(items.shape)}")
    if target.shape != (len(h),):
        raise ValueError(f"target must hold one item per row of h ({len(h)}), got {tuple(target.shape)}")
    if len(h) == 0:
        raise ValueError("no rows to score: the batch has no training position")
    if (mask_rows is None) != (mask_cols is None):
        raise ValueError("mask_rows and mask_cols go together")
    if mask_rows is None:
        mask_rows = mask_cols = torch.zeros(0, dtype=torch.long, device=h.device)
    else:
        order = torch.argsort(mask_rows, stable=True)
        mask_rows, mask_cols = mask_rows[order], mask_cols[order]
    if row_bias is None:
        b_rows = b_cols = torch.zeros(0, dtype=torch.long, device=h.device)
        b_vals = torch.zeros(0, dtype=torch.float32, device=h.device)
    else:
        b_rows, b_cols, b_vals = row_bias
        if not (b_rows.shape == b_cols.shape == b_vals.shape):
            raise ValueError("row_bias rows, cols and values must have the same length")
        order = torch.argsort(b_rows, stable=True)
        b_rows, b_cols, b_vals = b_rows[order], b_cols[order], b_vals[order]
    chunk = _chunk_rows(len(h), len(items), h.device, chunk_bytes)
    return _CatalogCrossEntropy.apply(h, items, target, mask_rows, mask_cols, col_bias, chunk,
                                      b_rows, b_cols, b_vals)
