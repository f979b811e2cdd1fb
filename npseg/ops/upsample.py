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
