"""The dense sigmoid skip gate (AULUNet's LSG): y = d + sigmoid(W @ [d; e] + b) * e, per pixel and
channel, d the decoder feature, e the encoder skip. NumPy reference, Numba kernel, validated step.

The concatenation is never built: W splits into its decoder columns W_d and encoder
columns W_e, and the kernel sums both per row into one row of scratch.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .activation import sigmoid_ref


def skip_gate_ref(d, e, w, b):
    """d, e [C, H, W]; w [C, 2C] or [C, 2C, 1, 1] (columns: decoder first), b [C] -> [C, H, W]."""
    c = d.shape[0]
    z = w.reshape(c, 2 * c) @ np.concatenate([d, e]).reshape(2 * c, -1) + b[:, None]  # [C, H*W]
    return d + sigmoid_ref(z).reshape(d.shape) * e


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import inline, kernel  # noqa: E402
from .activation import T0, T1, T2, T3, T4, T5, T6, T7, TANH_CLAMP, TQ1, TQ2, TQ3  # noqa: E402
from .pool import padded_size  # noqa: E402
from .steps import _arrays, _need  # noqa: E402

_f = np.float32


@inline
def _sigmoid32(x):
    """sigmoid(x) = (1 + tanh(x / 2)) / 2 with activation.tanh_fast's rational form, in float32
    (twice the lanes of the float64 form; |error| < 2e-7, measured): the gate multiplies an
    encoder feature, so its error scales that feature's by at most 2e-7."""
    u = min(max(x * _f(0.5), _f(-TANH_CLAMP)), _f(TANH_CLAMP))
    t = u * u
    p = (((((((_f(T7) * t + _f(T6)) * t + _f(T5)) * t + _f(T4)) * t + _f(T3)) * t + _f(T2)) * t + _f(T1)) * t
         + _f(T0))
    q = ((_f(TQ3) * t + _f(TQ2)) * t + _f(TQ1)) * t + _f(1.0)
    return _f(0.5) + _f(0.5) * (u * p / q)


@inline
def _gate_logits(z, d, e, w_d, w_e, o, base, n):
    """z[:n] += w_d[o] @ d[:, base:+n] + w_e[o] @ e[:, base:+n] (flat planes), two input channels
    of each per pass over z."""
    c_n = d.shape[0]
    c = 0
    while c + 2 <= c_n:
        a0, a1, b0, b1 = w_d[o, c], w_d[o, c + 1], w_e[o, c], w_e[o, c + 1]
        d0, d1 = d[c, base:base + n], d[c + 1, base:base + n]
        e0, e1 = e[c, base:base + n], e[c + 1, base:base + n]
        for x in range(n):
            z[x] += (a0 * d0[x] + a1 * d1[x]) + (b0 * e0[x] + b1 * e1[x])
        c += 2
    if c < c_n:
        a0, b0, d0, e0 = w_d[o, c], w_e[o, c], d[c, base:base + n], e[c, base:base + n]
        for x in range(n):
            z[x] += a0 * d0[x] + b0 * e0[x]


CHUNK = 1024  # positions per pass: whole rows, at least one


@kernel
def skip_gate_nb(d, e, w_d, w_e, b, out, pad):
    """Interior of `out` (flat, border `pad`, untouched) = d + sigmoid(w_d @ d + w_e @ e + b) * e."""
    c_n, h, width = d.shape
    wp = width + 2 * pad
    df, ef = d.reshape(c_n, h * width), e.reshape(c_n, h * width)
    rows = max(1, CHUNK // width)
    z = np.empty(rows * width, dtype=np.float32)
    for y0 in range(0, h, rows):
        n = min(rows, h - y0) * width
        base = y0 * width
        for o in range(c_n):
            bias = b[o]
            for x in range(n):
                z[x] = bias
            _gate_logits(z, df, ef, w_d, w_e, o, base, n)
            dr, er = df[o, base:base + n], ef[o, base:base + n]
            for x in range(n):
                z[x] = dr[x] + _sigmoid32(z[x]) * er[x]
            for y in range(y0, y0 + n // width):
                start, src = (y + pad) * wp + pad, z[(y - y0) * width:(y - y0 + 1) * width]
                dst = out[o, start:start + width]
                for x in range(width):
                    dst[x] = src[x]


def skip_gate(d, e, w, b, out, pad=0):
    """The skip gate of d and e [C, H, W] into the interior of `out`, a flat buffer with border `pad`."""
    _arrays(d, e, out)
    _need(d.ndim == 3 and d.shape == e.shape, f"skip_gate: d {d.shape}, e {e.shape}")
    c, h, width = d.shape
    w2 = np.asarray(w, np.float32).reshape(w.shape[0], -1)
    _need(w2.shape == (c, 2 * c) and np.shape(b) == (c,), f"skip_gate: weight {w.shape}, bias {np.shape(b)}")
    _need(isinstance(pad, int) and pad >= 0 and out.shape == (c, padded_size(h, width, pad)),
          f"skip_gate: out {out.shape} does not fit {d.shape} with border {pad}")
    _need(not (np.shares_memory(out, d) or np.shares_memory(out, e)), "skip_gate: operands overlap")
    w_d, w_e = np.ascontiguousarray(w2[:, :c]), np.ascontiguousarray(w2[:, c:])
    return [partial(skip_gate_nb, d, e, w_d, w_e, np.ascontiguousarray(b, np.float32), out, int(pad))]
