"""Adaptive kernel fusion (AULUNet's AKF): two depthwise 3x3 convs (dilation 1 and 2) blended
per channel by a gate from the input's global average, then pointwise convs.
NumPy reference, Numba kernels and the validated step.

f = a * DW3_d1(x) + (1 - a) * DW3_d2(x), a = sigmoid(W_g @ GAP(x) + b_g) [C].
Both branches are zero-padded "same" convs and a is a per-channel scalar, so f is ONE
depthwise 5x5 conv: the dilation-1 kernel on rows/cols 1..3 scaled by a, the dilation-2
kernel on rows/cols 0, 2, 4 scaled by 1 - a (17 taps, the centre shared). a depends on
the frame, so the engine blends the kernels per frame (C * 18 numbers) and then runs
one pass: the 17-tap depthwise conv of a tile of rows into L1 scratch, the pointwise
conv(s) on that tile, the rows of the last one into the output.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .channel_gate import GATE_SIGMOID, channel_gate_ref
from .conv import conv2d_ref


def blend_kernels_ref(a, k_local, k_dilated):
    """[C, 1, 5, 5] depthwise kernel of a * DW3_d1 + (1 - a) * DW3_d2 (a [C], kernels [C, 1, 3, 3])."""
    k5 = np.zeros((a.shape[0], 1, 5, 5), dtype=np.result_type(a, k_local))
    k5[:, :, 1:4, 1:4] += a[:, None, None, None] * k_local
    k5[:, :, 0::2, 0::2] += (1.0 - a)[:, None, None, None] * k_dilated
    return k5


def akf_blend_ref(x, k_local, k_dilated, w_gate, b_gate):
    """a * DW3_d1(x) + (1 - a) * DW3_d2(x) for x [C, H, W], the gate from x's global average."""
    c = x.shape[0]
    zero = np.zeros(c, x.dtype)
    local = conv2d_ref(x, k_local, zero, padding=1, groups=c)  # [C, H, W]
    dilated = conv2d_ref(x, k_dilated, zero, padding=2, dilation=2, groups=c)  # [C, H, W]
    a = channel_gate_ref(x, w_gate, b_gate, GATE_SIGMOID)[:, None, None]  # [C, 1, 1]
    return a * local + (1.0 - a) * dilated


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import inline, kernel  # noqa: E402
from .channel_gate import channel_gate_nb  # noqa: E402
from .pool import padded_size  # noqa: E402
from .steps import _arrays, _need  # noqa: E402

PAD = 2  # the dilation-2 branch's zero border: the input buffer's border must be at least this
TILE_FLOATS = 6144  # scratch of one row tile (all channels) in a 32 KiB L1 ...
MIN_TILE = 512  # ... unless that leaves under this many positions per pass (wide, small maps): L2 then


@kernel
def akf_kernel_nb(padded, pad, h, width, w_gate, b_gate, k_local, k_dilated, means, gate, k5):
    """This frame's blended 5x5 kernels k5 [C, 5, 5] (float32) from the gate of x's global average."""
    channel_gate_nb(padded, pad, h, width, w_gate, b_gate, GATE_SIGMOID, means, gate)
    blended = np.empty((5, 5))
    for c in range(k5.shape[0]):
        a = gate[c]
        blended[:] = 0.0
        for i in range(3):
            for j in range(3):
                blended[1 + i, 1 + j] += a * k_local[c, i, j]
                blended[2 * i, 2 * j] += (1.0 - a) * k_dilated[c, i, j]
        for i in range(5):
            for j in range(5):
                k5[c, i, j] = blended[i, j]


@inline
def _blend_taps(dst, plane, s, wp, k, n):
    """dst[p] = the 17 non-zero taps of the blended 5x5 kernel k [5, 5] at flat position p."""
    r0, r1, r2, r3, r4 = plane[s:], plane[s + wp:], plane[s + 2 * wp:], plane[s + 3 * wp:], plane[s + 4 * wp:]
    k00, k02, k04, k11, k12, k13 = k[0, 0], k[0, 2], k[0, 4], k[1, 1], k[1, 2], k[1, 3]
    k20, k21, k22, k23, k24 = k[2, 0], k[2, 1], k[2, 2], k[2, 3], k[2, 4]
    k31, k32, k33, k40, k42, k44 = k[3, 1], k[3, 2], k[3, 3], k[4, 0], k[4, 2], k[4, 4]
    for p in range(n):
        dst[p] = ((k00 * r0[p] + k02 * r0[p + 2] + k04 * r0[p + 4])
                  + (k11 * r1[p + 1] + k12 * r1[p + 2] + k13 * r1[p + 3])
                  + (k20 * r2[p] + k21 * r2[p + 1] + k22 * r2[p + 2] + k23 * r2[p + 3] + k24 * r2[p + 4])
                  + (k31 * r3[p + 1] + k32 * r3[p + 2] + k33 * r3[p + 3])
                  + (k40 * r4[p] + k42 * r4[p + 2] + k44 * r4[p + 4]))


@inline
def _weighted_sum(acc, src, base, w, o, n):
    """acc[:n] += sum_c w[o, c] * src[c, base:base + n], four input channels per pass over acc."""
    c_n = w.shape[1]
    c = 0
    while c + 4 <= c_n:
        w0, w1, w2, w3 = w[o, c], w[o, c + 1], w[o, c + 2], w[o, c + 3]
        s0, s1 = src[c, base:base + n], src[c + 1, base:base + n]
        s2, s3 = src[c + 2, base:base + n], src[c + 3, base:base + n]
        for p in range(n):
            acc[p] += (w0 * s0[p] + w1 * s1[p]) + (w2 * s2[p] + w3 * s3[p])
        c += 4
    while c < c_n:
        w0, s0 = w[o, c], src[c, base:base + n]
        for p in range(n):
            acc[p] += w0 * s0[p]
        c += 1


@inline
def _pointwise(src, base, w, b, relu, dst, dst_base, n):
    """dst[o, dst_base:+n] = (relu)(b[o] + sum_c w[o, c] * src[c, base:base + n]) for every output o."""
    for o in range(w.shape[0]):
        d = dst[o, dst_base:dst_base + n]
        bias = b[o]
        for p in range(n):
            d[p] = bias
        _weighted_sum(d, src, base, w, o, n)
        if relu:
            for p in range(n):
                d[p] = max(d[p], np.float32(0.0))


@kernel
def akf_conv_nb(padded, pad, k5, w1, b1, w2, b2, relu2, out):
    """out = (relu)(w2 @ relu(w1 @ DW5(x) + b1) + b2) (without w2, an empty [0, 0] array: out =
    relu(w1 @ DW5(x) + b1)), x in a flat buffer with border `pad` >= 2, out [C_out, H, W]."""
    c_n = padded.shape[0]
    c_out, h, width = out.shape
    c1 = w1.shape[0]
    wp = width + 2 * pad
    tile = max(1, min(h, max(TILE_FLOATS // (wp * (c_n + c1 + c_out)), MIN_TILE // wp)))
    blend = np.empty((c_n, tile * wp), dtype=np.float32)
    fused = np.empty((c1, tile * wp), dtype=np.float32)
    last = np.empty((c_out, tile * wp), dtype=np.float32)
    two = w2.shape[0] > 0
    for y0 in range(0, h, tile):
        rows = min(tile, h - y0)
        n = rows * wp
        s = (y0 + pad - PAD) * wp + pad - PAD  # tap (0, 0) of output (y0, 0)
        for c in range(c_n):
            _blend_taps(blend[c], padded[c], s, wp, k5[c], n)
        if two:
            _pointwise(blend, 0, w1, b1, True, fused, 0, n)
            _pointwise(fused, 0, w2, b2, relu2, last, 0, n)
        else:
            _pointwise(blend, 0, w1, b1, True, last, 0, n)
        for o in range(c_out):  # drop the border columns
            for r in range(rows):
                src, dst = last[o, r * wp:r * wp + width], out[o, y0 + r]
                for x in range(width):
                    dst[x] = src[x]


def akf(padded, pad, h, width, k_local, k_dilated, w_gate, b_gate, w1, b1, out, w2=None, b2=None, relu2=False):
    """AKF on x (the h x width interior of `padded`, border `pad` >= 2): the per-frame gate and
    blended kernel, then out = relu(w1 @ f + b1), or w2 @ that + b2 (ReLU'd with relu2) with w2
    (fused: the point conv that follows). Pointwise weights [Co, Ci] or [Co, Ci, 1, 1]."""
    _arrays(padded, out)
    c = padded.shape[0]
    _need(isinstance(pad, int) and pad >= PAD and padded.shape == (c, padded_size(h, width, pad)),
          f"akf: input buffer {padded.shape} does not fit {c}x{h}x{width} with border {pad} >= {PAD}")
    _need(k_local.shape == k_dilated.shape == (c, 1, 3, 3), f"akf: kernels {k_local.shape}, {k_dilated.shape}")
    wg, bg = _matrix(w_gate, c, c), np.asarray(b_gate, np.float64)
    _need(bg.shape == (c,), f"akf: gate bias {bg.shape}")
    w1m, b1v = _matrix(w1, None, c, np.float32), np.ascontiguousarray(b1, np.float32)
    if w2 is None:
        w2m, b2v = np.zeros((0, 0), np.float32), np.zeros(0, np.float32)
    else:
        w2m, b2v = _matrix(w2, None, w1m.shape[0], np.float32), np.ascontiguousarray(b2, np.float32)
    final = w2m if w2 is not None else w1m
    _need(b1v.shape == (w1m.shape[0],) and b2v.shape == (w2m.shape[0],), "akf: biases do not fit the weights")
    _need(out.shape == (final.shape[0], h, width), f"akf: out {out.shape}, expected {(final.shape[0], h, width)}")
    _need(not np.shares_memory(padded, out), "akf: operands overlap")
    kl, kd = (np.ascontiguousarray(k.reshape(c, 3, 3), np.float64) for k in (k_local, k_dilated))
    k5 = np.zeros((c, 5, 5), np.float32)
    return [partial(akf_kernel_nb, padded, int(pad), int(h), int(width), wg, bg, kl, kd, np.zeros(c), np.zeros(c), k5),
            partial(akf_conv_nb, padded, int(pad), k5, w1m, b1v, w2m, b2v, bool(relu2), out)]


def _matrix(w, rows, cols, dtype=np.float64):
    m = np.ascontiguousarray(np.asarray(w).reshape(w.shape[0], -1), dtype)
    _need(m.shape[1] == cols and (rows is None or m.shape[0] == rows), f"akf: weight {w.shape}, {cols} inputs")
    return m
