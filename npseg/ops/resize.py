"""Bilinear resize with align_corners=True, and 2x2 max-pool: NumPy reference."""
from __future__ import annotations

import numpy as np


def align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] interpolation matrix: output i samples input at i*(n_in-1)/(n_out-1)."""
    m = np.zeros((n_out, n_in), dtype=np.float64)
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out) * scale
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), hi), frac)
    return m


def resize_bilinear_ac_ref(x, out_h: int, out_w: int):
    """Bilinear align_corners=True resize of [C,h,w] to [C,out_h,out_w] (up or down)."""
    ry = align_corners_matrix(x.shape[1], out_h).astype(x.dtype)
    rx = align_corners_matrix(x.shape[2], out_w).astype(x.dtype)
    return ry @ x @ rx.T


def max_pool2x2_ref(x):
    """2x2, stride 2 max-pool of [C,H,W] (H, W even)."""
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))
