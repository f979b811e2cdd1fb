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

from ._jit import kernel  # noqa: E402
from .activation import sigmoid_fast  # noqa: E402
from .steps import _arrays, _need  # noqa: E402

_f = np.float32


@kernel
def channel_attention_nb(x, w1, w2, gate):
    """gate [C] = channel_attention_ref(x, w1, w2): w1 [h, C], w2 [C, h]. The mean sums in float64."""
    c_n = x.shape[0]
    n = x.size // c_n
    flat = x.reshape(c_n, n)
    avg, peak = np.empty(c_n), np.empty(c_n)
    for c in range(c_n):
        row = flat[c]
        s, m = 0.0, row[0]
        for i in range(n):
            s += row[i]
            m = max(m, row[i])
        avg[c], peak[c] = s / n, m
    hidden_avg = np.maximum(w1.astype(np.float64) @ avg, 0.0)
    hidden_max = np.maximum(w1.astype(np.float64) @ peak, 0.0)
    logit = w2.astype(np.float64) @ (hidden_avg + hidden_max)  # the second layer is linear: one product
    for c in range(c_n):
        gate[c] = sigmoid_fast(_f(logit[c]))


@kernel
def spatial_gate_nb(x, gate, w, desc, out):
    """out = sa * gate[c] * x[c], sa = spatial_attention_ref(gate * x, w): x [C, h, w], gate [C],
    w [2, 7, 7], desc [2, (h + 6) * (w + 6)] zero-bordered scratch (border never written)."""
    c_n, h, width = x.shape
    wp = width + 6
    inv_c = _f(1.0 / c_n)
    for y in range(h):
        s, m = desc[0, (y + 3) * wp + 3:(y + 3) * wp + 3 + width], desc[1, (y + 3) * wp + 3:(y + 3) * wp + 3 + width]
        row, g = x[0, y], gate[0]
        for i in range(width):
            s[i] = g * row[i]
            m[i] = g * row[i]
        for c in range(1, c_n):
            row, g = x[c, y], gate[c]
            for i in range(width):
                v = g * row[i]
                s[i] += v
                m[i] = max(m[i], v)
        for i in range(width):
            s[i] *= inv_c
    acc = np.empty(width, _f)
    for y in range(h):
        acc[:] = 0.0
        for d in range(2):
            for ky in range(7):
                for kx in range(7):
                    wv, r = w[d, ky, kx], desc[d, (y + ky) * wp + kx:(y + ky) * wp + kx + width]
                    for i in range(width):
                        acc[i] += wv * r[i]
        for i in range(width):
            acc[i] = sigmoid_fast(acc[i])
        for c in range(c_n):
            row, o, g = x[c, y], out[c, y], gate[c]
            for i in range(width):
                o[i] = acc[i] * (g * row[i])


@kernel
def attention_gate_add_nb(u, skip, wg, bg, wx, bx, wpsi, bpsi, planes, logit):
    """In place u += skip * attention_gate_ref(u, skip, ...): wg, wx [C/2, 2, 3, 3], bg, bx [C/2],
    wpsi [C/2], bpsi [1]. planes [4, (h + 2) * (w + 2)]: zero-bordered copies of the channel pair
    of u and of skip a group reads; logit [h, w] scratch."""
    c_n, h, width = u.shape
    wp = width + 2
    logit[:, :] = bpsi[0]
    for j in range(c_n // 2):
        for r in range(2):
            for y in range(h):
                start = (y + 1) * wp + 1
                planes[r, start:start + width] = u[2 * j + r, y]
                planes[2 + r, start:start + width] = skip[2 * j + r, y]
        bias, wj = bg[j] + bx[j], wpsi[j]
        for y in range(h):
            acc = np.full(width, bias, _f)
            for q in range(4):
                k = wg[j, q] if q < 2 else wx[j, q - 2]
                for ky in range(3):
                    r = planes[q, (y + ky) * wp:(y + ky + 1) * wp]
                    k0, k1, k2 = k[ky, 0], k[ky, 1], k[ky, 2]
                    for i in range(width):
                        acc[i] += k0 * r[i] + k1 * r[i + 1] + k2 * r[i + 2]
            lg = logit[y]
            for i in range(width):
                lg[i] += wj * max(acc[i], _f(0.0))
    for y in range(h):
        lg = logit[y]
        for i in range(width):
            lg[i] = sigmoid_fast(lg[i])
    for c in range(c_n):
        for y in range(h):
            o, s, lg = u[c, y], skip[c, y], logit[y]
            for i in range(width):
                o[i] += s[i] * lg[i]


def channel_attention(x, w1, w2, gate):
    """gate [C] = channel_attention_ref(x, w1, w2)."""
    _arrays(x, gate)
    c = x.shape[0]
    w1, w2 = (np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=_f) for a in (w1, w2))
    _need(x.ndim == 3 and gate.shape == (c,) and w1.shape[1] == c and w2.shape == (c, w1.shape[0]),
          f"channel_attention: x {x.shape}, w1 {w1.shape}, w2 {w2.shape}, gate {gate.shape}")
    return [partial(channel_attention_nb, x, w1, w2, gate)]


def spatial_gate(x, gate, w, out):
    """out = spatial_attention_ref(gate * x, w) * gate * x (see spatial_gate_nb)."""
    _arrays(x, gate, out)
    c, h, width = x.shape
    w = np.ascontiguousarray(w.reshape(2, 7, 7), dtype=_f)
    _need(x.ndim == 3 and out.shape == x.shape and gate.shape == (c,), f"spatial_gate: {x.shape} -> {out.shape}")
    _need(not np.shares_memory(x, out), "spatial_gate: output overlaps the input")
    return [partial(spatial_gate_nb, x, gate, w, np.zeros((2, (h + 6) * (width + 6)), _f), out)]


def attention_gate_add(u, skip, wg, bg, wx, bx, wpsi, bpsi):
    """In place u += skip * attention_gate_ref(u, skip, wg, bg, wx, bx, wpsi, bpsi)."""
    _arrays(u, skip, wg, bg, wx, bx, bpsi)
    c, h, width = u.shape
    wpsi = np.ascontiguousarray(wpsi.reshape(-1), dtype=_f)
    _need(u.ndim == 3 and skip.shape == u.shape and c % 2 == 0, f"attention_gate_add: u {u.shape}, skip {skip.shape}")
    _need(wg.shape == wx.shape == (c // 2, 2, 3, 3) and bg.shape == bx.shape == wpsi.shape == (c // 2,)
          and bpsi.shape == (1,), "attention_gate_add: weights do not fit")
    _need(not np.shares_memory(u, skip), "attention_gate_add: u overlaps the skip")
    planes = np.zeros((4, (h + 2) * (width + 2)), _f)
    return [partial(attention_gate_add_nb, u, skip, wg, bg, wx, bx, wpsi, bpsi, planes, np.zeros((h, width), _f))]
