"""The multi-kernel inverted residual block's depthwise stage: NumPy reference.

Three depthwise branches (1x1, 3x3, 5x5, zero padding k // 2), each + bias (BN folded) and
ReLU6, summed.
"""
from __future__ import annotations

from .activation import relu6_ref
from .conv import conv2d_ref


def multi_kernel_depthwise_ref(x, weights, biases):
    """x [E, H, W]; weights [E, 1, k, k] for k = 1, 3, 5; biases [E] each -> [E, H, W]."""
    out = 0
    for w, b in zip(weights, biases):
        out = out + relu6_ref(conv2d_ref(x, w, b, padding=w.shape[2] // 2, groups=x.shape[0]))
    return out


# ---- Numba kernels -------------------------------------------------------------------------
# The block's 1x1 convs run as np.dot (OpenBLAS beat a tiled Numba loop from 6 input channels up)
# and write W @ x without a bias: the step that reads the result adds it (this kernel before its
# ReLU6, max-pool after its max, up x2 before its ReLU), so no pass over a map adds a bias.
import numpy as np  # noqa: E402

from ._jit import kernel  # noqa: E402

_f = np.float32


@kernel
def multi_kernel_depthwise_nb(pre, pre_bias, w1, b1, w3, b3, w5, b5, plane, out):
    """out[c] = sum over k = 1, 3, 5 of relu6(dw_k(e[c]) + b_k[c]), e = relu6(pre + pre_bias):
    pre [E, H, W] is the expand conv's output without its bias. `plane` [(H + 4) * (W + 4)]: a
    zero-bordered copy of one channel of e (its border is never written). One pass over the 5x5
    window feeds all three branches (the 3x3 and 1x1 use its inner taps)."""
    e_n, h, width = pre.shape
    wp = width + 4
    for c in range(e_n):
        bias = pre_bias[c]
        for y in range(h):
            src, dst = pre[c, y], plane[(y + 2) * wp + 2:(y + 2) * wp + 2 + width]
            for x in range(width):
                dst[x] = min(max(src[x] + bias, _f(0.0)), _f(6.0))
        k = w5[c, 0]
        a00, a01, a02, a03, a04 = k[0, 0], k[0, 1], k[0, 2], k[0, 3], k[0, 4]
        a10, a11, a12, a13, a14 = k[1, 0], k[1, 1], k[1, 2], k[1, 3], k[1, 4]
        a20, a21, a22, a23, a24 = k[2, 0], k[2, 1], k[2, 2], k[2, 3], k[2, 4]
        a30, a31, a32, a33, a34 = k[3, 0], k[3, 1], k[3, 2], k[3, 3], k[3, 4]
        a40, a41, a42, a43, a44 = k[4, 0], k[4, 1], k[4, 2], k[4, 3], k[4, 4]
        m = w3[c, 0]
        m00, m01, m02, m10, m11, m12, m20, m21, m22 = (m[0, 0], m[0, 1], m[0, 2], m[1, 0], m[1, 1], m[1, 2],
                                                       m[2, 0], m[2, 1], m[2, 2])
        c1, bb1, bb3, bb5 = w1[c, 0, 0, 0], b1[c], b3[c], b5[c]
        for y in range(h):
            r0, r1 = plane[y * wp:(y + 1) * wp], plane[(y + 1) * wp:(y + 2) * wp]
            r2, r3 = plane[(y + 2) * wp:(y + 3) * wp], plane[(y + 3) * wp:(y + 4) * wp]
            r4 = plane[(y + 4) * wp:(y + 5) * wp]
            o = out[c, y]
            for x in range(width):
                inner = (m00 * r1[x + 1] + m01 * r1[x + 2] + m02 * r1[x + 3]
                         + m10 * r2[x + 1] + m11 * r2[x + 2] + m12 * r2[x + 3]
                         + m20 * r3[x + 1] + m21 * r3[x + 2] + m22 * r3[x + 3])
                outer = (a00 * r0[x] + a01 * r0[x + 1] + a02 * r0[x + 2] + a03 * r0[x + 3] + a04 * r0[x + 4]
                         + a10 * r1[x] + a11 * r1[x + 1] + a12 * r1[x + 2] + a13 * r1[x + 3] + a14 * r1[x + 4]
                         + a20 * r2[x] + a21 * r2[x + 1] + a22 * r2[x + 2] + a23 * r2[x + 3] + a24 * r2[x + 4]
                         + a30 * r3[x] + a31 * r3[x + 1] + a32 * r3[x + 2] + a33 * r3[x + 3] + a34 * r3[x + 4]
                         + a40 * r4[x] + a41 * r4[x + 1] + a42 * r4[x + 2] + a43 * r4[x + 3] + a44 * r4[x + 4])
                o[x] = ((min(max(c1 * r2[x + 2] + bb1, _f(0.0)), _f(6.0)) + min(max(inner + bb3, _f(0.0)), _f(6.0)))
                        + min(max(outer + bb5, _f(0.0)), _f(6.0)))


# ---- validated steps -----------------------------------------------------------------------
from functools import partial  # noqa: E402

from .steps import _arrays, _need  # noqa: E402


def pointwise(src, w, out):
    """out = w @ src (1x1 conv, no bias) as one np.dot: src [Cin, H, W], w [Cout, Cin(, 1, 1)]."""
    _arrays(src, out)
    w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1), dtype=_f)
    _need(src.ndim == out.ndim == 3 and src.shape[1:] == out.shape[1:] and w2.shape == (out.shape[0], src.shape[0]),
          f"pointwise: {src.shape} -> {out.shape} with weight {w.shape}")
    _need(not np.shares_memory(src, out), "pointwise: output overlaps the input")
    return [partial(np.dot, w2, src.reshape(src.shape[0], -1), out.reshape(out.shape[0], -1))]


def multi_kernel_depthwise(pre, pre_bias, weights, biases, out):
    """The multi-kernel depthwise stage (see multi_kernel_depthwise_nb); weights [E, 1, k, k]
    for k = 1, 3, 5, biases [E]."""
    _arrays(pre, pre_bias, out, *weights, *biases)
    e, h, width = pre.shape
    _need(pre.ndim == 3 and out.shape == pre.shape, f"multi_kernel_depthwise: {pre.shape} -> {out.shape}")
    _need([w.shape for w in weights] == [(e, 1, k, k) for k in (1, 3, 5)]
          and all(b.shape == (e,) for b in (pre_bias, *biases)), "multi_kernel_depthwise: weights do not fit")
    _need(not np.shares_memory(pre, out), "multi_kernel_depthwise: output overlaps the input")
    plane = np.zeros((h + 4) * (width + 4), _f)
    return [partial(multi_kernel_depthwise_nb, pre, pre_bias, weights[0], biases[0], weights[1], biases[1],
                    weights[2], biases[2], plane, out)]
