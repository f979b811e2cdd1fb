"""Stride-2 convolutions: the unpadded 2x2 (Down blocks, with the GroupNorm applied on the
fly) and the first layer's 3x3 conv + GroupNorm + 2x2 conv folded into one 4x4 stride-2 conv
(a statistics pass, the fold, the conv). Reference: npseg.ops.conv.conv2d_ref. Callers
validate shapes first (npseg.ops.steps)."""
from __future__ import annotations

import numpy as np

from ._jit import kernel, kernel_ordered
from .conv import _bias_act
from .conv3x3 import _taps3x3_quad
from .norm import group_mean_rstd
from .scratch import ACCUMULATORS, INPUTS, staggered_rows


@kernel_ordered
def down2x2_nb(src, scale, shift, w, b, act, out, pad, padded):
    """out = act(conv2x2_stride2(src * scale + shift) + b), w [Cout, Cin, 2, 2]; with a
    non-empty `padded` (pad_nb's layout, border `pad`) the rows are also written there, so the
    next 3x3 conv needs no pad pass.

    A band of output rows (>= 512 outputs: 48->48 at 64x64 0.13 vs 0.19 ms with 128, 16->16 at
    128x128 0.09 vs 0.11; 1024 was slower) is done at a time: the two input rows of every
    channel are normalised and split into even and odd columns once, then four output channels
    accumulate all four taps of
    one input channel per pass, so every loaded input feeds 16 FMAs. Compiled without
    reassociation, the sum keeps its written order (tap pairs, then the channel's 4 taps, then
    channel by channel): this layer's rounding reaches the logits more than most (measured on
    the golden inputs), so its order is fixed, not left to the compiler.
    """
    cin = src.shape[0]
    cout, ho, wo = out.shape
    band = max(1, 512 // wo)
    even = staggered_rows(cin * 2, band * wo, INPUTS)
    odd = staggered_rows(cin * 2, band * wo, INPUTS)
    acc = staggered_rows(4, band * wo, ACCUMULATORS)
    wp = wo + 2 * pad
    for y0 in range(0, ho, band):
        rows = min(band, ho - y0)
        n = rows * wo
        for ci in range(cin):
            a, s = scale[ci], shift[ci]
            for r in range(rows):
                for ky in range(2):
                    line = src[ci, 2 * (y0 + r) + ky]
                    e, o = even[2 * ci + ky, r * wo:(r + 1) * wo], odd[2 * ci + ky, r * wo:(r + 1) * wo]
                    for x in range(wo):
                        e[x] = line[2 * x] * a + s
                        o[x] = line[2 * x + 1] * a + s
        for co in range(0, cout, 4):
            block = min(4, cout - co)
            acc[:block, :n] = 0.0
            a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
            for ci in range(cin):
                e0, o0, e1, o1 = even[2 * ci], odd[2 * ci], even[2 * ci + 1], odd[2 * ci + 1]
                if block == 4:
                    p0, q0, r0, s0 = w[co, ci, 0, 0], w[co, ci, 0, 1], w[co, ci, 1, 0], w[co, ci, 1, 1]
                    p1, q1, r1, s1 = w[co + 1, ci, 0, 0], w[co + 1, ci, 0, 1], w[co + 1, ci, 1, 0], w[co + 1, ci, 1, 1]
                    p2, q2, r2, s2 = w[co + 2, ci, 0, 0], w[co + 2, ci, 0, 1], w[co + 2, ci, 1, 0], w[co + 2, ci, 1, 1]
                    p3, q3, r3, s3 = w[co + 3, ci, 0, 0], w[co + 3, ci, 0, 1], w[co + 3, ci, 1, 0], w[co + 3, ci, 1, 1]
                    for x in range(n):
                        u, v, y, z = e0[x], o0[x], e1[x], o1[x]
                        a0[x] += (p0 * u + q0 * v) + (r0 * y + s0 * z)
                        a1[x] += (p1 * u + q1 * v) + (r1 * y + s1 * z)
                        a2[x] += (p2 * u + q2 * v) + (r2 * y + s2 * z)
                        a3[x] += (p3 * u + q3 * v) + (r3 * y + s3 * z)
                else:
                    for j in range(block):
                        p, q, r, t = w[co + j, ci, 0, 0], w[co + j, ci, 0, 1], w[co + j, ci, 1, 0], w[co + j, ci, 1, 1]
                        aj = acc[j]
                        for x in range(n):
                            aj[x] += (p * e0[x] + q * o0[x]) + (r * e1[x] + t * o1[x])
            for j in range(block):
                for r in range(rows):
                    row = out[co + j, y0 + r]
                    _bias_act(row, acc[j, r * wo:(r + 1) * wo], b[co + j], act)
                    if padded.shape[1] > 0:
                        dst = padded[co + j, (y0 + r + pad) * wp + pad:(y0 + r + pad) * wp + pad + wo]
                        for x in range(wo):
                            dst[x] = row[x]


@kernel
def _add_stats(row, bias, stats, c):
    """stats[c] += (sum, sum of squares) of row + bias, in float64 (compiled with reassociation,
    so the reductions vectorise even when called from an ordered kernel)."""
    total, total_sq = 0.0, 0.0
    for x in range(row.size):
        v = np.float64(row[x] + bias)
        total += v
        total_sq += v * v
    stats[c, 0] += total
    stats[c, 1] += total_sq


@kernel_ordered
def conv3x3_stats_nb(padded, pad, h, width, w, b, stats):
    """stats[c] = (sum, sum of squares) in float64 of channel c of a dense 3x3 conv + bias
    (padding 1, Cout a multiple of 4) over an H x W map in pad_nb's buffer, without storing
    the conv: the statistics pass of the first layer's GroupNorm (see gn_down_fold_nb).
    Tiles and summation order as in conv3x3_nb, so each value is the one it would store."""
    cin, cout = padded.shape[0], w.shape[0]
    wp = width + 2 * pad
    tile = max(1, 2048 // wp)
    acc = staggered_rows(4, tile * wp, ACCUMULATORS)
    stats[:] = 0.0
    for y0 in range(0, h, tile):
        rows = min(tile, h - y0)
        n = rows * wp
        s = (y0 + pad - 1) * wp + pad - 1
        for co in range(0, cout, 4):
            acc[:, :n] = 0.0
            for k in range(cin):
                plane = padded[k]
                _taps3x3_quad(acc, plane[s:], plane[s + wp:], plane[s + 2 * wp:], w, co, k, n, 1)
            for j in range(4):
                for r in range(rows):
                    _add_stats(acc[j, r * wp:r * wp + width], b[co + j], stats, co + j)


@kernel
def gn_down_fold_nb(stats, count, groups, eps, w1, b1, w2, b2, k_out, bias_out):
    """Fold conv1 (3x3, pad 1: w1 [C, Cin, 3, 3]), a non-affine GroupNorm whose per-channel
    (sum, sum of squares) over `count` pixels are `stats`, and a 2x2 stride-2 conv
    (w2 [Cout, C, 2, 2]) into one 4x4 stride-2 conv with padding 1 on conv1's input:
    k_out [Cout, Cin, 4, 4], bias_out [Cout]. Exact algebra (all three are affine), in float64."""
    c_mid, cin = w1.shape[0], w1.shape[1]
    cout = w2.shape[0]
    per_group = c_mid // groups
    scale, shift = np.empty(c_mid), np.empty(c_mid)
    for g in range(groups):
        total, total_sq = 0.0, 0.0
        for c in range(g * per_group, (g + 1) * per_group):
            total += stats[c, 0]
            total_sq += stats[c, 1]
        mean, rstd = group_mean_rstd(total, total_sq, count * per_group, eps)
        for c in range(g * per_group, (g + 1) * per_group):
            scale[c], shift[c] = rstd, -mean * rstd
    for co in range(cout):
        bias = np.float64(b2[co])
        for c in range(c_mid):
            tap_sum = 0.0
            for a in range(2):
                for bb in range(2):
                    tap_sum += np.float64(w2[co, c, a, bb])
            bias += tap_sum * (scale[c] * np.float64(b1[c]) + shift[c])
        bias_out[co] = bias
        for ci in range(cin):
            for u in range(4):
                for v in range(4):
                    total = 0.0
                    for c in range(c_mid):
                        for a in range(max(0, u - 2), min(2, u + 1)):
                            for bb in range(max(0, v - 2), min(2, v + 1)):
                                total += np.float64(w2[co, c, a, bb]) * scale[c] * np.float64(w1[c, ci, u - a, v - bb])
                    k_out[co, ci, u, v] = total


@kernel_ordered
def conv4x4s2_nb(padded, pad, w, b, act, out, out_pad, out_padded):
    """out = act(conv4x4_stride2(x, padding 1) + b) for x held in pad_nb's buffer (pad >= 1),
    w [Cout, Cin, 4, 4], Cout a multiple of 4; with a non-empty `out_padded` (border
    `out_pad`) the rows are also written there. Like down2x2_nb, every input row a tap reads
    is split once into even and odd columns, and four output channels accumulate a row's
    four taps per pass (summed in the written order)."""
    cin = padded.shape[0]
    cout, ho, wo = out.shape
    wp = 2 * wo + 2 * pad
    even = np.empty((cin * 4, wo + 1), dtype=np.float32)
    odd = np.empty((cin * 4, wo + 1), dtype=np.float32)
    acc = np.empty((4, wo), dtype=np.float32)
    owp = wo + 2 * out_pad
    for i in range(ho):
        for ci in range(cin):
            plane = padded[ci]
            for u in range(4):
                start = (2 * i + u + pad - 1) * wp + pad - 1  # input row 2i + u - 1, column -1
                # a sliced row: indexing the plane at start + 2x directly was 9x slower
                line = plane[start:start + 2 * wo + 2]
                e, o = even[ci * 4 + u], odd[ci * 4 + u]
                for x in range(wo + 1):
                    e[x] = line[2 * x]
                    o[x] = line[2 * x + 1]
        for co in range(0, cout, 4):
            acc[:] = 0.0
            a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
            for r in range(cin * 4):
                ci, u = r // 4, r % 4
                e, o = even[r], odd[r]
                p0, q0, r0, s0 = w[co, ci, u, 0], w[co, ci, u, 1], w[co, ci, u, 2], w[co, ci, u, 3]
                p1, q1, r1, s1 = w[co + 1, ci, u, 0], w[co + 1, ci, u, 1], w[co + 1, ci, u, 2], w[co + 1, ci, u, 3]
                p2, q2, r2, s2 = w[co + 2, ci, u, 0], w[co + 2, ci, u, 1], w[co + 2, ci, u, 2], w[co + 2, ci, u, 3]
                p3, q3, r3, s3 = w[co + 3, ci, u, 0], w[co + 3, ci, u, 1], w[co + 3, ci, u, 2], w[co + 3, ci, u, 3]
                for x in range(wo):
                    t0, t1, t2, t3 = e[x], o[x], e[x + 1], o[x + 1]
                    a0[x] += (p0 * t0 + q0 * t1) + (r0 * t2 + s0 * t3)
                    a1[x] += (p1 * t0 + q1 * t1) + (r1 * t2 + s1 * t3)
                    a2[x] += (p2 * t0 + q2 * t1) + (r2 * t2 + s2 * t3)
                    a3[x] += (p3 * t0 + q3 * t1) + (r3 * t2 + s3 * t3)
            for j in range(4):
                row = out[co + j, i]
                _bias_act(row, acc[j], b[co + j], act)
                if out_padded.shape[1] > 0:
                    dst = out_padded[co + j, (i + out_pad) * owp + out_pad:(i + out_pad) * owp + out_pad + wo]
                    for x in range(wo):
                        dst[x] = row[x]
