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

from ._jit import inline, kernel  # noqa: E402

_f = np.float32


@inline
def _depthwise_channel(plane, k1, b1, k3, b3, k5, b5, out):
    """out [H, W] = sum over k = 1, 3, 5 of relu6(dw_k(plane) + b_k) for one channel: plane
    [H + 4, W + 4] zero-bordered; k1 [1, 1], k3 [3, 3], k5 [5, 5]. One pass over the 5x5 window
    feeds all three branches (the 3x3 and 1x1 use its inner taps); direct 2-D indexing, no
    row slices (each would cost reference counting)."""
    h, width = out.shape
    a00, a01, a02, a03, a04 = k5[0, 0], k5[0, 1], k5[0, 2], k5[0, 3], k5[0, 4]
    a10, a11, a12, a13, a14 = k5[1, 0], k5[1, 1], k5[1, 2], k5[1, 3], k5[1, 4]
    a20, a21, a22, a23, a24 = k5[2, 0], k5[2, 1], k5[2, 2], k5[2, 3], k5[2, 4]
    a30, a31, a32, a33, a34 = k5[3, 0], k5[3, 1], k5[3, 2], k5[3, 3], k5[3, 4]
    a40, a41, a42, a43, a44 = k5[4, 0], k5[4, 1], k5[4, 2], k5[4, 3], k5[4, 4]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = (k3[0, 0], k3[0, 1], k3[0, 2], k3[1, 0], k3[1, 1], k3[1, 2],
                                                   k3[2, 0], k3[2, 1], k3[2, 2])
    c1 = k1[0, 0]
    zero, six = _f(0.0), _f(6.0)
    for y in range(h):
        for x in range(width):
            inner = (m00 * plane[y + 1, x + 1] + m01 * plane[y + 1, x + 2] + m02 * plane[y + 1, x + 3]
                     + m10 * plane[y + 2, x + 1] + m11 * plane[y + 2, x + 2] + m12 * plane[y + 2, x + 3]
                     + m20 * plane[y + 3, x + 1] + m21 * plane[y + 3, x + 2] + m22 * plane[y + 3, x + 3])
            outer = (a00 * plane[y, x] + a01 * plane[y, x + 1] + a02 * plane[y, x + 2] + a03 * plane[y, x + 3]
                     + a04 * plane[y, x + 4] + a10 * plane[y + 1, x] + a11 * plane[y + 1, x + 1]
                     + a12 * plane[y + 1, x + 2] + a13 * plane[y + 1, x + 3] + a14 * plane[y + 1, x + 4]
                     + a20 * plane[y + 2, x] + a21 * plane[y + 2, x + 1] + a22 * plane[y + 2, x + 2]
                     + a23 * plane[y + 2, x + 3] + a24 * plane[y + 2, x + 4] + a30 * plane[y + 3, x]
                     + a31 * plane[y + 3, x + 1] + a32 * plane[y + 3, x + 2] + a33 * plane[y + 3, x + 3]
                     + a34 * plane[y + 3, x + 4] + a40 * plane[y + 4, x] + a41 * plane[y + 4, x + 1]
                     + a42 * plane[y + 4, x + 2] + a43 * plane[y + 4, x + 3] + a44 * plane[y + 4, x + 4])
            out[y, x] = ((min(max(c1 * plane[y + 2, x + 2] + b1, zero), six) + min(max(inner + b3, zero), six))
                         + min(max(outer + b5, zero), six))


@kernel
def multi_kernel_depthwise_nb(pre, pre_bias, w1, b1, w3, b3, w5, b5, plane, out):
    """out[c] = sum over k = 1, 3, 5 of relu6(dw_k(e[c]) + b_k[c]), e = relu6(pre + pre_bias):
    pre [E, H, W] is the expand conv's output without its bias. plane [H + 4, W + 4]: scratch
    for one zero-bordered channel of e (its border is never written)."""
    e_n, h, width = pre.shape
    for c in range(e_n):
        bias = pre_bias[c]
        for y in range(h):
            for x in range(width):
                plane[y + 2, x + 2] = min(max(pre[c, y, x] + bias, _f(0.0)), _f(6.0))
        _depthwise_channel(plane, w1[c, 0], b1[c], w3[c, 0], b3[c], w5[c, 0], b5[c], out[c])


@kernel
def rgb_expand_multi_kernel_depthwise_nb(src, w_expand, pre_bias, w1, b1, w3, b3, w5, b5, plane, out):
    """multi_kernel_depthwise_nb of pre = w_expand @ src for a 3-channel input (the image): each
    expanded channel is computed straight into the plane in one pass, so the first block's
    full-resolution expanded map is never stored. src [3, H, W], w_expand [E, 3]."""
    h, width = src.shape[1], src.shape[2]
    for c in range(out.shape[0]):
        bias, k0, k1, k2 = pre_bias[c], w_expand[c, 0], w_expand[c, 1], w_expand[c, 2]
        for y in range(h):
            for x in range(width):
                v = k0 * src[0, y, x] + k1 * src[1, y, x] + k2 * src[2, y, x] + bias
                plane[y + 2, x + 2] = min(max(v, _f(0.0)), _f(6.0))
        _depthwise_channel(plane, w1[c, 0], b1[c], w3[c, 0], b3[c], w5[c, 0], b5[c], out[c])


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


def multi_kernel_depthwise(src, pre_bias, weights, biases, out, expand=None):
    """The multi-kernel depthwise stage of e = relu6(pre + pre_bias): `src` is pre [E, H, W]
    (multi_kernel_depthwise_nb) or, with `expand` [E, 3(, 1, 1)], a 3-channel block input with
    pre = expand @ src computed on the fly (rgb_expand_multi_kernel_depthwise_nb). weights
    [E, 1, k, k] for k = 1, 3, 5, biases [E]."""
    _arrays(src, pre_bias, out, *weights, *biases)
    e, h, width = out.shape
    _need(src.ndim == out.ndim == 3 and src.shape[1:] == out.shape[1:], f"multi_kernel_depthwise: {src.shape} -> {out.shape}")
    _need([w.shape for w in weights] == [(e, 1, k, k) for k in (1, 3, 5)]
          and all(b.shape == (e,) for b in (pre_bias, *biases)), "multi_kernel_depthwise: weights do not fit")
    _need(not np.shares_memory(src, out), "multi_kernel_depthwise: output overlaps the input")
    plane = np.zeros((h + 4, width + 4), _f)
    dw = (weights[0], biases[0], weights[1], biases[1], weights[2], biases[2], plane, out)
    if expand is None:
        _need(src.shape[0] == e, f"multi_kernel_depthwise: {src.shape[0]} channels for {e}")
        return [partial(multi_kernel_depthwise_nb, src, pre_bias, *dw)]
    w_expand = np.ascontiguousarray(expand.reshape(expand.shape[0], -1), dtype=_f)
    _need(src.shape[0] == 3 and w_expand.shape == (e, 3), f"multi_kernel_depthwise: expand {expand.shape} on {src.shape}")
    return [partial(rgb_expand_multi_kernel_depthwise_nb, src, w_expand, pre_bias, *dw)]
