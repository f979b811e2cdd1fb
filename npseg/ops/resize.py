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


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import kernel  # noqa: E402
from .activation import activate  # noqa: E402


@kernel
def resize_bilinear_ac_nb(src, scale, shift, act, out):
    """out[c] = act(resize(src[c]) * scale[c] + shift[c]), bilinear align_corners=True, any sizes.

    Separable: blend two input rows (vectorised), then gather along x. A per-channel
    affine (a GroupNorm) commutes with the resize because its weights sum to 1.
    """
    c_n, h, width = src.shape
    out_h, out_w = out.shape[1], out.shape[2]
    sy = (h - 1) / (out_h - 1) if out_h > 1 else 0.0
    sx = (width - 1) / (out_w - 1) if out_w > 1 else 0.0
    x_lo = np.empty(out_w, dtype=np.int64)
    x_hi = np.empty(out_w, dtype=np.int64)
    x_frac = np.empty(out_w, dtype=np.float32)
    for ox in range(out_w):
        pos = ox * sx
        lo = min(int(pos), width - 1)
        x_lo[ox], x_hi[ox], x_frac[ox] = lo, min(lo + 1, width - 1), pos - lo
    line = np.empty(width, dtype=np.float32)
    for c in range(c_n):
        a, s = scale[c], shift[c]
        for oy in range(out_h):
            pos = oy * sy
            lo = min(int(pos), h - 1)
            hi = min(lo + 1, h - 1)
            fy = np.float32(pos - lo)
            r0, r1 = src[c, lo], src[c, hi]
            for i in range(width):
                line[i] = r0[i] + (r1[i] - r0[i]) * fy
            o = out[c, oy]
            for ox in range(out_w):
                v0 = line[x_lo[ox]]
                v = v0 + (line[x_hi[ox]] - v0) * x_frac[ox]
                o[ox] = activate(v * a + s, act)


@kernel
def max_pool2x2_nb(src, scale, shift, act, out):
    """out[c] = act(maxpool2x2(src[c] * scale[c] + shift[c])) (the affine first: scale may be negative)."""
    c_n = src.shape[0]
    ho, wo = out.shape[1], out.shape[2]
    for c in range(c_n):
        a, s = scale[c], shift[c]
        for yo in range(ho):
            r0, r1 = src[c, 2 * yo], src[c, 2 * yo + 1]
            o = out[c, yo]
            for xo in range(wo):
                v = max(max(r0[2 * xo] * a, r0[2 * xo + 1] * a), max(r1[2 * xo] * a, r1[2 * xo + 1] * a))
                o[xo] = activate(v + s, act)
