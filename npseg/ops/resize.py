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
def _ac_taps(n_in, n_out):
    """Lower source index and weight of the upper one for each output of an align_corners resize."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    lo = np.empty(n_out, dtype=np.int64)
    frac = np.empty(n_out, dtype=np.float32)
    for i in range(n_out):
        pos = i * scale
        lo[i] = min(int(pos), n_in - 1)
        frac[i] = pos - lo[i]
    return lo, frac


@kernel
def resize_bilinear_ac_nb(src, scale, shift, act, out):
    """out[c] = act(resize(src[c]) * scale[c] + shift[c]), bilinear align_corners=True, any sizes.

    Separable: the gathering x pass runs on the input's rows (fewer when upsampling),
    then the contiguous y pass blends two of those rows with the affine and act fused.
    A per-channel affine (a GroupNorm) commutes with the resize: its weights sum to 1.
    """
    c_n, h, width = src.shape
    out_h, out_w = out.shape[1], out.shape[2]
    x_lo, x_frac = _ac_taps(width, out_w)
    y_lo, y_frac = _ac_taps(h, out_h)
    rows = np.empty((h, out_w), dtype=np.float32)
    last = width - 1
    # exact 2x upsampling (the decoder's): output 2j reads inputs j - 1, j and output 2j + 1 reads
    # j, j + 1, so the x pass needs no gathers; checked against the taps, so the values match
    doubling = out_w == 2 * width and width >= 2
    if doubling:
        for j in range(width):
            if x_lo[2 * j] != max(j - 1, 0) or x_lo[2 * j + 1] != j:
                doubling = False
    for c in range(c_n):
        for y in range(h):
            line, row = src[c, y], rows[y]
            if doubling:
                row[0] = line[0] + (line[1] - line[0]) * x_frac[0]
                row[1] = line[0] + (line[1] - line[0]) * x_frac[1]
                for j in range(1, last):
                    v0, v1, v2 = line[j - 1], line[j], line[j + 1]
                    row[2 * j] = v0 + (v1 - v0) * x_frac[2 * j]
                    row[2 * j + 1] = v1 + (v2 - v1) * x_frac[2 * j + 1]
                v0, v1 = line[last - 1], line[last]
                row[2 * last] = v0 + (v1 - v0) * x_frac[2 * last]
                row[2 * last + 1] = v1  # the last output sits on the last input
            else:
                for ox in range(out_w):
                    lo = x_lo[ox]
                    v0 = line[lo]
                    row[ox] = v0 + (line[min(lo + 1, last)] - v0) * x_frac[ox]
        a, s = scale[c], shift[c]
        for oy in range(out_h):
            lo = y_lo[oy]
            r0, r1, fy = rows[lo], rows[min(lo + 1, h - 1)], y_frac[oy]
            o = out[c, oy]
            if act == 0:
                for ox in range(out_w):
                    o[ox] = (r0[ox] + (r1[ox] - r0[ox]) * fy) * a + s
            else:
                for ox in range(out_w):
                    o[ox] = activate((r0[ox] + (r1[ox] - r0[ox]) * fy) * a + s, act)


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
