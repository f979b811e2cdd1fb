"""UltraSeg (108K, 130K and the wider 500K / 1M / 4M): the whole family in one file.

Read top to bottom: the typed config and its variants, the tensor spec (the
published checkpoint's names), the exact load-time folds, the readable NumPy
reference forward, and the builder of the fast Numba plan. The graph is shared
ARCHITECTURE.md's; the reference is the ground truth the plan must match.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import preprocessing
from ..ops import steps as ops
from ..ops._jit import ACT_GELU, ACT_NONE, ACT_RELU
from ..ops.activation import gelu_ref, relu_ref, sigmoid_ref, softmax_channels_ref
from ..ops.conv import conv2d_ref
from ..ops.conv1x1 import conv1x1_ref
from ..ops.gsa import shuffle_source
from ..ops.norm import (batchnorm_scale_shift, fold_affine_into_unpadded_conv, fold_scale_shift_after_conv,
                        group_norm_ref, layer_norm_cf_ref)
from ..ops.resize import max_pool2x2_ref, resize_bilinear_ac_ref
from ..plan import Plan
from . import Family
from .config import ModelConfig

GN_GROUPS = 4
GN_EPS, LN_EPS, BN_EPS = 1e-5, 1e-6, 1e-5
F32 = np.float32


# ---- config and variants ---------------------------------------------------------------------
@dataclass(frozen=True)
class UltraSegConfig(ModelConfig):
    """Widths and flags of one UltraSeg variant (see shared ARCHITECTURE.md)."""

    widths: tuple[int, ...]  # c0..c4
    fusion: bool  # AGF + SSA between encoder and decoder (130K and wider)
    learned_res_scale: bool  # EDB residual scale learned (130K) or constant 0.1 (108K)
    out_ch: int = 2
    gsa_grid: int = 8  # side of the learned share_space tensors in GSA

    def __post_init__(self):
        if len(self.widths) != 5:
            raise ValueError(f"widths must have 5 entries (c0..c4), got {len(self.widths)}")
        c2, c3, c4 = self.widths[2:]
        if c2 % 3:
            raise ValueError(f"c2={c2} must be divisible by 3 (EDB splits it in three)")
        for c in (c2, c3, c4):
            if c % 4:
                raise ValueError(f"GSA input width {c} must be divisible by 4")


def _variant(name, widths, fusion=True, learned_res_scale=True):
    return UltraSegConfig(name, widths, fusion=fusion, learned_res_scale=learned_res_scale)


VARIANTS = {cfg.name: cfg for cfg in (
    _variant("ultraseg-108k", (8, 16, 48, 64, 96), fusion=False, learned_res_scale=False),
    _variant("ultraseg-130k", (8, 16, 48, 64, 96)),
    _variant("ultraseg-500k", (16, 32, 96, 128, 192)),
    _variant("ultraseg-1m", (24, 48, 144, 192, 288)),
    _variant("ultraseg-4m", (48, 96, 288, 384, 576)),
)}


def runnable_problems(cfg: UltraSegConfig) -> list[str]:
    problems = []
    if cfg.out_ch != 2:
        problems.append(f"out_ch is {cfg.out_ch}, npseg's UltraSeg segments 2 classes (background, polyp)")
    uneven = [c for c in cfg.widths[:4] if c % GN_GROUPS]
    if uneven:
        problems.append(f"widths {list(cfg.widths)}: c0..c3 must be multiples of {GN_GROUPS} "
                        f"(GroupNorm with {GN_GROUPS} groups), not {uneven}")
    return problems


# ---- tensor spec: every tensor of a weights file, with its shape -----------------------------
# The names are the published checkpoint's (best-ultraseg-130K.pth); BatchNorm's
# num_batches_tracked counters are training state and not stored.
def _conv(spec, name, cout, cin, k, groups=1):
    spec[f"{name}.weight"] = (cout, cin // groups, k, k)
    spec[f"{name}.bias"] = (cout,)


def _affine(spec, name, c):
    spec[f"{name}.weight"] = (c,)
    spec[f"{name}.bias"] = (c,)


def _batchnorm(spec, name, c):
    _affine(spec, name, c)
    spec[f"{name}.running_mean"] = (c,)
    spec[f"{name}.running_var"] = (c,)


def _edb_spec(spec, name, c, learned_scale):
    if learned_scale:
        spec[f"{name}.res_weight"] = ()
    for i in range(3):
        _conv(spec, f"{name}.dilated_convs.{i}", c // 3, c, 3, groups=c // 3)
    _conv(spec, f"{name}.fusion", c, c, 1)


def _gsa_spec(spec, name, din, dout, grid):
    q = din // 4
    for i in range(1, 5):
        spec[f"{name}.share_space{i}"] = (1, q, grid, grid)
    for i in range(1, 5):
        _conv(spec, f"{name}.conv{i}.0", q, q, 3, groups=q)
        _conv(spec, f"{name}.conv{i}.2", q, q, 1)
    _affine(spec, f"{name}.norm1", din)
    _affine(spec, f"{name}.norm2", din)
    _conv(spec, f"{name}.ldw.0", din, din, 3, groups=din)
    _conv(spec, f"{name}.ldw.2", dout, din, 1)


def _merge_spec(spec, name, c, boundary):
    spec[f"{name}.region_weight"] = ()
    if boundary:
        spec[f"{name}.boundary_weight"] = ()
    if c > 16:
        hidden = max(c // 8, 4)
        _conv(spec, f"{name}.feature_adapter.0", hidden, c, 1)
        _conv(spec, f"{name}.feature_adapter.2", c, hidden, 1)


def expected_tensors(cfg: UltraSegConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a weights file for `cfg`."""
    c0, c1, c2, c3, c4 = cfg.widths
    g = cfg.gsa_grid
    s: dict[str, tuple[int, ...]] = {}
    if cfg.fusion:
        s["attention_alpha"] = ()
    _conv(s, "encoder1.0", c0, 3, 3)
    _conv(s, "encoder2.0", c1, c0, 3)
    _conv(s, "encoder3.0", c2, c1, 3)
    _edb_spec(s, "encoder3.1", c2, cfg.learned_res_scale)
    _edb_spec(s, "encoder3.2", c2, cfg.learned_res_scale)
    _gsa_spec(s, "encoder4.0", c2, c3, g)
    if cfg.fusion:
        _conv(s, "multiscale_fusion.transforms.0", c3, c2, 1)
        _conv(s, "multiscale_fusion.spatial_attention.0", c3 // 4, 2 * c3, 3)
        _batchnorm(s, "multiscale_fusion.spatial_attention.1", c3 // 4)
        _conv(s, "multiscale_fusion.spatial_attention.3", 2, c3 // 4, 1)
    _conv(s, "bottleneck", c4, c3, 3)
    for i, c in enumerate((c0, c1, c2), 1):
        _batchnorm(s, f"Down{i}.bn", c)
        _conv(s, f"Down{i}.conv", c, c, 2)
    for i, c in enumerate((c0, c1, c2, c3), 1):
        _merge_spec(s, f"merge{i}", c, boundary=i < 4)
    _gsa_spec(s, "decoder1.0", c4, c3, g)
    _gsa_spec(s, "decoder2.0", c3, c2, g)
    _gsa_spec(s, "decoder3.0", c2, c1, g)
    _conv(s, "decoder4.0", c0, c1, 3)
    _conv(s, "pred1.conv", 1, c3, 1)
    for i, c in ((1, c2), (2, c1), (3, c0)):
        _conv(s, f"gate{i}.conv1", 1, c, 1)
        _conv(s, f"gate{i}.conv2", 1, c, 1)
    for i, c in enumerate((c0, c1, c2, c3), 1):
        _affine(s, f"ebn{i}", c)
    for i, c in enumerate((c3, c2, c1, c0), 1):
        _affine(s, f"dbn{i}", c)
    _conv(s, "final.0", cfg.out_ch, c0, 1)
    return s


# ---- exact load-time folds ---------------------------------------------------------------------
# Down: GroupNorm affine -> BatchNorm -> unpadded 2x2 conv become one conv (the GroupNorm
# statistics stay). AGF: Conv3x3 -> BatchNorm become one conv. Norms in front of
# zero-padded convs are NOT folded: the border would differ.
def _bn(t, name):
    return batchnorm_scale_shift(t[f"{name}.weight"], t[f"{name}.bias"], t[f"{name}.running_mean"],
                                 t[f"{name}.running_var"], BN_EPS)


def fold(cfg: UltraSegConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensors with the exact folds applied; folded-away keys are removed, folded convs renamed."""
    t = {k: np.asarray(v, dtype=F32) for k, v in tensors.items()}
    p = dict(t)
    for i in (1, 2, 3):
        bn_scale, bn_shift = _bn(t, f"Down{i}.bn")
        # GN affine (gamma, beta) then BN (scale, shift): x*gamma*scale + beta*scale + shift
        scale = t[f"ebn{i}.weight"] * bn_scale
        shift = t[f"ebn{i}.bias"] * bn_scale + bn_shift
        p[f"down{i}.weight"], p[f"down{i}.bias"] = fold_affine_into_unpadded_conv(
            t[f"Down{i}.conv.weight"], t[f"Down{i}.conv.bias"], scale, shift)
        for k in [f"ebn{i}.weight", f"ebn{i}.bias"] + [k for k in t if k.startswith(f"Down{i}.")]:
            del p[k]
    if cfg.fusion:
        sa = "multiscale_fusion.spatial_attention"
        scale, shift = _bn(t, f"{sa}.1")
        p["agf.attention.weight"], p["agf.attention.bias"] = fold_scale_shift_after_conv(
            t[f"{sa}.0.weight"], t[f"{sa}.0.bias"], scale, shift)
        for k in [k for k in t if k.startswith((f"{sa}.0.", f"{sa}.1."))]:
            del p[k]
    return p


# ---- the reference forward pass, in plain NumPy --------------------------------------------
# Every line is one step of the graph with the shape it produces (one image, channels first).
def conv(p, name, x, padding=0, dilation=1, stride=1, groups=1):
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    if w.shape[2] == 1 and groups == 1:
        return conv1x1_ref(x, w, b)
    return conv2d_ref(x, w, b, padding=padding, dilation=dilation, stride=stride, groups=groups)


def gn(p, name, x):
    return group_norm_ref(x, GN_GROUPS, p[f"{name}.weight"], p[f"{name}.bias"])


def dw_gelu_pw(p, name, x, gelu=gelu_ref):
    """Depthwise 3x3 -> GELU -> 1x1 (GSA's conv_i and ldw)."""
    x = conv(p, f"{name}.0", x, padding=1, groups=x.shape[0])
    return conv(p, f"{name}.2", gelu(x))


GSA_DOWNSCALE = {"encoder4.0": 8, "decoder1.0": 16, "decoder2.0": 16, "decoder3.0": 8}


def gsa_gates(p, name, h, w, gelu=gelu_ref):
    """GSA's four spatial gates [q, h/s, w/s] for an h x w input: they depend on the input size
    only, so the plan computes them once per size."""
    s = GSA_DOWNSCALE[name]
    return [dw_gelu_pw(p, f"{name}.conv{i}", resize_bilinear_ac_ref(p[f"{name}.share_space{i}"][0], h // s, w // s),
                       gelu) for i in range(1, 5)]


def gsa(p, name, x, gates):
    x = layer_norm_cf_ref(x, p[f"{name}.norm1.weight"], p[f"{name}.norm1.bias"])  # [din, h, w]
    x1, x2, x3, x4 = (chunk * g for chunk, g in zip(np.split(x, 4), gates))  # 4 x [din/4, h, w]
    x = np.concatenate([x2, x4, x1, x3])  # [din, h, w] group shuffle
    x = layer_norm_cf_ref(x, p[f"{name}.norm2.weight"], p[f"{name}.norm2.bias"])  # [din, h, w]
    return dw_gelu_pw(p, f"{name}.ldw", x)  # [dout, h, w]


def edb(p, name, x, res_scale):
    branches = [conv(p, f"{name}.dilated_convs.{i}", x, padding=d, dilation=d, groups=x.shape[0] // 3)
                for i, d in enumerate((1, 2, 3))]  # 3 x [C/3, h, w]
    return x + res_scale * conv(p, f"{name}.fusion", np.concatenate(branches))  # [C, h, w]


def down(p, i, x):
    """GroupNorm (affine folded) + BN + 2x2 stride-2 conv, folded into one conv at load."""
    return conv(p, f"down{i}", group_norm_ref(x, GN_GROUPS), stride=2)


def merge(p, name, x, skip, region_prob, boundary_prob=None):
    adapted = x
    if f"{name}.feature_adapter.0.weight" in p:
        adapted = conv(p, f"{name}.feature_adapter.2", relu_ref(conv(p, f"{name}.feature_adapter.0", x)))
    out = adapted + skip + p[f"{name}.region_weight"] * region_prob * skip
    if boundary_prob is not None:
        out = out + p[f"{name}.boundary_weight"] * boundary_prob * skip
    return out


def gate_head(p, name, y):
    b = sigmoid_ref(conv(p, f"{name}.conv1", y))  # [1, h, w] boundary probability
    r = sigmoid_ref(conv(p, f"{name}.conv2", y))  # [1, h, w] region probability
    return y + y * b + y * r, r, b


def up2(x):
    return resize_bilinear_ac_ref(x, 2 * x.shape[1], 2 * x.shape[2])


def res_scale(cfg, p, i):
    return p[f"encoder3.{i}.res_weight"] if cfg.learned_res_scale else 0.1


def reference_forward(cfg: UltraSegConfig, p: dict, x: np.ndarray) -> np.ndarray:
    """x [3, H, W] RGB in [0, 1] (H, W multiples of 16), p the folded parameters -> logits [out_ch, H, W]."""
    _, H, W = x.shape
    gates = {name: gsa_gates(p, name, H, W) for name in GSA_DOWNSCALE}
    gelu, sigmoid = gelu_ref, sigmoid_ref
    t1 = gelu(down(p, 1, conv(p, "encoder1.0", x, padding=1)))  # [c0, H/2, W/2]
    t2 = gelu(down(p, 2, conv(p, "encoder2.0", t1, padding=1)))  # [c1, H/4, W/4]
    e3 = conv(p, "encoder3.0", t2, padding=1)  # [c2, H/4, W/4]
    e3 = edb(p, "encoder3.2", edb(p, "encoder3.1", e3, res_scale(cfg, p, 1)), res_scale(cfg, p, 2))  # [c2, H/4, W/4]
    t3 = gelu(down(p, 3, e3))  # [c2, H/8, W/8]
    t4 = gelu(max_pool2x2_ref(gn(p, "ebn4", gsa(p, "encoder4.0", t3, gates["encoder4.0"]))))  # [c3, H/16, W/16]

    if cfg.fusion:  # AGF + SSA
        f3 = conv(p, "multiscale_fusion.transforms.0", resize_bilinear_ac_ref(t3, *t4.shape[1:]))  # [c3, H/16, W/16]
        a = gelu(conv(p, "agf.attention", np.concatenate([f3, t4]), padding=1))  # [c3/4, H/16, W/16] (BN folded)
        w = softmax_channels_ref(conv(p, "multiscale_fusion.spatial_attention.3", a))  # [2, H/16, W/16]
        fused = w[0:1] * f3 + w[1:2] * t4  # [c3, H/16, W/16]
        b = conv(p, "bottleneck", fused, padding=1)  # [c4, H/16, W/16]
        alpha = p["attention_alpha"]
        z = (1 - alpha) * b + alpha * b * sigmoid(b.mean(0, keepdims=True))  # [c4, H/16, W/16]
    else:
        z = conv(p, "bottleneck", t4, padding=1)  # [c4, H/16, W/16]

    y = gelu(gn(p, "dbn1", gsa(p, "decoder1.0", z, gates["decoder1.0"])))  # [c3, H/16, W/16]
    r = sigmoid(conv(p, "pred1.conv", y))  # [1, H/16, W/16]
    y = merge(p, "merge4", y + y * r, t4, r)  # [c3, H/16, W/16]
    y = gelu(up2(gn(p, "dbn2", gsa(p, "decoder2.0", y, gates["decoder2.0"]))))  # [c2, H/8, W/8]
    y, r, b = gate_head(p, "gate1", y)
    y = merge(p, "merge3", y, t3, r, b)  # [c2, H/8, W/8]
    y = gelu(up2(gn(p, "dbn3", gsa(p, "decoder3.0", y, gates["decoder3.0"]))))  # [c1, H/4, W/4]
    y, r, b = gate_head(p, "gate2", y)
    y = merge(p, "merge2", y, t2, r, b)  # [c1, H/4, W/4]
    y = gelu(up2(gn(p, "dbn4", conv(p, "decoder4.0", y, padding=1))))  # [c0, H/2, W/2]
    y, r, b = gate_head(p, "gate3", y)
    y = merge(p, "merge1", y, t1, r, b)  # [c0, H/2, W/2]
    return resize_bilinear_ac_ref(conv(p, "final.0", y), H, W)  # [out_ch, H, W]


# ---- the fast plan: Numba kernels and single-thread GEMMs, one plan per input size ----------
# GroupNorms become per-channel scale/shift computed from the statistics and applied by the
# consumer (down conv input, upsample, max-pool); GELU rides on the producer's epilogue; the
# GSA gates are constants per size (float64, folded with LN1's affine); the training-only side
# outputs are never computed.
def _gelu64(x):
    """Exact GELU in float64 through math.erf (the gates are small; SciPy stays unimported).
    map over a list: a third faster than np.frompyfunc, part of every plan's build."""
    erf = np.fromiter(map(math.erf, (x / math.sqrt(2.0)).ravel().tolist()), np.float64, x.size)
    return 0.5 * x * (1.0 + erf.reshape(x.shape))


def build_plan(cfg: UltraSegConfig, p: dict, h: int, w: int) -> Plan:
    plan = Plan(h, w)
    b = _PlanBuilder(cfg, p, plan)
    c0, c1, c2, c3, c4 = cfg.widths
    # the frame is padded once into the first conv's buffer; the down convs also write the
    # padded copy their 3x3 consumer reads (no pad passes)
    input_padded = ops.padded_buffer(plan.input, 1)
    plan.add(ops.pad(plan.input, 1, input_padded))
    t1 = plan.buffer(c0, h // 2, w // 2)
    t1_padded = ops.padded_buffer(t1, 1)
    # conv, GroupNorm and down conv folded per frame: the [c0, H, W] conv output is never stored
    plan.add(ops.conv_gn_down(plan.input, input_padded, 1, p["encoder1.0.weight"], p["encoder1.0.bias"], GN_GROUPS,
                              p["down1.weight"], p["down1.bias"], t1, ACT_GELU, t1_padded, 1, GN_EPS))  # [c0, H/2]
    t2, t2_padded = b.down(2, b.conv3x3("encoder2.0", t1, c1, padded=t1_padded, pad_width=1), pad_width=1)  # [c1, H/4]
    e3 = plan.buffer(c2, h // 4, w // 4)
    e3_padded = ops.padded_buffer(e3, 3)  # border 3: one copy serves EDB's three dilations
    b.conv3x3("encoder3.0", t2, c2, padded=t2_padded, pad_width=1, out=e3, out_padded=e3_padded, out_pad_width=3)
    for i in (1, 2):  # the first EDB's sum also refills e3_padded, which the second reads
        b.edb(f"encoder3.{i}", e3, float(np.asarray(res_scale(cfg, p, i))), e3_padded, e3_padded if i == 1 else None)
    t3, _ = b.down(3, e3)  # [c2, H/8]
    g = b.gsa("encoder4.0", t3, c3)  # [c3, H/8]
    cat = plan.buffer(2 * c3, h // 16, w // 16) if cfg.fusion else None
    t4 = cat[c3:] if cfg.fusion else plan.buffer(c3, h // 16, w // 16)  # fusion: no copy into the AGF concat
    scale, shift = b.gn_coeffs("ebn4", g)
    plan.add(ops.max_pool2x2(g, scale, shift, t4, ACT_GELU))  # [c3, H/16]
    z = b.fusion(t3, t4, cat, c3, c4) if cfg.fusion else b.conv3x3("bottleneck", t4, c4)  # [c4, H/16]

    y = b.gsa("decoder1.0", z, c3)  # [c3, H/16]
    scale, shift = b.gn_coeffs("dbn1", y)
    plan.add(ops.affine_act(y, scale, shift, ACT_GELU))
    y = b.head_merge(y, "pred1.conv", None, "merge4", t4)
    y = b.decoder_stage(b.gsa("decoder2.0", y, c2), "dbn2", "gate1", "merge3", t3)  # [c2, H/8]
    y = b.decoder_stage(b.gsa("decoder3.0", y, c1), "dbn3", "gate2", "merge2", t2)  # [c1, H/4]
    y = b.decoder_stage(b.conv3x3("decoder4.0", y, c0), "dbn4", "gate3", "merge1", t1)  # [c0, H/2]
    small = b.conv1x1("final.0", y, cfg.out_ch)  # [out_ch, H/2]; 1x1 conv and resize commute
    plan.output = plan.buffer(cfg.out_ch, h, w)
    plan.add(ops.resize_bilinear(small, b.ones(cfg.out_ch), b.zeros(cfg.out_ch), plan.output))
    return plan


class _PlanBuilder:
    """The building blocks of an UltraSeg plan: each allocates its outputs and appends its steps."""

    def __init__(self, cfg, p, plan):
        self.p, self.plan = p, plan
        h, w = plan.input.shape[1:]
        p64 = {k: v.astype(np.float64) for k, v in p.items() if ".share_space" in k or ".conv" in k}
        self.gates = {name: gsa_gates(p64, name, h, w, _gelu64) for name in GSA_DOWNSCALE}

    @staticmethod
    def ones(c):
        return np.ones(c, F32)

    @staticmethod
    def zeros(c):
        return np.zeros(c, F32)

    def conv3x3(self, name, src, cout, dilation=1, act=ACT_NONE, out=None, padded=None, pad_width=None,
                out_padded=None, out_pad_width=None):
        out = self.plan.buffer(cout, *src.shape[1:]) if out is None else out
        self.plan.add(ops.conv3x3(src, self.p[f"{name}.weight"], self.p[f"{name}.bias"], out, dilation, act,
                                  padded, pad_width, out_padded=out_padded, out_pad_width=out_pad_width))
        return out

    def conv1x1(self, name, src, cout, act=ACT_NONE, out=None):
        out = self.plan.buffer(cout, *src.shape[1:]) if out is None else out
        self.plan.add(ops.conv1x1(src, self.p[f"{name}.weight"], self.p[f"{name}.bias"], out, act))
        return out

    def gn_coeffs(self, name, src):
        c = src.shape[0]
        scale, shift = np.zeros(c, F32), np.zeros(c, F32)
        gamma = self.p[f"{name}.weight"] if name else self.ones(c)
        beta = self.p[f"{name}.bias"] if name else self.zeros(c)
        self.plan.add(ops.group_norm_coeffs(src, GN_GROUPS, gamma, beta, scale, shift, GN_EPS))
        return scale, shift

    def down(self, i, src, pad_width=None):
        """Non-affine GroupNorm, then the folded (GN affine + BN + 2x2 stride-2) conv and GELU; with
        `pad_width`, also the zero-bordered copy the next 3x3 conv reads."""
        c, h, w = src.shape
        scale, shift = self.gn_coeffs(None, src)
        out = self.plan.buffer(c, h // 2, w // 2)
        padded = None if pad_width is None else ops.padded_buffer(out, pad_width)
        self.plan.add(ops.down2x2(src, scale, shift, self.p[f"down{i}.weight"], self.p[f"down{i}.bias"], out,
                                  ACT_GELU, padded, pad_width))
        return out, padded

    def edb(self, name, x, scale, padded, out_padded=None):
        """In place x <- x + s * fusion(concat(branch_d1, branch_d2, branch_d3)); `padded`: x's
        border-3 copy (one serves the three dilations); with `out_padded`, the new x also fills
        that border-3 buffer (it may be `padded`: the branch convs have read it by then)."""
        c = x.shape[0]
        branches = self.plan.buffer(c, *x.shape[1:])
        for i, d in enumerate((1, 2, 3)):
            self.conv3x3(f"{name}.dilated_convs.{i}", x, c // 3, dilation=d,
                         out=branches[i * c // 3:(i + 1) * c // 3], padded=padded, pad_width=3)
        fused = self.plan.buffer(c, *x.shape[1:])
        # the residual scale s folds into the fusion conv
        w = (self.p[f"{name}.fusion.weight"] * F32(scale)).astype(F32)
        b = (self.p[f"{name}.fusion.bias"] * F32(scale)).astype(F32)
        self.plan.add(ops.residual_conv1x1(x, branches, w, b, fused, out_padded, None if out_padded is None else 3))

    def gsa(self, name, src, cout):
        c = src.shape[0]
        gate = np.concatenate(self.gates[name]).astype(np.float64)  # [c, h, w], chunk i = g_i
        gate_scale = (self.p[f"{name}.norm1.weight"].astype(np.float64)[:, None, None] * gate).astype(F32)
        gate_shift = (self.p[f"{name}.norm1.bias"].astype(np.float64)[:, None, None] * gate).astype(F32)
        normed = self.plan.buffer(c, *src.shape[1:])
        self.plan.add(ops.gsa_norm(src, gate_scale, gate_shift, shuffle_source(c), self.p[f"{name}.norm2.weight"],
                                   self.p[f"{name}.norm2.bias"], normed, LN_EPS))
        dw = self.conv3x3(f"{name}.ldw.0", normed, c, act=ACT_GELU)
        return self.conv1x1(f"{name}.ldw.2", dw, cout)

    def head_merge(self, y, region_name, boundary_name, merge_name, skip):
        """Head gates (y <- y (1 + b + r)), the merge's adapter, and the merge with the skip feature."""
        c, h, w = y.shape
        region, bound = np.zeros((h, w), F32), np.zeros((h, w), F32)
        p = self.p
        wb = p[f"{boundary_name}.weight"] if boundary_name else None
        bb = p[f"{boundary_name}.bias"][0] if boundary_name else 0.0
        self.plan.add(ops.gate_head(y, wb, bb, p[f"{region_name}.weight"], p[f"{region_name}.bias"][0],
                                    region, bound, boundary=boundary_name is not None))
        adapted = y
        if f"{merge_name}.feature_adapter.0.weight" in p:
            hidden = p[f"{merge_name}.feature_adapter.0.weight"].shape[0]
            a = self.conv1x1(f"{merge_name}.feature_adapter.0", y, hidden, act=ACT_RELU)
            adapted = self.conv1x1(f"{merge_name}.feature_adapter.2", a, c)
        out = self.plan.buffer(c, h, w)
        bw = p[f"{merge_name}.boundary_weight"] if boundary_name else 0.0
        self.plan.add(ops.merge(adapted, skip, region, bound, p[f"{merge_name}.region_weight"], bw, out))
        return out

    def decoder_stage(self, x, norm_name, gate_name, merge_name, skip):
        """GroupNorm -> up x2 -> GELU (one kernel), gate head, merge."""
        c, h, w = x.shape
        scale, shift = self.gn_coeffs(norm_name, x)
        y = self.plan.buffer(c, 2 * h, 2 * w)
        self.plan.add(ops.resize_bilinear(x, scale, shift, y, ACT_GELU))
        return self.head_merge(y, f"{gate_name}.conv2", f"{gate_name}.conv1", merge_name, skip)

    def fusion(self, t3, t4, cat, c3, c4):
        """AGF (attention-weighted t3/t4 blend) and the bottleneck with SSA."""
        h, w = t4.shape[1:]
        c2 = t3.shape[0]
        a3 = self.plan.buffer(c2, h, w)
        self.plan.add(ops.resize_bilinear(t3, self.ones(c2), self.zeros(c2), a3))
        f3 = self.conv1x1("multiscale_fusion.transforms.0", a3, c3, out=cat[:c3])
        att = self.conv3x3("agf.attention", cat, c3 // 4, act=ACT_GELU)
        logits2 = self.conv1x1("multiscale_fusion.spatial_attention.3", att, 2)
        fused = self.plan.buffer(c3, h, w)
        self.plan.add(ops.agf_fuse(logits2, f3, t4, fused))
        b = self.conv3x3("bottleneck", fused, c4)
        z = self.plan.buffer(c4, h, w)
        self.plan.add(ops.ssa(b, float(np.asarray(self.p["attention_alpha"])), z))
        return z


FAMILY = Family(
    name="ultraseg",
    config_type=UltraSegConfig,
    variants=VARIANTS,
    expected_tensors=expected_tensors,
    fold=fold,
    reference_forward=reference_forward,
    build_plan=build_plan,
    input_multiple=16,
    min_input=16,
    preprocessing=preprocessing.affine(scale=1.0 / 255.0),
    output={"activation": "softmax", "polyp_channel": 1},
    out_channels=lambda cfg: cfg.out_ch,
    runnable_problems=runnable_problems,
)
