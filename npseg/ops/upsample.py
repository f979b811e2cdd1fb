"""2x bilinear upsampling with align_corners=False (PyTorch's default): NumPy reference.

For an exact doubling, per axis: out[2m] = 0.75 x[m] + 0.25 x[m - 1] and
out[2m + 1] = 0.75 x[m] + 0.25 x[m + 1], the neighbours clamped at the borders.
"""
from __future__ import annotations

import numpy as np


def half_pixel_doubling_matrix(n: int) -> np.ndarray:
    """[2n, n] interpolation matrix of a 2x align_corners=False upsampling."""
    m = np.zeros((2 * n, n))
    for i in range(n):
        m[2 * i, i] += 0.75
        m[2 * i, max(i - 1, 0)] += 0.25
        m[2 * i + 1, i] += 0.75
        m[2 * i + 1, min(i + 1, n - 1)] += 0.25
    return m


def up2_ref(x):
    """[C, h, w] -> [C, 2h, 2w]."""
    ry = half_pixel_doubling_matrix(x.shape[1]).astype(x.dtype)
    rx = half_pixel_doubling_matrix(x.shape[2]).astype(x.dtype)
    return ry @ x @ rx.T


# ---- Numba kernels -------------------------------------------------------------------------
from functools import partial  # noqa: E402

from ._jit import inline, kernel  # noqa: E402
from .steps import _arrays, _need  # noqa: E402

_f = np.float32
Q1, Q3 = _f(0.25), _f(0.75)


@inline
def _up2_row(src, c, y, bias, rows, r):
    """rows[r] [2w] = the horizontal 2x upsampling of src[c, y] + bias (the weights sum to 1, so
    the bias commutes with the interpolation)."""
    last = src.shape[2] - 1
    rows[r, 0] = src[c, y, 0] + bias
    rows[r, 2 * last + 1] = src[c, y, last] + bias
    if last == 0:
        return
    rows[r, 1] = Q3 * src[c, y, 0] + Q1 * src[c, y, 1] + bias
    rows[r, 2 * last] = Q3 * src[c, y, last] + Q1 * src[c, y, last - 1] + bias
    for m in range(1, last):
        rows[r, 2 * m] = Q3 * src[c, y, m] + Q1 * src[c, y, m - 1] + bias
        rows[r, 2 * m + 1] = Q3 * src[c, y, m] + Q1 * src[c, y, m + 1] + bias


@kernel
def up2_bias_relu_nb(src, bias, rows, out):
    """out[c] = relu(up2(src[c]) + bias[c]): src [C, h, w], out [C, 2h, 2w], rows [h, 2w] scratch."""
    c_n, h, width = src.shape
    for c in range(c_n):
        for y in range(h):
            _up2_row(src, c, y, bias[c], rows, y)
        for y in range(h):
            up, down = max(y - 1, 0), min(y + 1, h - 1)
            for x in range(2 * width):
                out[c, 2 * y, x] = max(Q3 * rows[y, x] + Q1 * rows[up, x], _f(0.0))
                out[c, 2 * y + 1, x] = max(Q3 * rows[y, x] + Q1 * rows[down, x], _f(0.0))


@kernel
def up2_relu_head_nb(src, bias, w, b, ring, out):
    """out[k] = b[k] + sum_c w[k, c] relu(up2(src[c]) + bias[c]): the last decoder's upsampling,
    ReLU and the 1x1 output head in one pass, without storing the upsampled map.
    ring [C, 3, 2w]: each channel's horizontally upsampled rows y - 1, y, y + 1."""
    c_n, h, width = src.shape
    k_n = out.shape[0]
    for c in range(c_n):
        for y in range(min(2, h)):
            _up2_row(src, c, y, bias[c], ring[c], y)
    for y in range(h):
        for k in range(k_n):
            for x in range(2 * width):
                out[k, 2 * y, x] = b[k]
                out[k, 2 * y + 1, x] = b[k]
        mid, up, down = y % 3, max(y - 1, 0) % 3, min(y + 1, h - 1) % 3
        for c in range(c_n):
            for k in range(k_n):
                wk = w[k, c]
                for x in range(2 * width):
                    r = Q3 * ring[c, mid, x]
                    out[k, 2 * y, x] += wk * max(r + Q1 * ring[c, up, x], _f(0.0))
                    out[k, 2 * y + 1, x] += wk * max(r + Q1 * ring[c, down, x], _f(0.0))
        if y + 2 < h:  # row y - 1's slot is free now
            for c in range(c_n):
                _up2_row(src, c, y + 2, bias[c], ring[c], (y + 2) % 3)


def up2_bias_relu(src, bias, out):
    """out = relu(up2(src) + bias): [C, h, w] -> [C, 2h, 2w]."""
    _arrays(src, bias, out)
    c, h, width = src.shape
    _need(src.ndim == 3 and out.shape == (c, 2 * h, 2 * width) and bias.shape == (c,),
          f"up2_bias_relu: {src.shape} -> {out.shape}, bias {bias.shape}")
    return [partial(up2_bias_relu_nb, src, bias, np.zeros((h, 2 * width), _f), out)]


def up2_relu_head(src, bias, w, b, out):
    """out = w @ relu(up2(src) + bias) + b: [C, h, w] -> [K, 2h, 2w]; w [K, C(, 1, 1)], b [K]."""
    _arrays(src, bias, b, out)
    c, h, width = src.shape
    w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1), dtype=_f)
    _need(src.ndim == 3 and bias.shape == (c,) and w2.shape == (out.shape[0], c) and b.shape == (out.shape[0],)
          and out.shape[1:] == (2 * h, 2 * width), f"up2_relu_head: {src.shape} -> {out.shape}, weight {w.shape}")
    return [partial(up2_relu_head_nb, src, bias, w2, b, np.zeros((c, 3, 2 * width), _f), out)]
