"""The multi-kernel inverted residual block (UltraLightUNet's MKIR): its depthwise stage (three
depthwise branches, 1x1, 3x3 and 5x5 with zero padding k // 2, each + bias (BN folded) and ReLU6,
summed) as a NumPy reference and a Numba kernel; its 1x1 convs as np.dot steps; and the first
block fused with its max-pool.
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
def _depthwise_rows(plane, k1, b1, k3, b3, k5, b5, y0, out):
    """out [n, W] = rows y0 .. y0 + n - 1 of sum over k = 1, 3, 5 of relu6(dw_k(plane) + b_k) for one
    channel: plane [H + 4, W + 4] zero-bordered; k1 [1, 1], k3 [3, 3], k5 [5, 5]. One pass over the 5x5 window
    feeds all three branches (the 3x3 and 1x1 use its inner taps); direct 2-D indexing, no
    row slices (each would cost reference counting)."""
    n, width = out.shape
    a00, a01, a02, a03, a04 = k5[0, 0], k5[0, 1], k5[0, 2], k5[0, 3], k5[0, 4]
    a10, a11, a12, a13, a14 = k5[1, 0], k5[1, 1], k5[1, 2], k5[1, 3], k5[1, 4]
    a20, a21, a22, a23, a24 = k5[2, 0], k5[2, 1], k5[2, 2], k5[2, 3], k5[2, 4]
    a30, a31, a32, a33, a34 = k5[3, 0], k5[3, 1], k5[3, 2], k5[3, 3], k5[3, 4]
    a40, a41, a42, a43, a44 = k5[4, 0], k5[4, 1], k5[4, 2], k5[4, 3], k5[4, 4]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = (k3[0, 0], k3[0, 1], k3[0, 2], k3[1, 0], k3[1, 1], k3[1, 2],
                                                   k3[2, 0], k3[2, 1], k3[2, 2])
    c1 = k1[0, 0]
    zero, six = _f(0.0), _f(6.0)
    for r in range(n):
        y = y0 + r
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
            out[r, x] = ((min(max(c1 * plane[y + 2, x + 2] + b1, zero), six) + min(max(inner + b3, zero), six))
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
        _depthwise_rows(plane, w1[c, 0], b1[c], w3[c, 0], b3[c], w5[c, 0], b5[c], 0, out[c])


@kernel
def image_block_nb(src, w_expand, pre_bias, w1, b1, w3, b3, w5, b5, w_proj, b_proj, planes, rows, out):
    """The first MKIR (3 -> E = 6 -> M) and its max-pool in one kernel, so that of its
    full-resolution maps only the expanded planes are stored:
    out = maxpool2x2(w_proj @ [s; src]) + b_proj, s = the multi-kernel depthwise stage of
    relu6(w_expand @ src + pre_bias). src [3, H, W], w_expand [6, 3], w_proj [M, 9],
    planes [6, H + 4, W + 4] zero-bordered, rows [10, 2, W] (s, src and one projected channel, two
    rows), out [M, H/2, W/2]."""
    h, width = src.shape[1], src.shape[2]
    for c in range(6):
        bias, k0, k1, k2 = pre_bias[c], w_expand[c, 0], w_expand[c, 1], w_expand[c, 2]
        for y in range(h):
            for x in range(width):
                v = k0 * src[0, y, x] + k1 * src[1, y, x] + k2 * src[2, y, x] + bias
                planes[c, y + 2, x + 2] = min(max(v, _f(0.0)), _f(6.0))
    for yo in range(h // 2):
        for c in range(6):
            _depthwise_rows(planes[c], w1[c, 0], b1[c], w3[c, 0], b3[c], w5[c, 0], b5[c], 2 * yo, rows[c])
        for i in range(3):
            for r in range(2):
                for x in range(width):
                    rows[6 + i, r, x] = src[i, 2 * yo + r, x]
        for m in range(out.shape[0]):
            q0, q1, q2, q3, q4, q5, q6, q7, q8 = (w_proj[m, 0], w_proj[m, 1], w_proj[m, 2], w_proj[m, 3], w_proj[m, 4],
                                                  w_proj[m, 5], w_proj[m, 6], w_proj[m, 7], w_proj[m, 8])
            for r in range(2):
                for i in range(width):
                    rows[9, r, i] = (q0 * rows[0, r, i] + q1 * rows[1, r, i] + q2 * rows[2, r, i] + q3 * rows[3, r, i]
                                     + q4 * rows[4, r, i] + q5 * rows[5, r, i] + q6 * rows[6, r, i]
                                     + q7 * rows[7, r, i] + q8 * rows[8, r, i])
            for x in range(width // 2):
                out[m, yo, x] = max(max(rows[9, 0, 2 * x], rows[9, 0, 2 * x + 1]),
                                    max(rows[9, 1, 2 * x], rows[9, 1, 2 * x + 1])) + b_proj[m]


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
    plane = np.zeros((h + 4, width + 4), _f)
    return [partial(multi_kernel_depthwise_nb, pre, pre_bias, weights[0], biases[0], weights[1], biases[1],
                    weights[2], biases[2], plane, out)]


def image_block(src, w_expand, pre_bias, weights, biases, w_proj, b_proj, out):
    """The first MKIR on the 3-channel image and its max-pool (see image_block_nb): w_expand
    [6, 3(, 1, 1)], weights [6, 1, k, k] for k = 1, 3, 5, biases [6], w_proj [M, 9(, 1, 1)] over
    [s; src], b_proj [M]; out [M, H/2, W/2]."""
    _arrays(src, pre_bias, b_proj, out, *weights, *biases)
    w_expand, w_proj = (np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=_f) for a in (w_expand, w_proj))
    _, h, width = src.shape
    m = w_proj.shape[0]
    _need(src.ndim == 3 and src.shape[0] == 3 and h % 2 == 0 and width % 2 == 0
          and out.shape == (m, h // 2, width // 2), f"image_block: {src.shape} -> {out.shape}")
    _need(w_expand.shape == (6, 3) and w_proj.shape == (m, 9) and b_proj.shape == (m,)
          and [w.shape for w in weights] == [(6, 1, k, k) for k in (1, 3, 5)]
          and all(b.shape == (6,) for b in (pre_bias, *biases)), "image_block: weights do not fit")
    _need(not np.shares_memory(src, out), "image_block: output overlaps the input")
    planes, rows = np.zeros((6, h + 4, width + 4), _f), np.zeros((10, 2, width), _f)
    return [partial(image_block_nb, src, w_expand, pre_bias, weights[0], biases[0], weights[1], biases[1], weights[2],
                    biases[2], w_proj, b_proj, planes, rows, out)]
