"""Decoder heads and AdaptiveMerge (per-pixel gates), AGF softmax fusion and SSA: references and Numba kernels.

All tensors one image, channels first. Heads' 1x1 convs to one channel arrive as a
weight vector [C] and a scalar bias.
"""
from __future__ import annotations

import numpy as np

from ._jit import kernel
from .activation import sigmoid_fast, sigmoid_ref, softmax_channels_ref
from .gsa import channel_mean_nb


def gate_head_ref(y, wb, bb, wr, br, boundary=True):
    """(y * (1 + b + r), r, b): b boundary probability (0 without a boundary conv), r region probability."""
    r = sigmoid_ref(np.tensordot(wr, y, 1) + br)
    b = sigmoid_ref(np.tensordot(wb, y, 1) + bb) if boundary else np.zeros_like(r)
    return y + y * b + y * r, r, b


def merge_ref(adapted, skip, r, b, rw, bw):
    return adapted + skip + rw * r * skip + bw * b * skip


def agf_fuse_ref(logits2, f3, t4):
    w = softmax_channels_ref(logits2)
    return w[0:1] * f3 + w[1:2] * t4


def ssa_ref(b, alpha):
    return (1 - alpha) * b + alpha * b * sigmoid_ref(b.mean(0, keepdims=True))


@kernel
def gate_head_nb(y, wb, bb, wr, br, boundary, region, bound):
    """In place y <- y * (1 + b + r); writes region r and boundary b ([H,W]; b = 0 without boundary)."""
    c_n = y.shape[0]
    n = y.size // c_n
    yf, r, b = y.reshape(c_n, n), region.reshape(n), bound.reshape(n)
    for i in range(n):
        r[i] = br
        b[i] = bb
    for c in range(c_n):
        row, wrc, wbc = yf[c], wr[c], wb[c]
        for i in range(n):
            r[i] += wrc * row[i]
        if boundary:
            for i in range(n):
                b[i] += wbc * row[i]
    for i in range(n):
        r[i] = sigmoid_fast(r[i])
        b[i] = sigmoid_fast(b[i]) if boundary else 0.0
    for c in range(c_n):
        row = yf[c]
        for i in range(n):
            row[i] *= 1.0 + b[i] + r[i]


@kernel
def merge_nb(adapted, skip, region, bound, rw, bw, out):
    """out = adapted + skip * (1 + rw * r + bw * b)."""
    c_n = skip.shape[0]
    n = skip.size // c_n
    a, s, o = adapted.reshape(c_n, n), skip.reshape(c_n, n), out.reshape(c_n, n)
    r, b = region.reshape(n), bound.reshape(n)
    for c in range(c_n):
        ar, sr, orow = a[c], s[c], o[c]
        for i in range(n):
            orow[i] = ar[i] + sr[i] * (1.0 + rw * r[i] + bw * b[i])


@kernel
def agf_fuse_nb(logits2, f3, t4, out):
    """out = softmax(logits2)[0] * f3 + softmax(logits2)[1] * t4 (two-way softmax = a sigmoid)."""
    c_n = f3.shape[0]
    n = f3.size // c_n
    lg, a, t, o = logits2.reshape(2, n), f3.reshape(c_n, n), t4.reshape(c_n, n), out.reshape(c_n, n)
    w1 = np.empty(n, dtype=np.float32)
    for i in range(n):
        w1[i] = sigmoid_fast(lg[1, i] - lg[0, i])
    for c in range(c_n):
        ar, tr, orow = a[c], t[c], o[c]
        for i in range(n):
            orow[i] = ar[i] + (tr[i] - ar[i]) * w1[i]


@kernel
def ssa_nb(b, alpha, out):
    """out = b * ((1 - α) + α σ(mean over channels of b))."""
    c_n = b.shape[0]
    n = b.size // c_n
    bf, o = b.reshape(c_n, n), out.reshape(c_n, n)
    gate = np.empty(n, dtype=np.float32)
    channel_mean_nb(bf, gate)
    for i in range(n):
        gate[i] = (1.0 - alpha) + alpha * sigmoid_fast(gate[i])
    for c in range(c_n):
        row, orow = bf[c], o[c]
        for i in range(n):
            orow[i] = row[i] * gate[i]
