"""External attention (MALUNet's EA) with its 1x1 convs folded at load:
z = W_out renorm(softmax_n(W_in x + b_in)), where softmax_n runs over the n = h*w positions of each
of the 4C memory slots and renorm divides each position's slot vector by (1e-9 + its sum).
NumPy reference, the Numba kernel of the two normalisations, validated step; the two matrix
products run in np.dot.
"""
from __future__ import annotations

from functools import partial

import numpy as np

RENORM_EPS = 1e-9


def slot_softmax_ref(a):
    """softmax over axis 1 of a [S, n] (max subtracted), then each column divided by (1e-9 + its sum)."""
    e = np.exp(a - a.max(1, keepdims=True))
    e = e / e.sum(1, keepdims=True)
    return e / (RENORM_EPS + e.sum(0, keepdims=True))


def external_attention_ref(x, w_in, b_in, w_out):
    """x [C, h, w] -> W_out slot_softmax(W_in x + b_in) [C', h, w]; w_in [S, C], b_in [S], w_out [C', S]."""
    c, h, w = x.shape
    a = slot_softmax_ref(w_in @ x.reshape(c, h * w) + b_in[:, None])  # [S, n]
    return (w_out @ a).reshape(-1, h, w)


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import kernel  # noqa: E402
from .steps import _arrays, _need  # noqa: E402


@kernel
def slot_softmax_nb(a, bias, column_sums):
    """In place a = slot_softmax_ref(a + bias[:, None]) for a [S, n]; exponentials in float64."""
    slots, n = a.shape
    column_sums[:] = 0.0
    for s in range(slots):
        row, b = a[s], bias[s]
        top = row[0] + b
        for p in range(n):
            top = max(top, row[p] + b)
        total = 0.0
        for p in range(n):
            e = np.exp(np.float64(row[p] + b - top))
            row[p] = e
            total += e
        inv = 1.0 / total
        for p in range(n):
            v = row[p] * inv
            row[p] = v
            column_sums[p] += v
    for p in range(n):
        column_sums[p] = 1.0 / (RENORM_EPS + column_sums[p])
    for s in range(slots):
        row = a[s]
        for p in range(n):
            row[p] = row[p] * column_sums[p]


def slot_softmax(a, bias):
    """In place, a [S, n] float32 (see slot_softmax_nb)."""
    _arrays(a, bias)
    _need(a.ndim == 2 and bias.shape == (a.shape[0],), f"slot_softmax: a {a.shape}, bias {bias.shape}")
    return [partial(slot_softmax_nb, a, bias, np.zeros(a.shape[1], np.float64))]
