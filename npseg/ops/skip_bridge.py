"""The skip bridges of MicroAUNet (LSCAB) and MALUNet (SCAB): channel gates from the five skips'
global averages (a 3-tap conv along the concatenated channel vector, a linear layer, sigmoid),
a spatial gate per skip (channel mean and max, a 7x7 conv: MicroAUNet's reflect-padded by 3,
MALUNet's dilated by 3, zero-padded by 9, with a bias; sigmoid), and the fusion, in both a
per-pixel affine of the skip: MicroAUNet t' = t * (1 + alpha a[c] + beta s[y, x]), MALUNet
t' = a u + s t with u = t (1 + s), i.e. t * (a[c] + (1 + a[c]) s[y, x]).
NumPy references, Numba kernels, validated steps.

The engine applies the fusion lazily, where the decoder adds the skip: acc += t' in one pass.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .activation import sigmoid_ref
from .conv import conv2d_ref

REFLECT = 3  # the spatial gate's 7x7 conv reads a reflect-padded border of 3


def channel_conv1d_ref(z, taps):
    """z'[i] = taps[0] z[i-1] + taps[1] z[i] + taps[2] z[i+1] along a vector, zero ends."""
    zp = np.concatenate([[0.0], z, [0.0]]).astype(z.dtype)
    return taps[0] * zp[:-2] + taps[1] * zp[1:-1] + taps[2] * zp[2:]


def channel_gates_ref(skips, taps, w, b):
    """sigmoid(W conv1d(concat of every skip's per-channel mean) + b) -> [S], S = total channels."""
    z = np.concatenate([t.mean((1, 2)) for t in skips])  # [S]
    return sigmoid_ref(w @ channel_conv1d_ref(z, taps) + b)


def reflect_pad_ref(x, pad):
    """PyTorch's 'reflect' padding of [C, H, W] (the edge sample is not repeated)."""
    return np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")


def spatial_gate_ref(t, w, bias=None, dilation=1, reflect=True):
    """sigmoid(conv7x7([mean_c t, max_c t])) -> [1, h, w], w [1, 2, 7, 7]: reflect-padded by 3
    (dilation 1), or zero-padded by 3 * dilation."""
    m = np.stack([t.mean(0), t.max(0)])  # [2, h, w]
    b = np.zeros(1, t.dtype) if bias is None else bias
    if reflect:
        return sigmoid_ref(conv2d_ref(reflect_pad_ref(m, REFLECT), w, b))
    return sigmoid_ref(conv2d_ref(m, w, b, padding=3 * dilation, dilation=dilation))


def bridge_ref(t, a, s, alpha, beta):
    """MicroAUNet's fusion t * (1 + alpha * a[c] + beta * s[y, x]) for t [C, h, w], a [C], s [1, h, w]."""
    return t * (1.0 + alpha * a[:, None, None] + beta * s)


def sequential_bridge_ref(t, a, s):
    """MALUNet's fusion a u + s t, u = t (1 + s)."""
    return a[:, None, None] * (t + s * t) + s * t


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import inline, kernel  # noqa: E402
from .activation import sigmoid_fast  # noqa: E402
from .steps import _arrays, _need  # noqa: E402


@kernel
def channel_gates_nb(sums, counts, taps, w, b, gates):
    """gates = sigmoid(W conv1d(z) + b), z[i] = sums[i] / counts[i] (float64 sums of each channel)."""
    n = sums.shape[0]
    z = np.empty(n + 2)
    z[0] = 0.0
    z[n + 1] = 0.0
    for i in range(n):
        z[i + 1] = sums[i] / counts[i]
    zc = np.empty(n)
    for i in range(n):
        zc[i] = taps[0] * z[i] + taps[1] * z[i + 1] + taps[2] * z[i + 2]
    for o in range(n):
        acc = np.float64(b[o])
        for i in range(n):
            acc += w[o, i] * zc[i]
        gates[o] = sigmoid_fast(np.float32(acc))


@kernel
def _reflect(i, n):
    """Source index of padded index i - REFLECT (PyTorch reflect, n >= 4)."""
    j = i - REFLECT
    if j < 0:
        return -j
    if j >= n:
        return 2 * (n - 1) - j
    return j


@kernel
def _mean_max_maps(t, pad, maps, sums):
    """maps[0/1, pad + y, pad + x] = mean / max over channels of t; sums[c] (float64, when
    non-empty) = the sum of channel c."""
    c_n, h, width = t.shape
    inv_c = np.float32(1.0 / c_n)
    if sums.shape[0] > 0:
        sums[:] = 0.0
    for y in range(h):
        mean, top = maps[0, y + pad, pad:pad + width], maps[1, y + pad, pad:pad + width]
        for x in range(width):
            mean[x] = t[0, y, x]
            top[x] = t[0, y, x]
        for c in range(1, c_n):
            line = t[c, y]
            for x in range(width):
                mean[x] += line[x]
                top[x] = max(top[x], line[x])
        for x in range(width):
            mean[x] *= inv_c
        if sums.shape[0] > 0:
            for c in range(c_n):
                line = t[c, y]
                total = 0.0
                for x in range(width):
                    total += np.float64(line[x])
                sums[c] += total


@kernel
def _reflect_border(maps, h, width):
    hp, wp = h + 2 * REFLECT, width + 2 * REFLECT
    for k in range(2):  # columns of the interior rows, then whole rows
        for y in range(REFLECT, REFLECT + h):
            for x in range(REFLECT):
                maps[k, y, x] = maps[k, y, REFLECT + _reflect(x, width)]
                maps[k, y, wp - 1 - x] = maps[k, y, REFLECT + _reflect(wp - 1 - x, width)]
        for y in range(REFLECT):
            maps[k, y] = maps[k, REFLECT + _reflect(y, h)]
            maps[k, hp - 1 - y] = maps[k, REFLECT + _reflect(hp - 1 - y, h)]


@kernel
def spatial_gate_nb(t, w, bias, dilation, reflect, gate, sums):
    """gate[y, x] = sigmoid(bias + 7x7 conv (dilation) of the padded [mean_c, max_c] maps of t
    [C, h, w]): reflect-padded by 3, or zero-padded by 3 * dilation; on the way, sums[c] = the
    float64 sum of channel c when sums is non-empty (the channel gates' global average)."""
    c_n, h, width = t.shape
    pad = 3 * dilation
    maps = np.zeros((2, h + 2 * pad, width + 2 * pad), dtype=np.float32)
    _mean_max_maps(t, pad, maps, sums)
    if reflect:
        _reflect_border(maps, h, width)
    if dilation == 1:
        _gate_rows(maps, w, bias, h, width, gate, 1)
    else:
        _gate_rows(maps, w, bias, h, width, gate, 3)


@inline
def _gate_rows(maps, w, bias, h, width, gate, d):
    """gate = sigmoid(bias + the 98 taps); d is a literal at each call site (constant offsets)."""
    acc = np.empty(width, dtype=np.float32)
    for y in range(h):
        acc[:] = bias
        for k in range(2):
            for u in range(7):
                line = maps[k, y + u * d]
                w0, w1, w2, w3, w4, w5, w6 = (w[0, k, u, 0], w[0, k, u, 1], w[0, k, u, 2], w[0, k, u, 3],
                                              w[0, k, u, 4], w[0, k, u, 5], w[0, k, u, 6])
                for x in range(width):
                    acc[x] += ((w0 * line[x] + w1 * line[x + d] + w2 * line[x + 2 * d] + w3 * line[x + 3 * d])
                               + (w4 * line[x + 4 * d] + w5 * line[x + 5 * d] + w6 * line[x + 6 * d]))
        for x in range(width):
            gate[y, x] = sigmoid_fast(acc[x])


@kernel
def gated_sums_nb(t, s, sums):
    """sums[c] = float64 sum of t[c] * (1 + s) (the global averages MALUNet's channel gates read)."""
    for c in range(t.shape[0]):
        total = 0.0
        for y in range(t.shape[1]):
            line, plane = t[c, y], s[y]
            for x in range(t.shape[2]):
                total += np.float64(line[x] + line[x] * plane[x])
        sums[c] = total


@kernel
def bridge_add_nb(acc, t, a, s, coeffs, stats):
    """acc += t * ((p + q a[c]) + (r + m a[c]) s[y, x]), coeffs = (p, q, r, m); with a non-empty
    stats [C, 2], the float64 per-channel sum and sum of squares of the result (for the next
    GroupNorm)."""
    c_n, h, width = t.shape
    p, q, r, m = coeffs[0], coeffs[1], coeffs[2], coeffs[3]
    for c in range(c_n):
        base, beta = p + q * a[c], r + m * a[c]
        total, total_sq = 0.0, 0.0
        for y in range(h):
            dst, line, plane = acc[c, y], t[c, y], s[y]
            for x in range(width):
                dst[x] += line[x] * (base + beta * plane[x])
            if stats.shape[0] > 0:
                for x in range(width):
                    v = np.float64(dst[x])
                    total += v
                    total_sq += v * v
        if stats.shape[0] > 0:
            stats[c, 0] = total
            stats[c, 1] = total_sq


def channel_gates(sums, counts, taps, w, b, gates):
    """gates [S] from float64 per-channel sums [S] over counts[S] positions (see channel_gates_nb)."""
    _arrays(taps, w, b, gates)
    n = gates.shape[0]
    _need(sums.dtype == counts.dtype == np.float64 and sums.shape == counts.shape == (n,)
          and taps.shape == (3,) and w.shape == (n, n) and b.shape == (n,), "channel_gates: shapes")
    return [partial(channel_gates_nb, sums, counts, taps, w, b, gates)]


def spatial_gate(t, w, gate, sums=None, bias=0.0, dilation=1, reflect=True):
    """gate [h, w] of t [C, h, w] (see spatial_gate_nb), and optionally sums [C] (float64, may be a
    slice of a longer vector)."""
    _arrays(t, w, gate)
    _need(t.ndim == 3 and w.shape == (1, 2, 7, 7) and gate.shape == t.shape[1:], "spatial_gate: shapes")
    sums = np.zeros(0) if sums is None else sums
    _need(sums.dtype == np.float64 and sums.shape in ((0,), (t.shape[0],)) and sums.flags.writeable,
          "spatial_gate: sums")
    _need(dilation in (1, 3) and (not reflect or dilation == 1),
          "spatial_gate: dilation 1 (reflect or zero padding) or 3")
    _need(not reflect or min(t.shape[1:]) > REFLECT,
          f"spatial_gate: reflect padding {REFLECT} needs maps over {REFLECT}, got {t.shape}")
    return [partial(spatial_gate_nb, t, w, np.float32(bias), int(dilation), bool(reflect), gate, sums)]


def gated_sums(t, s, sums):
    _arrays(t, s)
    _need(t.ndim == 3 and s.shape == t.shape[1:] and sums.dtype == np.float64 and sums.shape == (t.shape[0],),
          "gated_sums: shapes")
    return [partial(gated_sums_nb, t, s, sums)]


def bridge_add(acc, t, a, s, coeffs, stats=None):
    """In place acc += t * ((p + q a[c]) + (r + m a[c]) s), coeffs = (p, q, r, m): MicroAUNet
    (1, alpha, beta, 0), MALUNet (0, 1, 1, 1); optional stats [C, 2] float64 of the result."""
    _arrays(acc, t, a, s)
    _need(acc.shape == t.shape and t.ndim == 3 and a.shape == (t.shape[0],) and s.shape == t.shape[1:],
          "bridge_add: shapes")
    _need(not np.shares_memory(acc, t), "bridge_add: operands overlap")
    if stats is None:
        stats = np.zeros((0, 2), np.float64)
    _need(stats.dtype == np.float64 and stats.shape in ((0, 2), (t.shape[0], 2)), "bridge_add: stats")
    return [partial(bridge_add_nb, acc, t, a, s, np.asarray(coeffs, np.float32).reshape(4), stats)]
