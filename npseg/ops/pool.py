"""Average pooling: 2x2 stride-2 and global (per-channel mean). NumPy reference, Numba kernels,
and the validated step of the 2x2 pool.

The kernels read and write the flat zero-bordered layout of conv.pad_nb
([C, (H+2p)*(W+2p) + 2p], interior at row p, column p); p = 0 is a plain [C, H*W].
"""
from __future__ import annotations

from functools import partial

import numpy as np


def avg_pool2x2_ref(x):
    """Mean of each 2x2 block of [C, H, W] (H, W even) -> [C, H/2, W/2]."""
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def global_avg_pool_ref(x):
    """Per-channel mean over every position of [C, H, W] -> [C]."""
    return x.mean(axis=(1, 2))


def padded_size(h: int, w: int, pad: int) -> int:
    """Length of one channel of the flat zero-bordered layout (see conv.pad_nb)."""
    return (h + 2 * pad) * (w + 2 * pad) + 2 * pad


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import kernel  # noqa: E402
from .steps import _arrays, _need  # noqa: E402


@kernel
def global_avg_pool_nb(padded, pad, h, width, means):
    """means[c] = mean of the h x width interior of channel c of a flat bordered buffer,
    summed in float64 (a float32 sum over 65,536 positions drifts by ~1e-6)."""
    wp = width + 2 * pad
    for c in range(padded.shape[0]):
        plane = padded[c]
        total = 0.0
        for y in range(h):
            start = (y + pad) * wp + pad
            row = plane[start:start + width]  # a slice: a runtime offset in the index stops vectorisation
            row_sum = np.float32(0.0)  # a row (<= a few hundred values) sums safely in float32
            for x in range(width):
                row_sum += row[x]
            total += row_sum
        means[c] = total / (h * width)


@kernel
def avg_pool2x2_nb(src, out, pad):
    """out (flat, border `pad`, untouched) interior = 2x2 means of src [C, H, W]."""
    c_n, h, width = src.shape
    ho, wo = h // 2, width // 2
    wp = wo + 2 * pad
    for c in range(c_n):
        for yo in range(ho):
            r0, r1 = src[c, 2 * yo], src[c, 2 * yo + 1]
            start = (yo + pad) * wp + pad
            o = out[c, start:start + wo]
            for xo in range(wo):
                o[xo] = ((r0[2 * xo] + r0[2 * xo + 1]) + (r1[2 * xo] + r1[2 * xo + 1])) * np.float32(0.25)


def avg_pool2x2(src, out, pad=0):
    """2x2 average pool of src [C, H, W] into the interior of `out`, a flat buffer with border `pad`."""
    _arrays(src, out)
    _need(src.ndim == 3 and src.shape[1] % 2 == 0 and src.shape[2] % 2 == 0, f"avg_pool2x2: input {src.shape}")
    c, h, w = src.shape
    _need(isinstance(pad, int) and pad >= 0 and out.shape == (c, padded_size(h // 2, w // 2, pad)),
          f"avg_pool2x2: out {out.shape} does not fit {src.shape} with border {pad}")
    _need(not np.shares_memory(src, out), "avg_pool2x2: operands overlap")
    return [partial(avg_pool2x2_nb, src, out, int(pad))]
