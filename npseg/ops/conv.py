"""Convolutions: NumPy reference.

All tensors are one image, channels first: x [C, H, W], weight [Cout, Cin/groups, k, k].
"""
from __future__ import annotations

import numpy as np


def conv2d_ref(x, w, b, *, padding=0, dilation=1, stride=1, groups=1):
    """Grouped, dilated, zero-padded 2-D convolution with bias: [Cin,H,W] -> [Cout,Ho,Wo]."""
    cin, h, wd = x.shape
    cout, cin_g, k, _ = w.shape
    if cin != cin_g * groups or cout % groups:
        raise ValueError(f"conv2d: input has {cin} channels, weight {w.shape} with groups={groups} expects {cin_g * groups}")
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (wd + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding)))
    xg = xp.reshape(groups, cin_g, *xp.shape[1:])  # [G, Cin/G, Hp, Wp]
    wg = w.reshape(groups, cout // groups, cin_g, k, k)  # [G, Cout/G, Cin/G, k, k]
    out = np.zeros((groups, cout // groups, ho * wo), dtype=x.dtype)
    for i in range(k):  # sum the k*k taps, each a batched (per group) matrix product
        for j in range(k):
            y0, x0 = i * dilation, j * dilation
            tap = xg[:, :, y0 : y0 + stride * (ho - 1) + 1 : stride, x0 : x0 + stride * (wo - 1) + 1 : stride]
            out += wg[:, :, :, i, j] @ tap.reshape(groups, cin_g, ho * wo)
    return out.reshape(cout, ho, wo) + b[:, None, None]


def conv1x1_ref(x, w, b):
    """Pointwise conv as one matrix product: [Cin,H,W] -> [Cout,H,W]."""
    cin, h, wd = x.shape
    return (w.reshape(w.shape[0], cin) @ x.reshape(cin, h * wd)).reshape(-1, h, wd) + b[:, None, None]


# ---- Numba kernels -------------------------------------------------------------------------
# Callers validate shapes first (npseg.ops.steps); the loops trust them and never bounds-check.
from ._jit import inline, kernel, kernel_ordered  # noqa: E402
from .activation import activate  # noqa: E402
from .norm import group_mean_rstd  # noqa: E402


@kernel
def pad_nb(src, pad, padded):
    """Copy [C,H,W] into the interior of a zero-bordered flat buffer [C, (H+2p)*(W+2p) + 2p]
    (its border is zeroed once by the caller and never written)."""
    c_n, h, width = src.shape
    wp = width + 2 * pad
    for c in range(c_n):
        for y in range(h):
            start = (y + pad) * wp + pad
            dst, line = padded[c, start:start + width], src[c, y]
            for x in range(width):
                dst[x] = line[x]


@inline
def _taps3x3(acc, r0, r1, r2, w, co, k, n, d):
    """acc[p] += all 9 taps of input channel k; d is a literal at every call site, so the
    offsets are compile-time constants and the loop vectorises without wraparound checks."""
    w00, w01, w02 = w[co, k, 0, 0], w[co, k, 0, 1], w[co, k, 0, 2]
    w10, w11, w12 = w[co, k, 1, 0], w[co, k, 1, 1], w[co, k, 1, 2]
    w20, w21, w22 = w[co, k, 2, 0], w[co, k, 2, 1], w[co, k, 2, 2]
    for p in range(n):
        acc[p] += (w00 * r0[p] + w01 * r0[p + d] + w02 * r0[p + 2 * d]
                   + w10 * r1[p] + w11 * r1[p + d] + w12 * r1[p + 2 * d]
                   + w20 * r2[p] + w21 * r2[p + d] + w22 * r2[p + 2 * d])


@inline
def _taps3x3_quad(acc, r0, r1, r2, w, co, k, n, d):
    """_taps3x3 for output channels co .. co + 3 at once (acc [4, n]): each input load feeds four FMAs."""
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    a00, a01, a02 = w[co, k, 0, 0], w[co, k, 0, 1], w[co, k, 0, 2]
    a10, a11, a12 = w[co, k, 1, 0], w[co, k, 1, 1], w[co, k, 1, 2]
    a20, a21, a22 = w[co, k, 2, 0], w[co, k, 2, 1], w[co, k, 2, 2]
    b00, b01, b02 = w[co + 1, k, 0, 0], w[co + 1, k, 0, 1], w[co + 1, k, 0, 2]
    b10, b11, b12 = w[co + 1, k, 1, 0], w[co + 1, k, 1, 1], w[co + 1, k, 1, 2]
    b20, b21, b22 = w[co + 1, k, 2, 0], w[co + 1, k, 2, 1], w[co + 1, k, 2, 2]
    c00, c01, c02 = w[co + 2, k, 0, 0], w[co + 2, k, 0, 1], w[co + 2, k, 0, 2]
    c10, c11, c12 = w[co + 2, k, 1, 0], w[co + 2, k, 1, 1], w[co + 2, k, 1, 2]
    c20, c21, c22 = w[co + 2, k, 2, 0], w[co + 2, k, 2, 1], w[co + 2, k, 2, 2]
    d00, d01, d02 = w[co + 3, k, 0, 0], w[co + 3, k, 0, 1], w[co + 3, k, 0, 2]
    d10, d11, d12 = w[co + 3, k, 1, 0], w[co + 3, k, 1, 1], w[co + 3, k, 1, 2]
    d20, d21, d22 = w[co + 3, k, 2, 0], w[co + 3, k, 2, 1], w[co + 3, k, 2, 2]
    for p in range(n):
        u0, u1, u2 = r0[p], r0[p + d], r0[p + 2 * d]
        m0, m1, m2 = r1[p], r1[p + d], r1[p + 2 * d]
        l0, l1, l2 = r2[p], r2[p + d], r2[p + 2 * d]
        a0[p] += (a00 * u0 + a01 * u1 + a02 * u2 + a10 * m0 + a11 * m1 + a12 * m2
                  + a20 * l0 + a21 * l1 + a22 * l2)
        a1[p] += (b00 * u0 + b01 * u1 + b02 * u2 + b10 * m0 + b11 * m1 + b12 * m2
                  + b20 * l0 + b21 * l1 + b22 * l2)
        a2[p] += (c00 * u0 + c01 * u1 + c02 * u2 + c10 * m0 + c11 * m1 + c12 * m2
                  + c20 * l0 + c21 * l1 + c22 * l2)
        a3[p] += (d00 * u0 + d01 * u1 + d02 * u2 + d10 * m0 + d11 * m1 + d12 * m2
                  + d20 * l0 + d21 * l1 + d22 * l2)


@inline
def _bias_act(dst, acc, bias, act):
    """dst[x] = act(acc[x] + bias): the epilogue of the accumulating conv kernels."""
    if act == 0:
        for x in range(dst.size):
            dst[x] = acc[x] + bias
    else:
        for x in range(dst.size):
            dst[x] = activate(acc[x] + bias, act)


@inline
def _taps3x3_triple(acc, plane0, plane1, plane2, s, wp, w, co, n, d):
    """acc[p] = all 27 taps of three input channels for output channel co, in one pass (the
    groups of EDB's branch convs): one store per 27 FMAs instead of three read-modify-write
    passes; each channel's 9 taps sum first (the caller compiles without reassociation)."""
    a0, a1, a2 = plane0[s:], plane0[s + d * wp:], plane0[s + 2 * d * wp:]
    b0, b1, b2 = plane1[s:], plane1[s + d * wp:], plane1[s + 2 * d * wp:]
    c0, c1, c2 = plane2[s:], plane2[s + d * wp:], plane2[s + 2 * d * wp:]
    wa, wb, wc = w[co, 0], w[co, 1], w[co, 2]
    a00, a01, a02, a10, a11, a12, a20, a21, a22 = (wa[0, 0], wa[0, 1], wa[0, 2], wa[1, 0], wa[1, 1], wa[1, 2],
                                                   wa[2, 0], wa[2, 1], wa[2, 2])
    b00, b01, b02, b10, b11, b12, b20, b21, b22 = (wb[0, 0], wb[0, 1], wb[0, 2], wb[1, 0], wb[1, 1], wb[1, 2],
                                                   wb[2, 0], wb[2, 1], wb[2, 2])
    c00, c01, c02, c10, c11, c12, c20, c21, c22 = (wc[0, 0], wc[0, 1], wc[0, 2], wc[1, 0], wc[1, 1], wc[1, 2],
                                                   wc[2, 0], wc[2, 1], wc[2, 2])
    for p in range(n):
        acc[p] = ((a00 * a0[p] + a01 * a0[p + d] + a02 * a0[p + 2 * d] + a10 * a1[p] + a11 * a1[p + d]
                   + a12 * a1[p + 2 * d] + a20 * a2[p] + a21 * a2[p + d] + a22 * a2[p + 2 * d])
                  + (b00 * b0[p] + b01 * b0[p + d] + b02 * b0[p + 2 * d] + b10 * b1[p] + b11 * b1[p + d]
                     + b12 * b1[p + 2 * d] + b20 * b2[p] + b21 * b2[p + d] + b22 * b2[p + 2 * d])
                  + (c00 * c0[p] + c01 * c0[p + d] + c02 * c0[p + 2 * d] + c10 * c1[p] + c11 * c1[p + d]
                     + c12 * c1[p + 2 * d] + c20 * c2[p] + c21 * c2[p + d] + c22 * c2[p + 2 * d]))


@kernel_ordered
def conv3x3_nb(padded, pad, w, b, dilation, act, out, out_pad, out_padded):
    """Grouped, dilated 3x3 conv (zero padding = dilation, stride 1) + bias + act, reading the
    input from pad_nb's buffer (pad >= dilation); with a non-empty `out_padded` (border
    `out_pad`) the output rows are also written there for the next 3x3 conv.

    The padded rows are treated as one flat vector: output (y, x) accumulates at
    (y - y0) * Wp + x of a row tile that fits L1, every tap is a constant shift of
    that index, and the Wp - W padding columns compute values that are dropped.
    Output channels go four at a time when a group has a multiple of four of them. Compiled
    without reassociation, each input channel's 9 taps sum first and then join the accumulator:
    with reassociation the compiler chained all taps through it, and the golden logits sat 2x
    further from the float64 reference (5.0e-5 vs 2.6e-5 at 256x256, upstream 130K).
    """
    cout, h, width = out.shape
    cin, cin_g = padded.shape[0], w.shape[1]
    cout_g = cout // (cin // cin_g)
    block = 4 if cout_g % 4 == 0 else 1
    d = dilation
    wp = width + 2 * pad
    tile = max(1, 2048 // wp)
    acc = np.empty((4, tile * wp), dtype=np.float32)
    for y0 in range(0, h, tile):
        rows = min(tile, h - y0)
        n = rows * wp
        s = (y0 + pad - d) * wp + pad - d  # tap (0, 0) of output (y0, 0)
        for co in range(0, cout, block):
            acc0 = acc[0]
            ci0 = (co // cout_g) * cin_g
            cin_left = cin_g
            if block == 1 and cin_g == 3:
                if d == 1:
                    _taps3x3_triple(acc0, padded[ci0], padded[ci0 + 1], padded[ci0 + 2], s, wp, w, co, n, 1)
                elif d == 2:
                    _taps3x3_triple(acc0, padded[ci0], padded[ci0 + 1], padded[ci0 + 2], s, wp, w, co, n, 2)
                else:
                    _taps3x3_triple(acc0, padded[ci0], padded[ci0 + 1], padded[ci0 + 2], s, wp, w, co, n, 3)
                cin_left = 0
            else:
                acc[:block, :n] = 0.0
            for k in range(cin_left):
                plane = padded[ci0 + k]
                r0, r1, r2 = plane[s:], plane[s + d * wp:], plane[s + 2 * d * wp:]
                if block == 4:
                    if d == 1:
                        _taps3x3_quad(acc, r0, r1, r2, w, co, k, n, 1)
                    elif d == 2:
                        _taps3x3_quad(acc, r0, r1, r2, w, co, k, n, 2)
                    else:
                        _taps3x3_quad(acc, r0, r1, r2, w, co, k, n, 3)
                elif d == 1:
                    _taps3x3(acc0, r0, r1, r2, w, co, k, n, 1)
                elif d == 2:
                    _taps3x3(acc0, r0, r1, r2, w, co, k, n, 2)
                else:
                    _taps3x3(acc0, r0, r1, r2, w, co, k, n, 3)
            for j in range(block):
                for r in range(rows):
                    row = out[co + j, y0 + r]
                    _bias_act(row, acc[j, r * wp:r * wp + width], b[co + j], act)
                    if out_padded.shape[1] > 0:
                        start = (y0 + r + out_pad) * (width + 2 * out_pad) + out_pad
                        dst = out_padded[co + j, start:start + width]
                        for x in range(width):
                            dst[x] = row[x]


def winograd_weights(w):
    """3x3 weights [Cout, Cin, 3, 3] -> [Cout, Cin, 3, 4], the row filters of Winograd F(2, 3)
    (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2), computed in float64."""
    g = w.astype(np.float64)
    g0, g1, g2 = g[..., 0], g[..., 1], g[..., 2]
    return np.ascontiguousarray(np.stack([g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2], -1), dtype=np.float32)


@kernel_ordered
def conv3x3_winograd_nb(padded, pad, u, b, act, out, out_pad, out_padded):
    """Dense 3x3 conv (padding 1, dilation 1, even width, Cout a multiple of 4) + bias + act with
    Winograd F(2, 3) along each row: u = winograd_weights(w). Every input row becomes four
    half-width rows (d0 - d2, d1 + d2, d2 - d1, d1 - d3 of each column pair) once, then each
    output pair takes 12 multiply-adds per input channel where direct taps take 18.
    Optional padded copy of the output as in conv3x3_nb. The transformed rows live in a buffer
    the kernel allocates (up to 1 MB, from the allocator's free list after the first frame):
    passing a preallocated one instead measured 2-3 % slower for the whole forward.

    Measured here: 16->48 at 64x64 0.29 vs 0.51 ms direct, 8->16 at 128x128 0.19 vs 0.32, with
    the same error against a float64 reference (the transforms add and subtract only).
    """
    cout, h, width = out.shape
    cin = padded.shape[0]
    half = width // 2
    wp = width + 2 * pad
    rows_in = h + 2
    tin = np.empty((cin, 4, rows_in * half), dtype=np.float32)
    for ci in range(cin):
        plane = padded[ci]
        t0, t1, t2, t3 = tin[ci, 0], tin[ci, 1], tin[ci, 2], tin[ci, 3]
        for r in range(rows_in):
            start = (r + pad - 1) * wp + pad - 1  # input row r - 1, column -1
            line = plane[start:start + width + 2]
            o = r * half
            for m in range(half):
                d0, d1, d2, d3 = line[2 * m], line[2 * m + 1], line[2 * m + 2], line[2 * m + 3]
                t0[o + m] = d0 - d2
                t1[o + m] = d1 + d2
                t2[o + m] = d2 - d1
                t3[o + m] = d1 - d3
    # 4 outputs x 4 row filters x 256 accumulators: 16 KB, in L1 (128 and 512 were slower;
    # so was transforming the input in L2-sized bands instead of whole)
    tile = max(1, 256 // half)
    acc = np.empty((4, 4, tile * half), dtype=np.float32)
    owp = width + 2 * out_pad
    for y0 in range(0, h, tile):
        rows = min(tile, h - y0)
        n = rows * half
        for co in range(0, cout, 4):
            acc[:, :, :n] = 0.0
            for ci in range(cin):
                for k in range(4):
                    tk = tin[ci, k]
                    r0, r1, r2 = tk[y0 * half:], tk[(y0 + 1) * half:], tk[(y0 + 2) * half:]
                    a0, a1, a2, a3 = acc[0, k], acc[1, k], acc[2, k], acc[3, k]
                    p0, q0, s0 = u[co, ci, 0, k], u[co, ci, 1, k], u[co, ci, 2, k]
                    p1, q1, s1 = u[co + 1, ci, 0, k], u[co + 1, ci, 1, k], u[co + 1, ci, 2, k]
                    p2, q2, s2 = u[co + 2, ci, 0, k], u[co + 2, ci, 1, k], u[co + 2, ci, 2, k]
                    p3, q3, s3 = u[co + 3, ci, 0, k], u[co + 3, ci, 1, k], u[co + 3, ci, 2, k]
                    for p in range(n):
                        v0, v1, v2 = r0[p], r1[p], r2[p]
                        a0[p] += (p0 * v0 + q0 * v1) + s0 * v2
                        a1[p] += (p1 * v0 + q1 * v1) + s1 * v2
                        a2[p] += (p2 * v0 + q2 * v1) + s2 * v2
                        a3[p] += (p3 * v0 + q3 * v1) + s3 * v2
            for j in range(4):
                m0, m1, m2, m3 = acc[j, 0], acc[j, 1], acc[j, 2], acc[j, 3]
                bias = b[co + j]
                for r in range(rows):
                    row = out[co + j, y0 + r]
                    o = r * half
                    for m in range(half):
                        row[2 * m] = (m0[o + m] + m1[o + m] + m2[o + m]) + bias
                        row[2 * m + 1] = (m1[o + m] - m2[o + m] - m3[o + m]) + bias
                    if act != 0:
                        for x in range(width):
                            row[x] = activate(row[x], act)
                    if out_padded.shape[1] > 0:
                        start = (y0 + r + out_pad) * owp + out_pad
                        dst = out_padded[co + j, start:start + width]
                        for x in range(width):
                            dst[x] = row[x]


@kernel
def im2col3x3_nb(padded, pad, dilation, h, width, cols):
    """cols[ci*9 + ky*3 + kx, y*W + x] = x[ci, y + (ky-1)d, x + (kx-1)d] (zero outside) for an
    H x W map held in pad_nb's buffer, so every row is a run of contiguous copies. A dense
    3x3 conv becomes one GEMM with the weight viewed as [Cout, Cin*9]."""
    cin = padded.shape[0]
    wp = width + 2 * pad
    d = dilation
    for ci in range(cin):
        plane = padded[ci]
        for ky in range(3):
            for kx in range(3):
                row = cols[ci * 9 + ky * 3 + kx]
                for y in range(h):
                    s = (y + pad + (ky - 1) * d) * wp + pad + (kx - 1) * d
                    src, dst = plane[s:s + width], row[y * width:(y + 1) * width]
                    for x in range(width):
                        dst[x] = src[x]


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
    even = np.empty((cin * 2, band * wo), dtype=np.float32)
    odd = np.empty((cin * 2, band * wo), dtype=np.float32)
    acc = np.empty((4, band * wo), dtype=np.float32)
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
    acc = np.empty((4, tile * wp), dtype=np.float32)
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


@kernel
def conv1x1_nb(src, w, b, act, out):
    """Pointwise conv for narrow inputs (np.dot wins from ~48 input channels): w [Cout, Cin]."""
    cin = src.shape[0]
    cout = w.shape[0]
    n = src.size // cin
    s2, o2 = src.reshape(cin, n), out.reshape(cout, n)
    for co in range(cout):
        o = o2[co]
        for i in range(n):
            o[i] = b[co]
        for ci in range(cin):
            wv = w[co, ci]
            s = s2[ci]
            for i in range(n):
                o[i] += wv * s[i]
        if act != 0:
            for i in range(n):
                o[i] = activate(o[i], act)
