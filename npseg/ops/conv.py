"""Convolutions: the general NumPy reference (any kernel size, stride, dilation, groups), the
zero-bordered buffer every 3x3-family kernel reads, and the epilogue the accumulating kernels share.
The kernels live one conv kind per file: conv3x3.py, conv1x1.py, conv_stride2.py.

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


# ---- Numba kernels -------------------------------------------------------------------------
# Callers validate shapes first (npseg.ops.steps); the loops trust them and never bounds-check.
from ._jit import inline, kernel  # noqa: E402
from .activation import activate  # noqa: E402


@kernel
def pad_nb(src, pad, padded):
    """Copy [C,H,W] into the interior of a zero-bordered flat buffer [C, (H+2p)*(W+2p) + 2p]
    (its border is zeroed once by the caller and never written)."""
    c_n, h, width = src.shape
    wp = width + 2 * pad
    for c in range(c_n):
        for y in range(h):
            start = (y + pad) * wp + pad
            dst, line = padded[c, start:start + width], src[c, y]
            for x in range(width):
                dst[x] = line[x]


@inline
def _bias_act(dst, acc, bias, act):
    """dst[x] = act(acc[x] + bias): the epilogue of the accumulating conv kernels."""
    if act == 0:
        for x in range(dst.size):
            dst[x] = acc[x] + bias
    else:
        for x in range(dst.size):
            dst[x] = activate(acc[x] + bias, act)
