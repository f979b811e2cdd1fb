"""Channel gates from global average pooling (squeeze-and-excitation style): NumPy reference,
Numba kernels and the validated step of the residual tanh gate.

gate = act(W @ GAP(x) + b), one value per channel, act = sigmoid (AULUNet's AKF blend weight)
or tanh (its RGF bottleneck scale, y = x * (1 + gate)). The gate depends on the whole map, so
the fast engine computes it per frame from the input of the block.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np

from .activation import sigmoid_ref
from .pool import global_avg_pool_ref

GATE_SIGMOID, GATE_TANH = 0, 1


def tanh_ref(x):
    return np.tanh(x)


def channel_gate_ref(x, w, b, kind):
    """act(W @ GAP(x) + b) for x [C, H, W], w [G, C] or [G, C, 1, 1], b [G] or None -> [G]."""
    z = w.reshape(w.shape[0], -1) @ global_avg_pool_ref(x)  # [G]
    if b is not None:
        z = z + b
    return sigmoid_ref(z) if kind == GATE_SIGMOID else tanh_ref(z)


def residual_gate_ref(x, w):
    """x * (1 + tanh(W @ GAP(x))): a per-channel rescale by a factor in (0, 2)."""
    return x * (1.0 + channel_gate_ref(x, w, None, GATE_TANH))[:, None, None]


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import kernel  # noqa: E402
from .pool import global_avg_pool_nb  # noqa: E402
from .steps import _arrays, _need  # noqa: E402


@kernel
def channel_gate_nb(padded, pad, h, width, w, b, kind, means, gate):
    """gate[g] = act(sum_c w[g, c] * mean(x[c]) + b[g]) in float64, x the h x width interior of a
    flat bordered buffer (conv.pad_nb layout); `means` [C] float64 is scratch."""
    global_avg_pool_nb(padded, pad, h, width, means)
    for g in range(w.shape[0]):
        z = b[g]
        for c in range(w.shape[1]):
            z += w[g, c] * means[c]
        gate[g] = 1.0 / (1.0 + math.exp(-z)) if kind == GATE_SIGMOID else math.tanh(z)


@kernel
def residual_gate_nb(x, w, b, means, gate):
    """In place x[c] *= 1 + tanh(w @ GAP(x) + b)[c] for x [C, H, W]."""
    c_n, h, width = x.shape
    flat = x.reshape(c_n, h * width)
    channel_gate_nb(flat, 0, h, width, w, b, GATE_TANH, means, gate)
    for c in range(c_n):
        s = np.float32(1.0 + gate[c])
        row = flat[c]
        for i in range(h * width):
            row[i] *= s


def residual_gate(x, w):
    """In place x <- x * (1 + tanh(W @ GAP(x))), w [C, C] or [C, C, 1, 1] (no bias)."""
    _arrays(x)
    _need(x.ndim == 3, f"residual_gate: x {x.shape}")
    c = x.shape[0]
    w2 = np.ascontiguousarray(np.asarray(w, np.float64).reshape(w.shape[0], -1))
    _need(w2.shape == (c, c), f"residual_gate: weight {w.shape} for {c} channels")
    return [partial(residual_gate_nb, x, w2, np.zeros(c), np.zeros(c), np.zeros(c))]
