"""Pointwise activations and channel softmax: NumPy reference."""
from __future__ import annotations

import numpy as np


def gelu_ref(x):
    """Exact (erf) GELU."""
    from scipy.special import erf  # imported on use: SciPy costs ~0.4 s of npseg's start-up

    return (0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))).astype(x.dtype)


def sigmoid_ref(x):
    """Logistic function, written so that no exp overflows: exp(-|x|) <= 1."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype)


def relu_ref(x):
    return np.maximum(x, 0)


def relu6_ref(x):
    return np.clip(x, 0, 6)


def softmax_channels_ref(x):
    """Softmax over axis 0 of [C,H,W]."""
    e = np.exp(x - x.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)


# ---- Numba kernels -------------------------------------------------------------------------
# libm erf/exp are scalar calls (~10 ns each); these clamped rational forms vectorise.
# Coefficients: a minimax fit (linear programming, differential correction) of
# erf(x)/x and tanh(x)/x as P(x^2)/Q(x^2) with Q > 0 (no poles), done for npseg.
# Fit errors: erf 4e-8, tanh 6e-8. The sigmoid is evaluated in float64: it feeds the
# multiplicative gates, where a float32 evaluation's ~4e-7 error once pushed the golden-logits
# check past its 1e-4. GELU runs in float32 (twice as fast, ~5e-7 absolute error for |x| < 4):
# measured on the golden inputs, the logits stay as close to the float64 reference (2.6e-5 vs
# 3.3e-5 with the float64 GELU; the errors of the two do not add up).
# sigmoid(x) = (1 + tanh(x/2)) / 2.
import numpy as _np  # noqa: E402

from ._jit import ACT_GELU, ACT_RELU, ACT_RELU6, kernel, kernel_ordered  # noqa: E402

_f = _np.float32
ERF_CLAMP = 3.95  # erf(3.95) = 1 - 1.7e-8
E0, E1, E2, E3 = 1.1283791593818406, 0.13265133133118223, 0.043269316232662426, 0.0012579956823504487
E4, E5, E6, E7 = 0.00013166995580783924, -3.8167725958213749e-06, 8.631444662989002e-08, -9.0434895767451706e-10
EQ1, EQ2, EQ3, EQ4 = 0.45089255467838713, 0.088643774536668607, 0.009382807571057479, 0.00048694061543309207
TANH_CLAMP = 9.0  # tanh(9) = 1 - 3e-8
T0, T1, T2, T3 = 0.99999993743177185, 0.12375664153302507, 0.0022986402459540065, 2.130219776871871e-06
T4, T5, T6, T7 = 2.2782888521576532e-08, -2.2971463080801434e-10, 1.269893476048563e-12, -3.1382097881642672e-15
TQ1, TQ2, TQ3 = 0.45708941102553652, 0.02132929721460651, 0.00013430216070434264


@kernel
def tanh_fast(x):
    """tanh of a float64, |error| < 7e-8."""
    x = min(max(x, -TANH_CLAMP), TANH_CLAMP)
    t = x * x
    p = (((((((T7 * t + T6) * t + T5) * t + T4) * t + T3) * t + T2) * t + T1) * t + T0)
    q = (((TQ3 * t + TQ2) * t + TQ1) * t + 1.0)
    return x * p / q


@kernel
def gelu_fast(x):
    """Exact-erf GELU of a float32, evaluated in float32."""
    u = min(max(x * _f(0.7071067811865476), _f(-ERF_CLAMP)), _f(ERF_CLAMP))
    t = u * u
    p = (((((((_f(E7) * t + _f(E6)) * t + _f(E5)) * t + _f(E4)) * t + _f(E3)) * t + _f(E2)) * t + _f(E1)) * t
         + _f(E0))
    q = ((((_f(EQ4) * t + _f(EQ3)) * t + _f(EQ2)) * t + _f(EQ1)) * t + _f(1.0))
    return _f(0.5) * x * (_f(1.0) + u * p / q)


@kernel
def sigmoid_fast(x):
    """sigmoid of a float32, to about one float32 ulp."""
    return _f(0.5 + 0.5 * tanh_fast(0.5 * _np.float64(x)))


@kernel
def activate(v, act):
    """The activation `act` (ACT_NONE / ACT_RELU / ACT_GELU / ACT_RELU6) of one value."""
    if act == ACT_GELU:
        return gelu_fast(v)
    if act == ACT_RELU:
        return max(v, _f(0.0))
    if act == ACT_RELU6:
        return min(max(v, _f(0.0)), _f(6.0))
    return v


@kernel
def affine_act_nb(x, scale, shift, act):
    """In place x[c] = act(x[c] * scale[c] + shift[c]) for [C, ...] (bias add: scale = 1).

    In place on purpose: with a separate output that aliases the input, LLVM's
    runtime overlap check fails and the loop runs scalar (6x slower with GELU)."""
    c_n = x.shape[0]
    n = x.size // c_n
    x2 = x.reshape(c_n, n)
    for c in range(c_n):
        a, b = scale[c], shift[c]
        row = x2[c]
        if act == ACT_GELU:
            for i in range(n):
                row[i] = gelu_fast(row[i] * a + b)
        elif act == ACT_RELU:
            for i in range(n):
                row[i] = max(row[i] * a + b, _f(0.0))
        elif act == ACT_RELU6:
            for i in range(n):
                row[i] = min(max(row[i] * a + b, _f(0.0)), _f(6.0))
        else:
            for i in range(n):
                row[i] = row[i] * a + b


@kernel
def gelu_nb(src, out):
    """Fast GELU of a flat array (the test surface of gelu_fast)."""
    for i in range(src.size):
        out[i] = gelu_fast(src[i])


@kernel
def sigmoid_nb(src, out):
    for i in range(src.size):
        out[i] = sigmoid_fast(src[i])


@kernel_ordered
def add_nb(acc, other, bias, pad, padded):
    """acc[c] += other[c] + bias[c] for [C, H, W] arrays of equal shapes (in that order: the bias
    joins `other` first, as when it was a separate pass); with a non-empty `padded` (pad_nb's
    layout, border `pad`) the sums are also written there: the next 3x3 conv's padded input
    without a pad pass over the result."""
    c_n, h, width = acc.shape
    wp = width + 2 * pad
    for c in range(c_n):
        b = bias[c]
        for y in range(h):
            a, o = acc[c, y], other[c, y]
            for x in range(width):
                a[x] += o[x] + b
            if padded.shape[1] > 0:
                start = (y + pad) * wp + pad
                dst = padded[c, start:start + width]
                for x in range(width):
                    dst[x] = a[x]
