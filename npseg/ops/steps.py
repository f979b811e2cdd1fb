"""Validated kernel calls: each function checks shapes, dtypes and layout in Python,
then returns a zero-argument callable that runs the Numba kernel(s) on the given
buffers. The kernels index without bounds checks, so nothing reaches them unchecked.
An engine plan is a list of these steps, built once per input size.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from ._jit import ACT_GELU, ACT_NONE, ACT_RELU, ACT_RELU6
from .activation import add_nb, affine_act_nb
from .conv import pad_nb
from .conv1x1 import conv1x1_nb
from .conv3x3 import CONV3X3_DIRECT, conv3x3_winograd_nb, im2col3x3_nb, winograd_weights
from .conv_stride2 import conv3x3_stats_nb, conv4x4s2_nb, down2x2_nb, gn_down_fold_nb
from .gsa import gsa_norm_nb
from .heads import agf_fuse_nb, gate_head_nb, merge_nb, ssa_nb
from .norm import group_norm_coeffs_nb
from .resize import max_pool2x2_nb, resize_bilinear_ac_nb

F32 = np.float32
GEMM_MIN_CIN = 48  # 1x1 convs with at least this many inputs go to np.dot (OpenBLAS)
# dense 3x3 convs with at least this many outputs: im2col + np.dot; narrower ones run Winograd
# (one core, medians: 16->48 at 64x64 0.29-0.39 ms Winograd, 0.44-0.51 direct, 0.61 im2col + GEMM;
# 64->96 at 16x16 0.29 with the GEMM vs 0.34 Winograd; 8->16 at 128x128 0.19-0.26 vs 0.30 vs 0.78)
GEMM_MIN_COUT = 64


class ShapeError(ValueError):
    pass


def _need(cond, msg):
    if not cond:
        raise ShapeError(msg)


def _arrays(*arrays):
    for a in arrays:
        _need(isinstance(a, np.ndarray) and a.dtype == F32 and a.flags.c_contiguous and a.flags.writeable,
              f"kernel arrays must be writable C-contiguous float32, got "
              f"{getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}")


def _act(act):
    _need(act in (ACT_NONE, ACT_RELU, ACT_GELU, ACT_RELU6), f"unknown activation code {act}")
    return int(act)


def affine_act(x, scale, shift, act=ACT_NONE):
    """In place x[c] = act(x[c] * scale[c] + shift[c]) for x [C, ...]."""
    _arrays(x, scale, shift)
    _need(x.ndim >= 2, f"affine_act: {x.shape}")
    _need(scale.shape == shift.shape == (x.shape[0],), "affine_act: scale/shift must be [C]")
    return [partial(affine_act_nb, x, scale, shift, _act(act))]


def add(acc, other, bias=None, padded=None, pad_width=None):
    """In place acc[c] += other[c] + bias[c] for [C, H, W] arrays (no bias: zeros); with `padded`, a
    pad buffer of acc with border `pad_width`, the sums are also written there."""
    bias = np.zeros(acc.shape[0], F32) if bias is None else bias
    _arrays(acc, other, bias)
    _need(acc.shape == other.shape and acc.ndim == 3 and bias.shape == (acc.shape[0],),
          f"add: {acc.shape} += {other.shape} + bias {bias.shape}")
    _need(not np.shares_memory(acc, other), "add: operands overlap")
    pad_width, padded = _padded_out(acc, padded, pad_width)
    return [partial(add_nb, acc, other, bias, pad_width, padded)]


def padded_buffer(src, pad):
    """The zero-bordered flat buffer conv3x3 reads (see conv.pad_nb)."""
    c, h, width = src.shape
    return np.zeros((c, (h + 2 * pad) * (width + 2 * pad) + 2 * pad), F32)


def pad(src, pad_width, padded):
    _arrays(src, padded)
    c, h, width = src.shape
    _need(src.ndim == 3 and padded.shape == padded_buffer(src, pad_width).shape, "pad: buffer does not fit")
    return [partial(pad_nb, src, int(pad_width), padded)]


def conv3x3(src, w, b, out, dilation=1, act=ACT_NONE, padded=None, pad_width=None, method=None,
            out_padded=None, out_pad_width=None):
    """Grouped/dilated 3x3 conv (padding = dilation) + bias + act; dense ones with >= GEMM_MIN_COUT
    outputs as im2col + GEMM, narrower dense ones (dilation 1, even width, outputs a multiple
    of 4) with row-wise Winograd F(2, 3), the others direct.

    With `padded` (a buffer filled by a pad step with `pad_width` >= dilation) the
    conv reads it and adds no pad step: convs of one input share one padded copy.
    With `out_padded`, the output also fills that pad_nb buffer (border `out_pad_width`).
    `method` ("direct" / "gemm" / "winograd", the last two dense only) overrides the choice.
    """
    _arrays(src, w, b, out)
    _need(src.ndim == 3 and w.ndim == 4 and w.shape[2:] == (3, 3), f"conv3x3: x {src.shape}, w {w.shape}")
    cin, h, width = src.shape
    cout, cin_g = w.shape[:2]
    _need(cin_g >= 1 and cin % cin_g == 0 and cout % (cin // cin_g) == 0,
          f"conv3x3: {cin} input channels do not fit weight {w.shape}")
    _need(b.shape == (cout,) and out.shape == (cout, h, width), f"conv3x3: bias {b.shape}, out {out.shape}")
    _need(dilation in (1, 2, 3), f"conv3x3: dilation must be 1, 2 or 3, got {dilation}")
    prologue = []
    if padded is None:
        pad_width = dilation
        padded = padded_buffer(src, pad_width)
        prologue = pad(src, pad_width, padded)
    _arrays(padded)
    _need(isinstance(pad_width, int) and pad_width >= dilation
          and padded.shape == padded_buffer(src, pad_width).shape, "conv3x3: padded buffer does not fit")
    winograd_fits = cin_g == cin and dilation == 1 and width % 2 == 0 and cout % 4 == 0
    _need(method in (None, "direct", "gemm", "winograd") and (method != "gemm" or cin_g == cin)
          and (method != "winograd" or winograd_fits), f"conv3x3: method {method} does not fit")
    if method is None:
        method = ("gemm" if cin_g == cin and cout >= GEMM_MIN_COUT else "winograd" if winograd_fits else "direct")
    if method == "gemm":
        cols = np.empty((cin * 9, h * width), dtype=F32)
        w2 = np.ascontiguousarray(w.reshape(cout, cin * 9))
        steps = prologue + [partial(im2col3x3_nb, padded, int(pad_width), int(dilation), h, width, cols),
                            partial(np.dot, w2, cols, out.reshape(cout, -1))] + affine_act(out, np.ones(cout, F32), b, act)
        return steps + ([] if out_padded is None else pad(out, out_pad_width, out_padded))
    out_pad_width, out_padded = _padded_out(out, out_padded, out_pad_width)
    if method == "winograd":
        return prologue + [partial(conv3x3_winograd_nb, padded, int(pad_width), winograd_weights(w), b, _act(act),
                                   out, out_pad_width, out_padded)]
    return prologue + [partial(CONV3X3_DIRECT[int(dilation)], padded, int(pad_width), w, b, _act(act), out,
                               out_pad_width, out_padded)]


def residual_conv1x1(x, src, w, b, scratch, out_padded=None, out_pad_width=None):
    """In place x += conv1x1(src) + b; a wide one is a GEMM into `scratch` (x's shape) and one
    pass that adds it and the bias (no separate bias pass). With `out_padded`, the new x also
    fills that pad buffer (border `out_pad_width`)."""
    _arrays(x, scratch)
    _need(scratch.shape == x.shape, f"residual_conv1x1: scratch {scratch.shape} for x {x.shape}")
    w2 = _pointwise_weight(src, w, b, scratch)
    if src.shape[0] < GEMM_MIN_CIN:
        return conv1x1(src, w, b, scratch) + add(x, scratch, padded=out_padded, pad_width=out_pad_width)
    return [_dot1x1(src, w2, scratch)] + add(x, scratch, b, out_padded, out_pad_width)


def _pointwise_weight(src, w, b, out):
    """Checks a pointwise conv src -> out and returns its weight as a contiguous [Cout, Cin] matrix."""
    _arrays(src, b, out)
    _need(src.ndim == 3 and out.ndim == 3 and src.shape[1:] == out.shape[1:], f"conv1x1: {src.shape} -> {out.shape}")
    cin, cout = src.shape[0], out.shape[0]
    w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1), dtype=F32)
    _need(w2.shape == (cout, cin) and b.shape == (cout,), f"conv1x1: weight {w.shape}, bias {b.shape}")
    return w2


def _dot1x1(src, w2, out):
    return partial(np.dot, w2, src.reshape(src.shape[0], -1), out.reshape(out.shape[0], -1))


def conv1x1(src, w, b, out, act=ACT_NONE):
    """Pointwise conv (w [Cout, Cin, 1, 1] or [Cout, Cin]) + bias + act: np.dot when wide, loops when narrow."""
    w2 = _pointwise_weight(src, w, b, out)
    if src.shape[0] >= GEMM_MIN_CIN:
        return [_dot1x1(src, w2, out)] + affine_act(out, np.ones(out.shape[0], F32), b, act)
    return [partial(conv1x1_nb, src, w2, b, _act(act), out)]


def group_norm_coeffs(src, groups, gamma, beta, scale, shift, eps=1e-5):
    """GroupNorm statistics of src as per-channel scale/shift (applied by the next step)."""
    _arrays(src, gamma, beta, scale, shift)
    c = src.shape[0]
    _need(src.ndim == 3 and c % groups == 0, f"group_norm: {c} channels, {groups} groups")
    _need(gamma.shape == beta.shape == scale.shape == shift.shape == (c,), "group_norm: vectors must be [C]")
    return [partial(group_norm_coeffs_nb, src, int(groups), float(eps), gamma, beta, scale, shift)]


def _padded_out(out, padded, pad_width):
    """The (pad, padded) pair of a kernel that can also write its output into a pad_nb buffer;
    without one, an empty buffer tells the kernel to skip that copy."""
    if padded is None:
        return 0, np.zeros((out.shape[0], 0), F32)
    _arrays(padded)
    _need(out.ndim == 3 and isinstance(pad_width, int) and pad_width >= 1
          and padded.shape == padded_buffer(out, pad_width).shape, "padded output buffer does not fit")
    _need(not np.shares_memory(out, padded), "padded output buffer overlaps the output")
    return int(pad_width), padded


def down2x2(src, scale, shift, w, b, out, act=ACT_NONE, padded=None, pad_width=None):
    """2x2 stride-2 conv of (src * scale + shift), + bias + act; optionally also into `padded`."""
    _arrays(src, scale, shift, w, b, out)
    cin, h, width = src.shape
    cout = w.shape[0]
    _need(h % 2 == 0 and width % 2 == 0 and w.shape == (cout, cin, 2, 2), f"down2x2: x {src.shape}, w {w.shape}")
    _need(out.shape == (cout, h // 2, width // 2), f"down2x2: out {out.shape}")
    _need(scale.shape == shift.shape == (cin,) and b.shape == (cout,), "down2x2: vectors")
    pad_width, padded = _padded_out(out, padded, pad_width)
    return [partial(down2x2_nb, src, scale, shift, w, b, _act(act), out, pad_width, padded)]


def conv_gn_down(src, padded, pad_width, w1, b1, groups, w2, b2, out, act=ACT_NONE, out_padded=None,
                 out_pad_width=None, eps=1e-5):
    """down2x2(GroupNorm(conv3x3(src)), w2) without storing the conv's output: a statistics pass
    (the conv's values summed, not stored), then per frame the conv, the GroupNorm and the 2x2
    stride-2 conv folded into one 4x4 stride-2 conv on src, which runs once. For the first
    layer, where the conv's output is the largest tensor of the forward and has no other use.
    `padded`: src in pad_nb's buffer (border `pad_width` >= 1), filled before these steps."""
    _arrays(src, padded, w1, b1, w2, b2, out)
    cin, h, width = src.shape
    c_mid, cout = w1.shape[0], w2.shape[0]
    _need(w1.shape == (c_mid, cin, 3, 3) and b1.shape == (c_mid,), f"conv_gn_down: x {src.shape}, w1 {w1.shape}")
    _need(w2.shape == (cout, c_mid, 2, 2) and b2.shape == (cout,), f"conv_gn_down: w2 {w2.shape}, b2 {b2.shape}")
    _need(c_mid % 4 == 0 and cout % 4 == 0 and c_mid % groups == 0,
          f"conv_gn_down: widths {c_mid}, {cout} must be multiples of 4 and of {groups} groups")
    _need(h % 2 == 0 and width % 2 == 0 and out.shape == (cout, h // 2, width // 2), f"conv_gn_down: out {out.shape}")
    _need(isinstance(pad_width, int) and pad_width >= 1 and padded.shape == padded_buffer(src, pad_width).shape,
          "conv_gn_down: padded buffer does not fit")
    out_pad_width, out_padded = _padded_out(out, out_padded, out_pad_width)
    stats = np.zeros((c_mid, 2), np.float64)
    kernel4, bias4 = np.zeros((cout, cin, 4, 4), F32), np.zeros(cout, F32)
    return [partial(conv3x3_stats_nb, padded, int(pad_width), h, width, w1, b1, stats),
            partial(gn_down_fold_nb, stats, h * width, int(groups), float(eps), w1, b1, w2, b2, kernel4, bias4),
            partial(conv4x4s2_nb, padded, int(pad_width), kernel4, bias4, _act(act), out, out_pad_width, out_padded)]


def resize_bilinear(src, scale, shift, out, act=ACT_NONE):
    """out[c] = act(resize_align_corners(src[c]) * scale[c] + shift[c])."""
    _arrays(src, scale, shift, out)
    _need(src.ndim == out.ndim == 3 and src.shape[0] == out.shape[0] and min(src.shape[1:]) >= 1
          and min(out.shape[1:]) >= 1, f"resize: {src.shape} -> {out.shape}")
    _need(scale.shape == shift.shape == (src.shape[0],), "resize: scale/shift must be [C]")
    return [partial(resize_bilinear_ac_nb, src, scale, shift, _act(act), out)]


def max_pool2x2(src, scale, shift, out, act=ACT_NONE):
    """out[c] = act(maxpool2x2(src[c] * scale[c] + shift[c]))."""
    _arrays(src, scale, shift, out)
    c, h, width = src.shape
    _need(h % 2 == 0 and width % 2 == 0 and out.shape == (c, h // 2, width // 2), f"maxpool: {src.shape} -> {out.shape}")
    _need(scale.shape == shift.shape == (c,), "maxpool: scale/shift must be [C]")
    return [partial(max_pool2x2_nb, src, scale, shift, _act(act), out)]


def gsa_norm(src, gate_scale, gate_shift, source, gamma2, beta2, out, eps=1e-6):
    """LN1 (affine folded into the gates) -> gates -> shuffle -> LN2."""
    _arrays(src, gate_scale, gate_shift, gamma2, beta2, out)
    c = src.shape[0]
    _need(src.ndim == 3 and src.shape == gate_scale.shape == gate_shift.shape == out.shape, "gsa_norm: shapes")
    _need(gamma2.shape == beta2.shape == (c,), "gsa_norm: gamma2/beta2 must be [C]")
    _need(source.dtype == np.int64 and source.shape == (c,) and np.array_equal(np.sort(source), np.arange(c)),
          "gsa_norm: source must be a permutation of the channels")
    return [partial(gsa_norm_nb, src, gate_scale, gate_shift, source, gamma2, beta2, F32(eps), out)]


def gate_head(y, wb, bb, wr, br, region, bound, boundary=True):
    """In place y <- y*(1 + b + r); region/bound [H, W] receive r and b."""
    _arrays(y, wr, region, bound)
    c, h, width = y.shape
    wr = np.ascontiguousarray(wr.reshape(-1), dtype=F32)
    wb = np.ascontiguousarray(wb.reshape(-1), dtype=F32) if boundary else np.zeros(c, F32)
    _need(wr.shape == wb.shape == (c,) and region.shape == bound.shape == (h, width), "gate_head: shapes")
    return [partial(gate_head_nb, y, wb, F32(bb), wr, F32(br), bool(boundary), region, bound)]


def merge(adapted, skip, region, bound, rw, bw, out):
    """out = adapted + skip * (1 + rw r + bw b)."""
    _arrays(adapted, skip, region, bound, out)
    _need(adapted.shape == skip.shape == out.shape and skip.ndim == 3 and region.shape == bound.shape == skip.shape[1:],
          "merge: shapes")
    return [partial(merge_nb, adapted, skip, region, bound, F32(rw), F32(bw), out)]


def agf_fuse(logits2, f3, t4, out):
    _arrays(logits2, f3, t4, out)
    _need(f3.shape == t4.shape == out.shape and f3.ndim == 3 and logits2.shape == (2, *f3.shape[1:]),
          "agf_fuse: shapes")
    return [partial(agf_fuse_nb, logits2, f3, t4, out)]


def ssa(b, alpha, out):
    _arrays(b, out)
    _need(b.shape == out.shape and b.ndim == 3, "ssa: shapes")
    return [partial(ssa_nb, b, F32(alpha), out)]
