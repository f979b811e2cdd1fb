"""Convolutions: NumPy reference.

All tensors are one image, channels first: x [C, H, W], weight [Cout, Cin/groups, k, k].
"""
from __future__ import annotations

import numpy as np


def conv2d_ref(x, w, b, *, padding=0, dilation=1, stride=1, groups=1):
    """Grouped, dilated, zero-padded 2-D convolution with bias: [Cin,H,W] -> [Cout,Ho,Wo]."""
    cin, h, wd = x.shape
    cout, cin_g, k, _ = w.shape
    if cin != cin_g * groups or cout % groups:
        raise ValueError(f"conv2d: input has {cin} channels, weight {w.shape} with groups={groups} expects {cin_g * groups}")
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (wd + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    xg = xp.reshape(groups, cin_g, *xp.shape[1:])  # [G, Cin/G, Hp, Wp]
    wg = w.reshape(groups, cout // groups, cin_g, k, k)  # [G, Cout/G, Cin/G, k, k]
    out = np.zeros((groups, cout // groups, ho * wo), dtype=x.dtype)
    for i in range(k):  # sum the k*k taps, each a batched (per group) matrix product
        for j in range(k):
            y0, x0 = i * dilation, j * dilation
            tap = xg[:, :, y0 : y0 + stride * (ho - 1) + 1 : stride, x0 : x0 + stride * (wo - 1) + 1 : stride]
            out += wg[:, :, :, i, j] @ tap.reshape(groups, cin_g, ho * wo)
    return out.reshape(cout, ho, wo) + b[:, None, None]


def conv1x1_ref(x, w, b):
    """Pointwise conv as one matrix product: [Cin,H,W] -> [Cout,H,W]."""
    cin, h, wd = x.shape
    return (w.reshape(w.shape[0], cin) @ x.reshape(cin, h * wd)).reshape(-1, h, wd) + b[:, None, None]


# ---- Numba kernels -------------------------------------------------------------------------
# Callers validate shapes first (npseg.ops.checks); the loops trust them and never bounds-check.
from ._jit import kernel  # noqa: E402
from .activation import activate  # noqa: E402


@kernel
def _conv3x3_edge_column(o, up, mid, dn, col, d, width, w, co, k):
    """Taps of one border column (some taps fall in the zero padding)."""
    for kx in range(3):
        xx = col + (kx - 1) * d
        if 0 <= xx < width:
            o[col] += w[co, k, 0, kx] * up[xx] + w[co, k, 1, kx] * mid[xx] + w[co, k, 2, kx] * dn[xx]


@kernel
def conv3x3_nb(src, w, b, dilation, act, out):
    """Grouped, dilated 3x3 conv, zero padding = dilation, stride 1, + bias, then `act`.

    NCHW, one output row at a time with all 9 taps of an input channel in one
    pass. Shifted taps are slices made per row, so the inner loop indexes with
    its own counter only: no signed runtime offsets, no wraparound, vectorised.
    Rows above/below the image read a zero row.
    """
    cin, h, width = src.shape
    cout, cin_g = w.shape[0], w.shape[1]
    cout_g = cout // (cin // cin_g)
    d = dilation
    n = width - 2 * d  # interior columns: every tap lands inside the row
    zero_row = np.zeros(width, dtype=src.dtype)
    for y in range(h):
        for co in range(cout):
            o = out[co, y]
            for i in range(width):
                o[i] = b[co]
            ci0 = (co // cout_g) * cin_g
            for k in range(cin_g):
                plane = src[ci0 + k]
                up = plane[y - d] if y >= d else zero_row
                mid = plane[y]
                dn = plane[y + d] if y + d < h else zero_row
                if n > 0:
                    w00, w01, w02 = w[co, k, 0, 0], w[co, k, 0, 1], w[co, k, 0, 2]
                    w10, w11, w12 = w[co, k, 1, 0], w[co, k, 1, 1], w[co, k, 1, 2]
                    w20, w21, w22 = w[co, k, 2, 0], w[co, k, 2, 1], w[co, k, 2, 2]
                    oi = o[d:d + n]
                    u0, u1, u2 = up[0:n], up[d:d + n], up[2 * d:2 * d + n]
                    m0, m1, m2 = mid[0:n], mid[d:d + n], mid[2 * d:2 * d + n]
                    d0, d1, d2 = dn[0:n], dn[d:d + n], dn[2 * d:2 * d + n]
                    for i in range(n):
                        oi[i] += (w00 * u0[i] + w01 * u1[i] + w02 * u2[i]
                                  + w10 * m0[i] + w11 * m1[i] + w12 * m2[i]
                                  + w20 * d0[i] + w21 * d1[i] + w22 * d2[i])
                for col in range(min(d, width)):
                    _conv3x3_edge_column(o, up, mid, dn, col, d, width, w, co, k)
                for col in range(max(width - d, d), width):
                    _conv3x3_edge_column(o, up, mid, dn, col, d, width, w, co, k)
            if act != 0:
                for i in range(width):
                    o[i] = activate(o[i], act)


@kernel
def im2col3x3_nb(src, dilation, cols):
    """cols[ci*9 + ky*3 + kx, y*W + x] = src[ci, y + (ky-1)d, x + (kx-1)d], zero outside: a 3x3
    conv becomes one GEMM with the weight viewed as [Cout, Cin*9] (wins at small spatial sizes)."""
    cin, h, width = src.shape
    d = dilation
    for ci in range(cin):
        for ky in range(3):
            for kx in range(3):
                r = ci * 9 + ky * 3 + kx
                for y in range(h):
                    row = cols[r, y * width:(y + 1) * width]
                    yy = y + (ky - 1) * d
                    if yy < 0 or yy >= h:
                        row[:] = 0.0
                        continue
                    line = src[ci, yy]
                    for x in range(width):
                        xx = x + (kx - 1) * d
                        row[x] = line[xx] if 0 <= xx < width else 0.0


@kernel
def space_to_depth2x2_nb(src, scale, shift, cols):
    """cols[ci*4 + ky*2 + kx, yo*Wo + xo] = src[ci, 2yo+ky, 2xo+kx] * scale[ci] + shift[ci]:
    the (normalising) input of a 2x2 stride-2 conv as one GEMM operand."""
    cin, h, width = src.shape
    ho, wo = h // 2, width // 2
    for ci in range(cin):
        a, s = scale[ci], shift[ci]
        for ky in range(2):
            for kx in range(2):
                r = ci * 4 + ky * 2 + kx
                for yo in range(ho):
                    line = src[ci, 2 * yo + ky]
                    row = cols[r, yo * wo:(yo + 1) * wo]
                    for xo in range(wo):
                        row[xo] = line[2 * xo + kx] * a + s


@kernel
def conv1x1_nb(src, w, b, act, out):
    """Pointwise conv for narrow inputs (np.dot wins from ~48 input channels): w [Cout, Cin]."""
    cin = src.shape[0]
    cout = w.shape[0]
    n = src.size // cin
    s2, o2 = src.reshape(cin, n), out.reshape(cout, n)
    for co in range(cout):
        o = o2[co]
        for i in range(n):
            o[i] = b[co]
        for ci in range(cin):
            wv = w[co, ci]
            s = s2[ci]
            for i in range(n):
                o[i] += wv * s[i]
        if act != 0:
            for i in range(n):
                o[i] = activate(o[i], act)
