"""MicroAUNet's LDGA without its depthwise conv: pointwise convs behind GroupNorms, and the
per-pixel spatial gate. NumPy references, Numba kernels, validated steps.

    u = W1 GN(v) + b1                 (v: the depthwise conv's output)
    y = u * sigmoid(wg . u)           per pixel, wg [C] (a bias-free 1x1 conv C -> 1)
    out = W2 GN(a2 y + c2) + W3 GN(a3 x + c3) + b   (the two k = 1 DWCs; a, c per channel)

A GroupNorm's statistics are per frame, so it cannot fold into a conv at load; but given a
frame's per-channel float64 sums it is a per-channel affine, and that affine folds into the
next pointwise conv's weights, per frame (C x Cout numbers). The kernels take the sums that
the producer of their input accumulated (dsconv.depthwise, the gate kernel), so no pass
reads a map only for its statistics. GroupNorm affines folded into the next conv at load
come in as gamma = 1, beta = 0.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .activation import gelu_ref, sigmoid_ref
from .conv import conv2d_ref
from .norm import group_norm_ref


def gn_pointwise_ref(x, groups, w, b, pre_scale=None, pre_shift=None):
    """w @ GroupNorm(pre_scale[c] x + pre_shift[c]) + b (non-affine GroupNorm; no pre-affine: identity)."""
    if pre_scale is not None:
        x = x * pre_scale[:, None, None] + pre_shift[:, None, None]
    return conv2d_ref(group_norm_ref(x, groups), w, b)


def sigmoid_gelu_product_ref(a, b):
    return sigmoid_ref(a) * gelu_ref(b)


def spatial_gate_pointwise_ref(u, wg):
    """u * sigmoid(wg . u) per pixel; wg [1, C, 1, 1]."""
    return u * sigmoid_ref(conv2d_ref(u, wg, np.zeros(1, u.dtype)))


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import ACT_NONE, kernel  # noqa: E402
from .activation import activate, gelu_fast, sigmoid_fast  # noqa: E402
from .dsconv import pointwise4, stats_buffer  # noqa: E402
from .norm import add_row_stats  # noqa: E402
from .norm import group_mean_rstd  # noqa: E402
from .pool_extremes import pool_extremes_rows  # noqa: E402
from .steps import _act, _arrays, _need  # noqa: E402

TILE = 1024  # pixels per pass: the tile's C rows stay in L1
F32 = np.float32


@kernel
def gn_affine_nb(stats, count, groups, eps, pre_scale, pre_shift, gamma, beta, scale, shift):
    """GroupNorm(pre_scale[c] v + pre_shift[c]) * gamma + beta == v * scale[c] + shift[c], from the
    float64 per-channel sums of v (stats [C, 2]: sum, sum of squares over `count` positions)."""
    c_n = stats.shape[0]
    per_group = c_n // groups
    for g in range(groups):
        total, total_sq = 0.0, 0.0
        for c in range(g * per_group, (g + 1) * per_group):
            a, s = np.float64(pre_scale[c]), np.float64(pre_shift[c])
            total += a * stats[c, 0] + s * count
            total_sq += a * a * stats[c, 1] + 2.0 * a * s * stats[c, 0] + s * s * count
        mean, rstd = group_mean_rstd(total, total_sq, per_group * count, eps)
        for c in range(g * per_group, (g + 1) * per_group):
            k = rstd * gamma[c]
            scale[c] = k * pre_scale[c]
            shift[c] = (pre_shift[c] - mean) * k + beta[c]


@kernel
def _fold_input_affine(w, scale, shift, w_out, b_out):
    """w_out = w * scale[None, :]; b_out += w @ shift (float64 sum): W (x * scale + shift) + b."""
    for o in range(w.shape[0]):
        acc = 0.0
        for c in range(w.shape[1]):
            w_out[o, c] = w[o, c] * scale[c]
            acc += np.float64(w[o, c]) * shift[c]
        b_out[o] += acc


@kernel
def gate_pointwise_nb(v, scale, shift, w, b, wg, y, stats, w_frame, b_frame):
    """u = w (v * scale + shift) + b; y = u * sigmoid(wg . u); stats [C, 2] of y (float64).
    C is a multiple of 4 (a GroupNorm's 4 groups)."""
    c_n = v.shape[0]
    n_all = v.size // c_n
    src, dst = v.reshape(c_n, n_all), y.reshape(c_n, n_all)
    b_frame[:] = b
    _fold_input_affine(w, scale, shift, w_frame, b_frame)
    u = np.empty((c_n, TILE), dtype=np.float32)
    logit = np.empty(TILE, dtype=np.float32)
    stats[:] = 0.0
    for p0 in range(0, n_all, TILE):
        n = min(TILE, n_all - p0)
        logit[:n] = 0.0
        for o in range(0, c_n, 4):
            for j in range(4):
                u[o + j, :n] = b_frame[o + j]
            pointwise4(u[o], u[o + 1], u[o + 2], u[o + 3], src, w_frame, o, p0, n)
            for j in range(4):
                uo, wgo = u[o + j], wg[o + j]
                for p in range(n):
                    logit[p] += wgo * uo[p]
        for p in range(n):
            logit[p] = sigmoid_fast(logit[p])
        for o in range(c_n):
            uo, d = u[o], dst[o, p0:p0 + n]
            for p in range(n):
                d[p] = uo[p] * logit[p]
            add_row_stats(d, stats, o)


@kernel
def dual_pointwise_nb(y, x, sy, ty, sx, tx, wy, wx, b, act, out, stats, wy_frame, wx_frame, b_frame, top, bottom):
    """out = act(wy (y * sy + ty) + wx (x * sx + tx) + b); stats [Cout, 2] of out when non-empty.
    An x with no channels (and wx with no columns) leaves the single-input form wy (y sy + ty) + b.
    The frame weights have Cout rounded up to 4 rows (the extra ones zero): four outputs per pass,
    over tiles of whole rows. With a non-empty `top`, out is not stored: top / bottom [Cout, h/2,
    w/2] receive its 2x2 windows' max and min (see pool_extremes)."""
    cin, cout = y.shape[0], b.shape[0]
    h, width = y.shape[1], y.shape[2]
    pooled = top.shape[0] > 0
    ys, xs, dst = y.reshape(cin, h * width), x.reshape(x.shape[0], h * width), out.reshape(out.shape[0], -1)
    b_frame[:] = 0.0
    b_frame[:cout] = b
    _fold_input_affine(wy, sy, ty, wy_frame, b_frame)
    _fold_input_affine(wx, sx, tx, wx_frame, b_frame)
    tile = max(2, TILE // width)
    tile -= tile % 2
    acc = np.empty((4, tile * width), dtype=np.float32)
    if stats.shape[0] > 0:
        stats[:] = 0.0
    for y0 in range(0, h, tile):
        rows = min(tile, h - y0)
        p0, n = y0 * width, rows * width
        for o in range(0, cout, 4):
            for j in range(4):
                acc[j, :n] = b_frame[o + j]
            pointwise4(acc[0], acc[1], acc[2], acc[3], ys, wy_frame, o, p0, n)
            if xs.shape[0] > 0:
                pointwise4(acc[0], acc[1], acc[2], acc[3], xs, wx_frame, o, p0, n)
            for j in range(min(4, cout - o)):
                a = acc[j]
                d = a[:n] if pooled else dst[o + j, p0:p0 + n]
                if act != ACT_NONE:
                    for p in range(n):
                        d[p] = activate(a[p], act)
                elif not pooled:
                    d[:] = a[:n]
                if stats.shape[0] > 0:
                    add_row_stats(d, stats, o + j)
                if pooled:
                    pool_extremes_rows(d, rows, width, top[o + j], bottom[o + j], y0 // 2)


@kernel
def sigmoid_gelu_product_nb(a, b, out):
    """out = sigmoid(a) * GELU(b) (MALUNet's gated attention unit)."""
    af, bf, of = a.reshape(-1), b.reshape(-1), out.reshape(-1)
    for i in range(of.size):
        of[i] = sigmoid_fast(af[i]) * gelu_fast(bf[i])


def _vectors(n, *vs):
    _arrays(*vs)
    _need(all(v.shape == (n,) for v in vs), f"vectors must be [{n}]")


def _matrix(w, rows, cols):
    w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1), dtype=np.float32)
    _need(w2.shape == (rows, cols), f"pointwise weight {w.shape} is not [{rows}, {cols}]")
    return w2


def gn_affine(stats, count, groups, pre_scale, pre_shift, gamma, beta, scale, shift, eps=1e-5):
    """scale, shift [C] with GroupNorm(pre_scale v + pre_shift) * gamma + beta = v * scale + shift."""
    c = stats.shape[0]
    stats_buffer(stats, c)
    _vectors(c, pre_scale, pre_shift, gamma, beta, scale, shift)
    _need(c % groups == 0 and count >= 1, f"gn_affine: {c} channels, {groups} groups, {count} positions")
    return [partial(gn_affine_nb, stats, float(count), int(groups), float(eps), pre_scale, pre_shift, gamma, beta,
                    scale, shift)]


def gate_pointwise(v, scale, shift, w, b, wg, y, stats):
    """y = u * sigmoid(wg . u), u = w (v * scale + shift) + b; stats [C, 2] of y."""
    _arrays(v, y)
    c = v.shape[0]
    _need(v.ndim == 3 and y.shape == v.shape and not np.shares_memory(v, y), f"gate_pointwise: {v.shape} -> {y.shape}")
    _vectors(c, scale, shift, b)
    stats_buffer(stats, c)
    _need(c % 4 == 0, f"gate_pointwise: {c} channels, not a multiple of 4")
    w2, wg2 = _matrix(w, c, c), _matrix(wg, 1, c).reshape(c)
    return [partial(gate_pointwise_nb, v, scale, shift, w2, b, wg2, y, stats, np.empty_like(w2),
                    np.empty(c, np.float32))]


def dual_pointwise(y, x, sy, ty, sx, tx, wy, wx, b, out, act=ACT_NONE, stats=None, pooled=None):
    """out = act(wy (y * sy + ty) + wx (x * sx + tx) + b); optional stats [Cout, 2] of out.
    pooled = (top, bottom) [Cout, h/2, w/2]: store out's 2x2 windows' max and min instead (out None)."""
    cin, cout, (h, width) = y.shape[0], b.shape[0], y.shape[1:]
    if pooled is None:
        top = bottom = np.zeros((0, 0, 0), F32)
    else:
        (top, bottom), out = pooled, np.zeros((cout, 0, 0), F32)
        _arrays(top, bottom)
        _need(h % 2 == 0 and width % 2 == 0 and top.shape == bottom.shape == (cout, h // 2, width // 2),
              f"dual_pointwise: pooled maps {top.shape} for an output [{cout}, {h}, {width}]")
    _arrays(y, x, out)
    _need(y.ndim == 3 and x.shape in (y.shape, (0, *y.shape[1:])) and out.shape in ((cout, h, width), (cout, 0, 0)),
          f"dual_pointwise: {y.shape}, {x.shape} -> {out.shape}")
    _need(not (np.shares_memory(out, y) or np.shares_memory(out, x)), "dual_pointwise: in place is not supported")
    _vectors(cin, sy, ty, sx, tx)
    _vectors(cout, b)
    xc = x.shape[0]
    stats = stats_buffer(stats, cout)
    wy2, wx2 = _matrix(wy, cout, cin), _matrix(wx, cout, xc)
    rows = -(-cout // 4) * 4  # the frame weights' extra rows stay zero
    return [partial(dual_pointwise_nb, y, x, sy, ty, sx, tx, wy2, wx2, b, _act(act), out, stats,
                    np.zeros((rows, cin), F32), np.zeros((rows, xc), F32), np.zeros(rows, F32), top, bottom)]


def gn_pointwise(y, sy, ty, wy, b, out, act=ACT_NONE, stats=None):
    """out = act(wy (y * sy + ty) + b): a pointwise conv behind a GroupNorm given as its affine."""
    _arrays(y)
    empty = np.zeros((0, *y.shape[1:]), F32)
    return dual_pointwise(y, empty, sy, ty, np.zeros(y.shape[0], F32), np.zeros(y.shape[0], F32), wy,
                          np.zeros((out.shape[0], 0), F32), b, out, act, stats)


def sigmoid_gelu_product(a, b, out):
    _arrays(a, b, out)
    _need(a.shape == b.shape == out.shape, f"sigmoid_gelu_product: {a.shape}, {b.shape} -> {out.shape}")
    return [partial(sigmoid_gelu_product_nb, a, b, out)]
