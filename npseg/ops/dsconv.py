"""Depthwise-separable convs: a depthwise conv + bias (3x3 with dilation 1, 2, 5 or 7, or 5x5; zero
"same" padding), and the fused DSConv relu(pointwise(relu(depthwise(x)))) with an optional GELU / residual + GELU
epilogue (MicroAUNet's DWD blocks). NumPy references, Numba kernels, validated steps.

The kernels run over tiles of rows: each channel's rows (and the dilation's halo) are copied
into a zero-bordered scratch, so every tap is a compile-time-constant offset and no padded copy
of the whole map is stored; the depthwise rows of a tile stay in L1 for the pointwise conv.
Optionally they also sum each output channel (float64 sum and sum of squares) for the
GroupNorm that follows.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .activation import gelu_ref, relu_ref
from .conv import conv2d_ref

EPILOGUE_RELU, EPILOGUE_GELU, EPILOGUE_RESIDUAL_GELU = 0, 1, 2


def depthwise_ref(x, w, b, dilation=1):
    """Depthwise k x k conv (w [C, 1, k, k]), zero "same" padding dilation * (k // 2), + bias."""
    return conv2d_ref(x, w, b, padding=dilation * (w.shape[2] // 2), dilation=dilation, groups=x.shape[0])


def dsconv_ref(x, w_dw, b_dw, w_pw, b_pw, dilation=1, epilogue=EPILOGUE_RELU, residual=None):
    """relu(pointwise(relu(depthwise_ref(x)))), then GELU, or GELU(. + residual), as `epilogue` says."""
    y = relu_ref(depthwise_ref(x, w_dw, b_dw, dilation))
    y = relu_ref(conv2d_ref(y, w_pw, b_pw))
    if epilogue == EPILOGUE_GELU:
        return gelu_ref(y)
    return gelu_ref(y + residual) if epilogue == EPILOGUE_RESIDUAL_GELU else y


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import inline, kernel  # noqa: E402
from .activation import gelu_fast  # noqa: E402
from .norm import add_row_stats  # noqa: E402
from .pool_extremes import pool_extremes_rows  # noqa: E402
from .steps import _arrays, _need  # noqa: E402

_NO_FLOOR = np.float32(-3.0e38)  # max(v, _NO_FLOOR) == v: "no ReLU" without a branch in the loop


@inline
def _load_rows(src, c, y0, rows, d, pad_rows):
    """pad_rows[r, d:d+W] = src[c, y0 - d + r] for r < rows + 2d, zero rows outside the map
    (the d border columns are zero from the allocation and never written)."""
    h, width = src.shape[1], src.shape[2]
    for r in range(rows + 2 * d):
        y = y0 - d + r
        line = pad_rows[r, d:d + width]
        if 0 <= y < h:
            s = src[c, y]
            for x in range(width):
                line[x] = s[x]
        else:
            line[:] = 0.0


@inline
def _dw_rows(pad_rows, wk, bias, floor, rows, width, dst, d):
    """dst[r*W + x] = max(sum of 9 taps + bias, floor); d is a literal at every call site."""
    w00, w01, w02 = wk[0, 0], wk[0, 1], wk[0, 2]
    w10, w11, w12 = wk[1, 0], wk[1, 1], wk[1, 2]
    w20, w21, w22 = wk[2, 0], wk[2, 1], wk[2, 2]
    for r in range(rows):
        r0, r1, r2 = pad_rows[r], pad_rows[r + d], pad_rows[r + 2 * d]
        o = dst[r * width:(r + 1) * width]
        for x in range(width):
            v = ((w00 * r0[x] + w01 * r0[x + d] + w02 * r0[x + 2 * d])
                 + (w10 * r1[x] + w11 * r1[x + d] + w12 * r1[x + 2 * d])
                 + (w20 * r2[x] + w21 * r2[x + d] + w22 * r2[x + 2 * d]))
            o[x] = max(v + bias, floor)


@inline
def _dw5_rows(pad_rows, wk, bias, floor, rows, width, dst):
    """The 5x5 (dilation 1) counterpart of _dw_rows: five taps per row, rows summed in order."""
    for r in range(rows):
        o = dst[r * width:(r + 1) * width]
        o[:] = 0.0
        for u in range(5):
            line = pad_rows[r + u]
            w0, w1, w2, w3, w4 = wk[u, 0], wk[u, 1], wk[u, 2], wk[u, 3], wk[u, 4]
            for x in range(width):
                o[x] += (w0 * line[x] + w1 * line[x + 1] + w2 * line[x + 2]) + (w3 * line[x + 3] + w4 * line[x + 4])
        for x in range(width):
            o[x] = max(o[x] + bias, floor)


@inline
def _dw_channel(src, c, y0, rows, d, w, b, floor, pad_rows, dst):
    """One channel's depthwise rows; each dilation a literal (constant tap offsets)."""
    width = src.shape[2]
    if w.shape[2] == 5:
        _load_rows(src, c, y0, rows, 2, pad_rows)
        _dw5_rows(pad_rows, w[c, 0], b[c], floor, rows, width, dst)
        return
    _load_rows(src, c, y0, rows, d, pad_rows)
    if d == 1:
        _dw_rows(pad_rows, w[c, 0], b[c], floor, rows, width, dst, 1)
    elif d == 2:
        _dw_rows(pad_rows, w[c, 0], b[c], floor, rows, width, dst, 2)
    elif d == 5:
        _dw_rows(pad_rows, w[c, 0], b[c], floor, rows, width, dst, 5)
    else:
        _dw_rows(pad_rows, w[c, 0], b[c], floor, rows, width, dst, 7)


@inline
def pointwise4(a0, a1, a2, a3, src, w, o, p0, n):
    """a_j[:n] += sum_c w[o + j, c] src[c, p0:p0 + n] for j < 4: four outputs from four input rows
    per pass over the accumulators (each accumulator load and store serves four FMAs, each input
    load four), then the remaining input rows one at a time."""
    c_n = src.shape[0]
    c4 = c_n - c_n % 4
    for c in range(0, c4, 4):
        s0, s1, s2, s3 = src[c, p0:p0 + n], src[c + 1, p0:p0 + n], src[c + 2, p0:p0 + n], src[c + 3, p0:p0 + n]
        w00, w01, w02, w03 = w[o, c], w[o, c + 1], w[o, c + 2], w[o, c + 3]
        w10, w11, w12, w13 = w[o + 1, c], w[o + 1, c + 1], w[o + 1, c + 2], w[o + 1, c + 3]
        w20, w21, w22, w23 = w[o + 2, c], w[o + 2, c + 1], w[o + 2, c + 2], w[o + 2, c + 3]
        w30, w31, w32, w33 = w[o + 3, c], w[o + 3, c + 1], w[o + 3, c + 2], w[o + 3, c + 3]
        for p in range(n):
            e0, e1, e2, e3 = s0[p], s1[p], s2[p], s3[p]
            a0[p] += (w00 * e0 + w01 * e1) + (w02 * e2 + w03 * e3)
            a1[p] += (w10 * e0 + w11 * e1) + (w12 * e2 + w13 * e3)
            a2[p] += (w20 * e0 + w21 * e1) + (w22 * e2 + w23 * e3)
            a3[p] += (w30 * e0 + w31 * e1) + (w32 * e2 + w33 * e3)
    for c in range(c4, c_n):
        s = src[c, p0:p0 + n]
        w0, w1, w2, w3 = w[o, c], w[o + 1, c], w[o + 2, c], w[o + 3, c]
        for p in range(n):
            v = s[p]
            a0[p] += w0 * v
            a1[p] += w1 * v
            a2[p] += w2 * v
            a3[p] += w3 * v


@kernel
def depthwise_nb(src, dilation, w, b, out, stats):
    """out = depthwise(src) + b (w [C, 1, k, k]: see _dw_channel); with a non-empty stats [C, 2],
    its float64 per-channel sum and sum of squares."""
    c_n, h, width = src.shape
    d = dilation
    pad = d * (w.shape[2] // 2)
    tile = max(1, 4096 // width)
    pad_rows = np.zeros((tile + 2 * pad, width + 2 * pad), dtype=np.float32)
    flat = out.reshape(c_n, h * width)
    if stats.shape[0] > 0:
        stats[:] = 0.0
    for y0 in range(0, h, tile):
        rows = min(tile, h - y0)
        for c in range(c_n):
            dst = flat[c, y0 * width:(y0 + rows) * width]
            _dw_channel(src, c, y0, rows, d, w, b, _NO_FLOOR, pad_rows, dst)
            if stats.shape[0] > 0:
                add_row_stats(dst, stats, c)


@kernel
def dsconv_nb(src, dilation, w_dw, b_dw, w_pw, b_pw, epilogue, residual, out, stats, top, bottom):
    """out = relu(w_pw @ relu(depthwise(src)) + b_pw), then the epilogue (EPILOGUE_*), four
    output channels per pass over a tile's depthwise rows; stats as in depthwise_nb. With a
    non-empty `top`, out is not stored: top / bottom [Cout, H/2, W/2] receive its 2x2 windows'
    max and min (see pool_extremes), and the rows of a tile are even."""
    c_n, h, width = src.shape
    cout = b_pw.shape[0]
    pooled = top.shape[0] > 0
    d = dilation
    tile = max(2, min(h, 8192 // ((c_n + 4) * width)))  # depthwise rows + 4 accumulators: about 32 KB
    tile -= tile % 2
    pad_rows = np.zeros((tile + 2 * d, width + 2 * d), dtype=np.float32)
    dw = np.empty((c_n, tile * width), dtype=np.float32)
    acc = np.empty((4, tile * width), dtype=np.float32)
    flat, res = out.reshape(out.shape[0], -1), residual.reshape(residual.shape[0], -1)
    if stats.shape[0] > 0:
        stats[:] = 0.0
    for y0 in range(0, h, tile):
        rows = min(tile, h - y0)
        n = rows * width
        for c in range(c_n):
            _dw_channel(src, c, y0, rows, d, w_dw, b_dw, np.float32(0.0), pad_rows, dw[c])
        for co in range(0, cout, 4):
            a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
            for j in range(4):
                acc[j, :n] = b_pw[co + j]
            pointwise4(a0, a1, a2, a3, dw, w_pw, co, 0, n)
            for j in range(4):
                a = acc[j]
                dst = a[:n] if pooled else flat[co + j, y0 * width:y0 * width + n]
                if epilogue == EPILOGUE_GELU:
                    for p in range(n):
                        dst[p] = gelu_fast(max(a[p], np.float32(0.0)))
                elif epilogue == EPILOGUE_RESIDUAL_GELU:
                    r = res[co + j, y0 * width:y0 * width + n]
                    for p in range(n):
                        dst[p] = gelu_fast(max(a[p], np.float32(0.0)) + r[p])
                else:
                    for p in range(n):
                        dst[p] = max(a[p], np.float32(0.0))
                if stats.shape[0] > 0:
                    add_row_stats(dst, stats, co + j)
                if pooled:
                    pool_extremes_rows(dst, rows, width, top[co + j], bottom[co + j], y0 // 2)


def stats_buffer(stats, c):
    """A kernel's statistics argument: `stats` checked to be [c, 2] float64, or an empty one for None."""
    if stats is None:
        return np.zeros((0, 2), np.float64)
    _need(stats.dtype == np.float64 and stats.shape == (c, 2) and stats.flags.c_contiguous,
          "stats must be [C, 2] float64")
    return stats


def depthwise(src, w, b, out, dilation=1, stats=None):
    """out = depthwise(src) + b, 3x3 (dilation 1, 2, 5 or 7) or 5x5 (dilation 1), zero "same" padding;
    `stats` [C, 2] float64 receives each channel's sum and sum of squares."""
    _arrays(src, w, b, out)
    k = w.shape[-1]
    _need(src.ndim == 3 and w.shape == (src.shape[0], 1, k, k) and b.shape == (src.shape[0],)
          and out.shape == src.shape, f"depthwise: x {src.shape}, w {w.shape}, out {out.shape}")
    _need((k == 3 and dilation in (1, 2, 5, 7)) or (k == 5 and dilation == 1),
          f"depthwise: 3x3 with dilation 1, 2, 5 or 7, or 5x5; got {k}x{k}, dilation {dilation}")
    _need(not np.shares_memory(src, out), "depthwise: in place is not supported")
    return [partial(depthwise_nb, src, int(dilation), w, b, out, stats_buffer(stats, src.shape[0]))]


def dsconv(src, w_dw, b_dw, w_pw, b_pw, out, dilation=1, epilogue=EPILOGUE_RELU, residual=None, stats=None,
           pooled=None):
    """The fused DSConv (see dsconv_nb; 3x3, dilation 1 or 2); w_pw [Cout, C, 1, 1] or [Cout, C], Cout a
    multiple of 4. pooled = (top, bottom) [Cout, H/2, W/2]: store the 2x2 windows' max and min of
    the output instead of the output (out None; H, W even)."""
    c, h, width = src.shape
    w2 = np.ascontiguousarray(w_pw.reshape(w_pw.shape[0], -1), dtype=np.float32)
    cout = w2.shape[0]
    if pooled is None:
        top = bottom = np.zeros((0, 0, 0), np.float32)
    else:
        (top, bottom), out = pooled, np.zeros((cout, 0, 0), np.float32)
        _arrays(top, bottom)
        _need(h % 2 == 0 and width % 2 == 0 and top.shape == bottom.shape == (cout, h // 2, width // 2),
              f"dsconv: pooled maps {top.shape} for an output [{cout}, {h}, {width}]")
    _arrays(src, w_dw, b_dw, b_pw, out)
    _need(w_dw.shape == (c, 1, 3, 3) and b_dw.shape == (c,) and w2.shape == (cout, c) and b_pw.shape == (cout,)
          and cout % 4 == 0 and out.shape in ((cout, h, width), (cout, 0, 0)) and (out.size > 0 or pooled is not None),
          f"dsconv: x {src.shape}, pw {w_pw.shape}, out {out.shape}")
    _need(dilation in (1, 2) and epilogue in (EPILOGUE_RELU, EPILOGUE_GELU, EPILOGUE_RESIDUAL_GELU), "dsconv: options")
    _need(not np.shares_memory(src, out), "dsconv: in place is not supported")
    if epilogue == EPILOGUE_RESIDUAL_GELU:
        _arrays(residual)
        _need(residual.shape == out.shape and not np.shares_memory(residual, out), "dsconv: residual")
    else:
        residual = np.zeros((1, 0), np.float32)
    return [partial(dsconv_nb, src, int(dilation), w_dw, b_dw, w2, b_pw, int(epilogue), residual, out,
                    stats_buffer(stats, cout), top, bottom)]
