"""The fast engine: UltraSeg as a per-input-size plan of Numba kernels and single-thread GEMMs.

A plan (built once per input size) owns every buffer, the GSA gates (constants
for that size, computed in float64 with the reference ops and folded with LN1's
affine) and a flat list of validated steps (npseg.ops.steps). run() pads the
input into the first conv's buffer and runs the steps: no buffers allocated, no
shape logic per frame.
GroupNorms become per-channel scale/shift computed from the statistics and
applied by the consumer (down conv input, upsample, max-pool); GELU rides on
the producer's epilogue; the training-only side outputs are never computed.
"""
from __future__ import annotations

import math

import numpy as np

from . import reference
from .config import UltraSegConfig
from .ops import steps as ops
from .ops._jit import ACT_GELU, ACT_NONE, ACT_RELU, numba
from .ops.conv import conv2d_ref, pad_nb
from .ops.conv1x1 import conv1x1_ref
from .ops.gsa import shuffle_source
from .ops.resize import resize_bilinear_ac_ref

if numba is None:  # segmenter._engines() then offers the NumPy engine only
    raise ImportError("npseg.engine_numba needs numba")

F32 = np.float32
GN_GROUPS = reference.GN_GROUPS
GN_EPS, LN_EPS = 1e-5, 1e-6


def _gelu64(x):
    """Exact GELU in float64 through math.erf (the gates are small; SciPy stays unimported)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


_erf = np.frompyfunc(math.erf, 1, 1)


def _all_gates(p, h, w):
    """reference.all_gates in float64, with the GELU above."""
    p64 = {k: v.astype(np.float64) for k, v in p.items() if ".share_space" in k or ".conv" in k}
    gates = {}
    for name in reference.GSA_NAMES:
        gh, gw = h // reference.GSA_DOWNSCALE[name], w // reference.GSA_DOWNSCALE[name]
        gates[name] = []
        for i in range(1, 5):
            seed = resize_bilinear_ac_ref(p64[f"{name}.share_space{i}"][0], gh, gw)
            dw = f"{name}.conv{i}.0"
            hidden = conv2d_ref(seed, p64[f"{dw}.weight"], p64[f"{dw}.bias"], padding=1, groups=seed.shape[0])
            pw = f"{name}.conv{i}.2"
            gates[name].append(conv1x1_ref(_gelu64(hidden), p64[f"{pw}.weight"], p64[f"{pw}.bias"]))
    return gates


class _Plan:
    """Buffers and steps for one input size."""

    def __init__(self, cfg: UltraSegConfig, p: dict, h: int, w: int):
        self.p = p
        self.steps = []
        self.input = np.zeros((3, h, w), F32)
        c0, c1, c2, c3, c4 = cfg.widths
        gates = _all_gates(p, h, w)
        self.ones = {c: np.ones(c, F32) for c in set(cfg.widths) | {cfg.out_ch, 2}}
        self.zeros = {c: np.zeros(c, F32) for c in self.ones}
        res_scale = [p[f"encoder3.{i}.res_weight"] if cfg.learned_res_scale else 0.1 for i in (1, 2)]

        # encoder; run() pads the frame straight into input_padded, and the down convs also write
        # the padded copy their 3x3 consumer reads (no pad passes)
        self.input_padded = ops.padded_buffer(self.input, 1)
        t1 = self._buf(c0, h // 2, w // 2)
        t1_padded = ops.padded_buffer(t1, 1)
        # conv, GroupNorm and down conv folded per frame: the [c0, H, W] conv output is never stored
        self.steps += ops.conv_gn_down(self.input, self.input_padded, 1, p["encoder1.0.weight"],
                                       p["encoder1.0.bias"], GN_GROUPS, p["down1.weight"], p["down1.bias"], t1,
                                       ACT_GELU, t1_padded, 1, GN_EPS)  # [c0, H/2]
        t2, t2_padded = self._down(2, self._conv3x3("encoder2.0", t1, c1, padded=t1_padded, pad_width=1), ACT_GELU,
                                   pad_width=1)  # [c1, H/4]
        e3 = self._buf(c2, h // 4, w // 4)
        e3_padded = ops.padded_buffer(e3, 3)  # border 3: one copy serves EDB's three dilations
        self._conv3x3("encoder3.0", t2, c2, padded=t2_padded, pad_width=1, out=e3, out_padded=e3_padded,
                      out_pad_width=3)  # [c2, H/4]
        for i in (1, 2):
            self._edb(f"encoder3.{i}", e3, float(np.asarray(res_scale[i - 1])), e3_padded if i == 1 else None)
        t3, _ = self._down(3, e3, ACT_GELU)  # [c2, H/8]
        g = self._gsa("encoder4.0", t3, c3, gates)  # [c3, H/8]
        if cfg.fusion:  # t4 lives in the second half of the AGF concat buffer: no copy
            cat = self._buf(2 * c3, h // 16, w // 16)
            t4 = cat[c3:]
        else:
            t4 = self._buf(c3, h // 16, w // 16)
        scale, shift = self._gn_coeffs("ebn4", g)
        self.steps += ops.max_pool2x2(g, scale, shift, t4, ACT_GELU)  # [c3, H/16]

        if cfg.fusion:
            z = self._fusion(t3, t4, cat, c3, c4)
        else:
            z = self._conv3x3("bottleneck", t4, c4)  # [c4, H/16]

        # decoder
        y = self._gsa("decoder1.0", z, c3, gates)  # [c3, H/16]
        scale, shift = self._gn_coeffs("dbn1", y)
        self.steps += ops.affine_act(y, scale, shift, ACT_GELU)
        y = self._head_merge(y, "pred1.conv", None, "merge4", t4)
        y = self._decoder_stage(self._gsa("decoder2.0", y, c2, gates), "dbn2", "gate1", "merge3", t3)  # [c2, H/8]
        y = self._decoder_stage(self._gsa("decoder3.0", y, c1, gates), "dbn3", "gate2", "merge2", t2)  # [c1, H/4]
        y = self._decoder_stage(self._conv3x3("decoder4.0", y, c0), "dbn4", "gate3", "merge1", t1)  # [c0, H/2]
        small = self._conv1x1("final.0", y, cfg.out_ch)  # [out_ch, H/2]; 1x1 conv and resize commute
        self.logits = self._buf(cfg.out_ch, h, w)
        self.steps += ops.resize_bilinear(small, self.ones[cfg.out_ch], self.zeros[cfg.out_ch], self.logits)

    # -- building blocks ------------------------------------------------------------------------
    @staticmethod
    def _buf(c, h, w):
        return np.zeros((c, h, w), F32)

    def _conv3x3(self, name, src, cout, dilation=1, act=ACT_NONE, out=None, padded=None, pad_width=None,
                 out_padded=None, out_pad_width=None):
        out = self._buf(cout, *src.shape[1:]) if out is None else out
        self.steps += ops.conv3x3(src, self.p[f"{name}.weight"], self.p[f"{name}.bias"], out, dilation, act,
                                  padded, pad_width, out_padded=out_padded, out_pad_width=out_pad_width)
        return out

    def _conv1x1(self, name, src, cout, act=ACT_NONE, out=None):
        out = self._buf(cout, *src.shape[1:]) if out is None else out
        self.steps += ops.conv1x1(src, self.p[f"{name}.weight"], self.p[f"{name}.bias"], out, act)
        return out

    def _gn_coeffs(self, name, src):
        c = src.shape[0]
        scale, shift = np.zeros(c, F32), np.zeros(c, F32)
        gamma = self.p[f"{name}.weight"] if name else self.ones[c]
        beta = self.p[f"{name}.bias"] if name else self.zeros[c]
        self.steps += ops.group_norm_coeffs(src, GN_GROUPS, gamma, beta, scale, shift, GN_EPS)
        return scale, shift

    def _down(self, i, src, act, pad_width=None):
        """Non-affine GroupNorm, then the folded (GN affine + BN + 2x2 stride-2) conv; with
        `pad_width`, also the zero-bordered copy the next 3x3 conv reads."""
        c, h, w = src.shape
        scale, shift = self._gn_coeffs(None, src)
        out = self._buf(c, h // 2, w // 2)
        padded = None if pad_width is None else ops.padded_buffer(out, pad_width)
        self.steps += ops.down2x2(src, scale, shift, self.p[f"down{i}.weight"], self.p[f"down{i}.bias"], out, act,
                                  padded, pad_width)
        return out, padded

    def _edb(self, name, x, res_scale, padded=None):
        """In place x <- x + s * fusion(concat(branch_d1, branch_d2, branch_d3)); `padded`: x's
        border-3 copy when its producer wrote one (else a pad step makes it)."""
        c = x.shape[0]
        branches = self._buf(c, *x.shape[1:])
        if padded is None:
            padded = ops.padded_buffer(x, 3)  # one padded copy serves the three dilations
            self.steps += ops.pad(x, 3, padded)
        for i, d in enumerate((1, 2, 3)):
            self._conv3x3(f"{name}.dilated_convs.{i}", x, c // 3, dilation=d, out=branches[i * c // 3:(i + 1) * c // 3],
                          padded=padded, pad_width=3)
        fused = self._buf(c, *x.shape[1:])
        # the residual scale s folds into the fusion conv
        w = (self.p[f"{name}.fusion.weight"] * F32(res_scale)).astype(F32)
        b = (self.p[f"{name}.fusion.bias"] * F32(res_scale)).astype(F32)
        self.steps += ops.residual_conv1x1(x, branches, w, b, fused)

    def _gsa(self, name, src, cout, gates):
        c = src.shape[0]
        gate = np.concatenate(gates[name]).astype(np.float64)  # [c, h, w], chunk i = g_i
        gate_scale = (self.p[f"{name}.norm1.weight"].astype(np.float64)[:, None, None] * gate).astype(F32)
        gate_shift = (self.p[f"{name}.norm1.bias"].astype(np.float64)[:, None, None] * gate).astype(F32)
        normed = self._buf(c, *src.shape[1:])
        self.steps += ops.gsa_norm(src, gate_scale, gate_shift, shuffle_source(c), self.p[f"{name}.norm2.weight"],
                                   self.p[f"{name}.norm2.bias"], normed, LN_EPS)
        dw = self._conv3x3(f"{name}.ldw.0", normed, c, act=ACT_GELU)
        return self._conv1x1(f"{name}.ldw.2", dw, cout)

    def _head_merge(self, y, region_name, boundary_name, merge_name, skip):
        """Head gates (y <- y (1 + b + r)), the merge's adapter, and the merge with the skip feature."""
        c, h, w = y.shape
        region, bound = np.zeros((h, w), F32), np.zeros((h, w), F32)
        p = self.p
        if boundary_name:
            self.steps += ops.gate_head(y, p[f"{boundary_name}.weight"], p[f"{boundary_name}.bias"][0],
                                        p[f"{region_name}.weight"], p[f"{region_name}.bias"][0], region, bound)
            bw = p[f"{merge_name}.boundary_weight"]
        else:
            self.steps += ops.gate_head(y, None, 0.0, p[f"{region_name}.weight"], p[f"{region_name}.bias"][0],
                                        region, bound, boundary=False)
            bw = 0.0
        adapted = y
        if f"{merge_name}.feature_adapter.0.weight" in p:
            hidden = p[f"{merge_name}.feature_adapter.0.weight"].shape[0]
            a = self._conv1x1(f"{merge_name}.feature_adapter.0", y, hidden, act=ACT_RELU)
            adapted = self._conv1x1(f"{merge_name}.feature_adapter.2", a, c)
        out = self._buf(c, h, w)
        self.steps += ops.merge(adapted, skip, region, bound, p[f"{merge_name}.region_weight"], bw, out)
        return out

    def _decoder_stage(self, x, norm_name, gate_name, merge_name, skip):
        """GroupNorm -> up x2 -> GELU (one kernel), gate head, merge."""
        c, h, w = x.shape
        scale, shift = self._gn_coeffs(norm_name, x)
        y = self._buf(c, 2 * h, 2 * w)
        self.steps += ops.resize_bilinear(x, scale, shift, y, ACT_GELU)
        return self._head_merge(y, f"{gate_name}.conv2", f"{gate_name}.conv1", merge_name, skip)

    def _fusion(self, t3, t4, cat, c3, c4):
        """AGF (attention-weighted t3/t4 blend) and the bottleneck with SSA."""
        h, w = t4.shape[1:]
        c2 = t3.shape[0]
        a3 = self._buf(c2, h, w)
        self.steps += ops.resize_bilinear(t3, self.ones[c2], self.zeros[c2], a3)
        f3 = self._conv1x1("multiscale_fusion.transforms.0", a3, c3, out=cat[:c3])
        att = self._conv3x3("agf.attention", cat, c3 // 4, act=ACT_GELU)
        logits2 = self._conv1x1("multiscale_fusion.spatial_attention.3", att, 2)
        fused = self._buf(c3, h, w)
        self.steps += ops.agf_fuse(logits2, f3, t4, fused)
        b = self._conv3x3("bottleneck", fused, c4)
        z = self._buf(c4, h, w)
        self.steps += ops.ssa(b, float(np.asarray(self.p["attention_alpha"])), z)
        return z


class NumbaEngine:
    """UltraSeg forward in float32 with Numba kernels; one plan per input size."""

    name = "numba"

    def __init__(self, cfg: UltraSegConfig, params: dict):
        self.cfg = cfg
        # writable contiguous float32 copies: read-only arrays would compile separate kernel variants
        self.params = {k: np.array(v, dtype=F32, order="C") for k, v in params.items()}
        self._plans: dict[tuple[int, int], _Plan] = {}

    def plan(self, h: int, w: int) -> _Plan:
        if (h, w) not in self._plans:
            if h % 16 or w % 16 or h < 16 or w < 16:
                raise ValueError(f"input size must be positive multiples of 16, got {h}x{w}")
            self._plans[(h, w)] = _Plan(self.cfg, self.params, h, w)
        return self._plans[(h, w)]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Like forward, but returns the plan's logits buffer (overwritten by the next call)."""
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"input must be [3, H, W], got {x.shape}")
        plan = self.plan(x.shape[1], x.shape[2])
        # the pad kernel is compiled for writable float32 C-order arrays; anything else is copied first
        if x.dtype != F32 or not x.flags.c_contiguous or not x.flags.writeable:
            np.copyto(plan.input, x)
            x = plan.input
        pad_nb(x, 1, plan.input_padded)
        for step in plan.steps:
            step()
        return plan.logits

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x float32 [3,H,W] RGB in [0,1] -> logits float32 [out_ch,H,W] (a new array)."""
        return self.run(x).copy()
