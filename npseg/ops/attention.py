"""The attention gates of UltraLightUNet: CBAM channel and spatial attention, and the grouped
attention gate on a skip. NumPy references; Numba kernels below."""
from __future__ import annotations

import numpy as np

from .activation import relu_ref, sigmoid_ref
from .conv import conv2d_ref


def channel_attention_ref(x, w1, w2):
    """Channel gate [C] of x [C, H, W]: sigmoid(MLP(mean) + MLP(max)) over all positions, one MLP
    w2 @ relu(w1 @ v) (w1 [h, C, 1, 1], w2 [C, h, 1, 1], no biases) for both descriptors."""
    a, b = w1.reshape(w1.shape[0], -1), w2.reshape(w2.shape[0], -1)
    return sigmoid_ref(b @ relu_ref(a @ x.mean((1, 2))) + b @ relu_ref(a @ x.max((1, 2))))


def spatial_attention_ref(x, w):
    """Pixel gate [1, H, W] of x [C, H, W]: sigmoid of a 7x7 conv (w [1, 2, 7, 7], zero padding,
    no bias) of the channel mean and the channel max, in that order."""
    return sigmoid_ref(conv2d_ref(np.stack([x.mean(0), x.max(0)]), w, np.zeros(1, x.dtype), padding=3))


def attention_gate_ref(g, x, wg, bg, wx, bx, wpsi, bpsi):
    """Gate [1, h, w] on the skip x from the decoder feature g (both [C, h, w], BN folded):
    sigmoid(psi(relu(Gg(g) + Gx(x)))), Gg/Gx 3x3 convs with C/2 groups of 2 channels."""
    half = g.shape[0] // 2
    p = relu_ref(conv2d_ref(g, wg, bg, padding=1, groups=half) + conv2d_ref(x, wx, bx, padding=1, groups=half))
    return sigmoid_ref(conv2d_ref(p, wpsi, bpsi))


# ---- Numba kernels -------------------------------------------------------------------------
from functools import partial  # noqa: E402

from ._jit import inline, kernel  # noqa: E402
from .activation import sigmoid_fast  # noqa: E402
from .steps import _arrays, _need  # noqa: E402

_f = np.float32


@kernel
def channel_attention_nb(x, w1, w2, gate, row_sum, row_max):
    """gate [C] = channel_attention_ref(x, w1, w2): w1 [h, C], w2 [C, h]. Each channel's sum and
    maximum run elementwise along a row (row_sum, row_max [w]: a scalar max reduction does not
    vectorise, this does); the float32 column sums go to float64 every 64 rows."""
    c_n, h, width = x.shape
    avg, peak = np.empty(c_n), np.empty(c_n)
    for c in range(c_n):
        total = 0.0
        for i in range(width):
            row_sum[i], row_max[i] = 0.0, x[c, 0, i]
        for y in range(h):
            for i in range(width):
                row_sum[i] += x[c, y, i]
                row_max[i] = max(row_max[i], x[c, y, i])
            if y % 64 == 63 or y == h - 1:
                total += row_sum.astype(np.float64).sum()
                row_sum[:] = 0.0
        avg[c], peak[c] = total / (h * width), row_max.max()
    hidden = np.maximum(w1.astype(np.float64) @ avg, 0.0) + np.maximum(w1.astype(np.float64) @ peak, 0.0)
    logit = w2.astype(np.float64) @ hidden  # the second layer is linear: one product for both paths
    for c in range(c_n):
        gate[c] = sigmoid_fast(_f(logit[c]))


@kernel
def spatial_gate_nb(x, gate, w, desc, out):
    """out = sa * gate[c] * x[c], sa = spatial_attention_ref(gate * x, w): x [C, h, w], gate [C],
    w [2, 7, 7], desc [2, h + 6, w + 6] zero-bordered scratch (border never written)."""
    c_n, h, width = x.shape
    inv_c = _f(1.0 / c_n)
    for y in range(h):
        g = gate[0]
        for i in range(width):
            desc[0, y + 3, i + 3] = g * x[0, y, i]
            desc[1, y + 3, i + 3] = g * x[0, y, i]
        for c in range(1, c_n):
            g = gate[c]
            for i in range(width):
                v = g * x[c, y, i]
                desc[0, y + 3, i + 3] += v
                desc[1, y + 3, i + 3] = max(desc[1, y + 3, i + 3], v)
        for i in range(width):
            desc[0, y + 3, i + 3] *= inv_c
    acc = np.empty(width, _f)
    for y in range(h):
        for i in range(width):
            acc[i] = 0.0
        for d in range(2):
            for ky in range(7):
                k0, k1, k2, k3 = w[d, ky, 0], w[d, ky, 1], w[d, ky, 2], w[d, ky, 3]
                k4, k5, k6 = w[d, ky, 4], w[d, ky, 5], w[d, ky, 6]
                r = y + ky
                for i in range(width):
                    acc[i] += (k0 * desc[d, r, i] + k1 * desc[d, r, i + 1] + k2 * desc[d, r, i + 2]
                               + k3 * desc[d, r, i + 3] + k4 * desc[d, r, i + 4] + k5 * desc[d, r, i + 5]
                               + k6 * desc[d, r, i + 6])
        for i in range(width):
            acc[i] = sigmoid_fast(acc[i])
        for c in range(c_n):
            g = gate[c]
            for i in range(width):
                out[c, y, i] = acc[i] * (g * x[c, y, i])


@inline
def _group_taps3x3(acc, planes, kg, kx, y, n):
    """acc[i] += the 36 taps of one gate group at output row y: kg, kx [2, 3, 3] on the
    zero-bordered planes 0, 1 (the decoder feature's pair) and 2, 3 (the skip's pair); one
    store per 36 FMAs, direct 3-D indexing (a row slice per call costs reference counting)."""
    for q in range(4):
        k = kg[q] if q < 2 else kx[q - 2]
        k00, k01, k02, k10, k11, k12, k20, k21, k22 = (k[0, 0], k[0, 1], k[0, 2], k[1, 0], k[1, 1], k[1, 2],
                                                       k[2, 0], k[2, 1], k[2, 2])
        for i in range(n):
            acc[i] += (k00 * planes[q, y, i] + k01 * planes[q, y, i + 1] + k02 * planes[q, y, i + 2]
                       + k10 * planes[q, y + 1, i] + k11 * planes[q, y + 1, i + 1] + k12 * planes[q, y + 1, i + 2]
                       + k20 * planes[q, y + 2, i] + k21 * planes[q, y + 2, i + 1] + k22 * planes[q, y + 2, i + 2])


@kernel
def attention_gate_add_nb(u, skip, wg, bg, wx, bx, wpsi, bpsi, planes, logit):
    """In place u += skip * attention_gate_ref(u, skip, ...): wg, wx [C/2, 2, 3, 3], bg, bx [C/2],
    wpsi [C/2], bpsi [1]. planes [4, h + 2, w + 2]: zero-bordered copies of the channel pair of u
    and of skip a group reads (the border is never written); logit [h, w] scratch."""
    c_n, h, width = u.shape
    acc = np.empty(width, _f)
    for y in range(h):
        for i in range(width):
            logit[y, i] = bpsi[0]
    for j in range(c_n // 2):
        for r in range(2):
            for y in range(h):
                for i in range(width):
                    planes[r, y + 1, i + 1] = u[2 * j + r, y, i]
                    planes[2 + r, y + 1, i + 1] = skip[2 * j + r, y, i]
        bias, wj = bg[j] + bx[j], wpsi[j]
        for y in range(h):
            for i in range(width):
                acc[i] = bias
            _group_taps3x3(acc, planes, wg[j], wx[j], y, width)
            for i in range(width):
                logit[y, i] += wj * max(acc[i], _f(0.0))
    for y in range(h):
        for i in range(width):
            logit[y, i] = sigmoid_fast(logit[y, i])
    for c in range(c_n):
        for y in range(h):
            for i in range(width):
                u[c, y, i] += skip[c, y, i] * logit[y, i]


def channel_attention(x, w1, w2, gate):
    """gate [C] = channel_attention_ref(x, w1, w2)."""
    _arrays(x, gate)
    c = x.shape[0]
    w1, w2 = (np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=_f) for a in (w1, w2))
    _need(x.ndim == 3 and gate.shape == (c,) and w1.shape[1] == c and w2.shape == (c, w1.shape[0]),
          f"channel_attention: x {x.shape}, w1 {w1.shape}, w2 {w2.shape}, gate {gate.shape}")
    return [partial(channel_attention_nb, x, w1, w2, gate, np.empty(x.shape[2], _f), np.empty(x.shape[2], _f))]


def spatial_gate(x, gate, w, out):
    """out = spatial_attention_ref(gate * x, w) * gate * x (see spatial_gate_nb)."""
    _arrays(x, gate, out)
    c, h, width = x.shape
    w = np.ascontiguousarray(w.reshape(2, 7, 7), dtype=_f)
    _need(x.ndim == 3 and out.shape == x.shape and gate.shape == (c,), f"spatial_gate: {x.shape} -> {out.shape}")
    _need(not np.shares_memory(x, out), "spatial_gate: output overlaps the input")
    return [partial(spatial_gate_nb, x, gate, w, np.zeros((2, h + 6, width + 6), _f), out)]


def attention_gate_add(u, skip, wg, bg, wx, bx, wpsi, bpsi):
    """In place u += skip * attention_gate_ref(u, skip, wg, bg, wx, bx, wpsi, bpsi)."""
    _arrays(u, skip, wg, bg, wx, bx, bpsi)
    c, h, width = u.shape
    wpsi = np.ascontiguousarray(wpsi.reshape(-1), dtype=_f)
    _need(u.ndim == 3 and skip.shape == u.shape and c % 2 == 0, f"attention_gate_add: u {u.shape}, skip {skip.shape}")
    _need(wg.shape == wx.shape == (c // 2, 2, 3, 3) and bg.shape == bx.shape == wpsi.shape == (c // 2,)
          and bpsi.shape == (1,), "attention_gate_add: weights do not fit")
    _need(not np.shares_memory(u, skip), "attention_gate_add: u overlaps the skip")
    planes = np.zeros((4, h + 2, width + 2), _f)
    return [partial(attention_gate_add_nb, u, skip, wg, bg, wx, bx, wpsi, bpsi, planes, np.zeros((h, width), _f))]
