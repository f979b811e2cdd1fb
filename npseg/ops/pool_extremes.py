"""Max-pooling 2x2 of a per-channel affine (a GroupNorm) + activation, from each window's max and
min: act(maxpool(x * a + s)) = act(a * max + s) where a >= 0, act(a * min + s) where a < 0 (exact:
float rounding is monotone). A producer that stores the two pooled maps instead of x (a quarter
each) saves writing and re-reading x, whose GroupNorm statistics are only known once x is whole.
NumPy reference, Numba helper for producers, apply kernel, validated step.
"""
from __future__ import annotations

from functools import partial


def pool_extremes_ref(x):
    """(max, min) over each 2x2 window of [C, H, W] (H, W even)."""
    c, h, w = x.shape
    windows = x.reshape(c, h // 2, 2, w // 2, 2)
    return windows.max(axis=(2, 4)), windows.min(axis=(2, 4))


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import inline, kernel  # noqa: E402
from .activation import activate  # noqa: E402
from .steps import _act, _arrays, _need  # noqa: E402


@inline
def pool_extremes_rows(a, rows, width, top, bottom, y0):
    """top/bottom[y0 + r // 2, x] = max/min of the 2x2 windows of a flat [rows * width] tile (rows even)."""
    half = width // 2
    for r in range(0, rows, 2):
        r0, r1 = a[r * width:(r + 1) * width], a[(r + 1) * width:(r + 2) * width]
        hi, lo = top[y0 + r // 2], bottom[y0 + r // 2]
        for x in range(half):
            u0, u1, v0, v1 = r0[2 * x], r0[2 * x + 1], r1[2 * x], r1[2 * x + 1]
            hi[x] = max(max(u0, u1), max(v0, v1))
            lo[x] = min(min(u0, u1), min(v0, v1))


@kernel
def pool_extremes_apply_nb(top, bottom, scale, shift, act, out):
    """out[c] = act(scale[c] * (top if scale[c] >= 0 else bottom)[c] + shift[c])."""
    for c in range(out.shape[0]):
        a, s = scale[c], shift[c]
        src = top[c] if a >= 0 else bottom[c]
        for y in range(out.shape[1]):
            line, o = src[y], out[c, y]
            for x in range(out.shape[2]):
                o[x] = activate(line[x] * a + s, act)


def pool_extremes_apply(top, bottom, scale, shift, out, act):
    """out = act(maxpool2x2(x * scale + shift)) from x's pooled max (top) and min (bottom)."""
    _arrays(top, bottom, scale, shift, out)
    _need(top.shape == bottom.shape == out.shape and out.ndim == 3 and scale.shape == shift.shape == (out.shape[0],),
          f"pool_extremes_apply: {top.shape}, {bottom.shape} -> {out.shape}")
    return [partial(pool_extremes_apply_nb, top, bottom, scale, shift, _act(act), out)]
