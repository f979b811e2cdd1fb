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
