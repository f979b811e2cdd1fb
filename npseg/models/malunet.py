"""MALUNet (Ruan et al., BIBM 2022; split_att='fc', bridge on), MicroAUNet's distillation teacher,
as shared/specs/MICROAUNET.md specifies it (the copy in the MicroAUNet authors' repository).

177,943 parameters at widths (8, 16, 24, 32, 48, 64). Input: RGB, per-image min-max to [0, 255];
output: one logit per pixel (the authors' sigmoid moves to the output record). Each external
attention's two linear maps share one weight (W1 = W0^T): the files store both, and, as the
authors' loader does, the value of linear_1 wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from ..ops import dsconv as ops_ds
from ..ops import external_attention as ops_ea
from ..ops import gated_pointwise as ops_gp
from ..ops import skip_bridge as ops_sb
from ..ops import steps as ops
from ..ops._jit import ACT_GELU, ACT_NONE
from ..ops.activation import gelu_ref
from ..ops.conv import conv2d_ref
from ..ops.dsconv import depthwise_ref
from ..ops.external_attention import external_attention_ref
from ..ops.gated_pointwise import sigmoid_gelu_product_ref
from ..ops.norm import group_norm_ref
from ..ops.resize import max_pool2x2_ref, resize_bilinear_ac_ref
from ..ops.skip_bridge import channel_gates_ref, sequential_bridge_ref, spatial_gate_ref
from ..plan import F32, Plan
from ..preprocessing import minmax
from . import Family
from .microaunet import SixWidthsConfig

GN_GROUPS = 4
GN_EPS = 1e-5
DGA_DILATIONS = (7, 5, 2, 1)
SPATIAL_DILATION = 3  # the bridge's 7x7 conv: dilation 3, zero padding 9


@dataclass(frozen=True)
class MALUNetConfig(SixWidthsConfig):
    pass


VARIANTS = {"malunet": MALUNetConfig(name="malunet")}


# ---- tensor spec -------------------------------------------------------------------------------
def _gn_spec(prefix: str, c: int) -> dict:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def _conv_spec(prefix: str, cout: int, cin: int, k: int, bias: bool = True) -> dict:
    return {f"{prefix}.weight": (cout, cin, k, k), **({f"{prefix}.bias": (cout,)} if bias else {})}


def _dwct_spec(prefix: str, cin: int, cout: int, k: int) -> dict:
    return {**_conv_spec(f"{prefix}.conv1", cin, 1, k), **_gn_spec(f"{prefix}.norm_layer", cin),
            **_conv_spec(f"{prefix}.conv2", cout, cin, 1)}


def _ea_spec(prefix: str, c: int) -> dict:
    return {**_conv_spec(f"{prefix}.conv1", c, c, 1), f"{prefix}.linear_0.weight": (4 * c, c, 1),
            f"{prefix}.linear_1.weight": (c, 4 * c, 1), **_conv_spec(f"{prefix}.conv2", c, c, 1, bias=False),
            **_gn_spec(f"{prefix}.norm_layer", c)}


def _dga_spec(prefix: str, cin: int, cout: int) -> dict:
    spec = {}
    for j in range(4):
        spec |= _conv_spec(f"{prefix}.mda{j}", cin // 4, 1, 3)
    spec |= _gn_spec(f"{prefix}.norm_layer", cin) | _conv_spec(f"{prefix}.conv", cin, cin, 1)
    spec |= _dwct_spec(f"{prefix}.gau.w1.0", cin, cin, 3) | _dwct_spec(f"{prefix}.gau.w2.0", cin, cin, 5)
    return spec | _dwct_spec(f"{prefix}.gau.wo.0", cin, cout, 3) | _conv_spec(f"{prefix}.gau.cw", cout, cin, 1)


def expected_tensors(cfg: MALUNetConfig) -> dict:
    """{name: shape} of a weights file, in the authors' registration order."""
    c = cfg.widths
    spec = _conv_spec("encoder1.0", c[0], 3, 3) | _conv_spec("encoder2.0", c[1], c[0], 3)
    spec |= _conv_spec("encoder3.0", c[2], c[1], 3)
    for k in (3, 4, 5):
        spec |= _ea_spec(f"encoder{k + 1}.0", c[k - 1]) | _dga_spec(f"encoder{k + 1}.1", c[k - 1], c[k])
    spec |= {"scab.catt.get_all_att.weight": (1, 1, 3)}
    for k in range(5):
        spec |= {f"scab.catt.att{k + 1}.weight": (c[k], sum(c[:5])), f"scab.catt.att{k + 1}.bias": (c[k],)}
    spec |= _conv_spec("scab.satt.shared_conv2d.0", 1, 2, 7)
    for k in (1, 2, 3):
        spec |= _dga_spec(f"decoder{k}.0", c[6 - k], c[5 - k]) | _ea_spec(f"decoder{k}.1", c[5 - k])
    spec |= _conv_spec("decoder4.0", c[1], c[2], 3) | _conv_spec("decoder5.0", c[0], c[1], 3)
    for prefix, widths in (("ebn", c[:5]), ("dbn", c[4::-1])):
        for k, width in enumerate(widths, 1):
            spec |= _gn_spec(f"{prefix}{k}", width)
    return spec | _conv_spec("final", 1, c[0], 1)


# ---- exact load-time folds ---------------------------------------------------------------------
def fold(cfg: MALUNetConfig, tensors: dict) -> dict:
    """Each EA's conv1 into W0 and conv2 into W1 (W_in = W0 conv1, b_in = W0 b1, W_out = conv2 W1,
    W0 = linear_1^T); every GroupNorm affine that a 1x1 conv follows directly into that conv (DGA,
    DWCt); the five channel-gate linears stacked into one."""
    p = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    for name in [k[: -len(".linear_0.weight")] for k in p if k.endswith(".linear_0.weight")]:
        p.pop(f"{name}.linear_0.weight")
        w1 = p.pop(f"{name}.linear_1.weight")[:, :, 0]  # [C, 4C]
        conv1, b1 = p.pop(f"{name}.conv1.weight")[:, :, 0, 0], p.pop(f"{name}.conv1.bias")
        p[f"{name}.w_in"], p[f"{name}.b_in"] = w1.T @ conv1, w1.T @ b1
        p[f"{name}.w_out"] = p.pop(f"{name}.conv2.weight")[:, :, 0, 0] @ w1
    for norm in [k[: -len(".weight")] for k in p if k.endswith("norm_layer.weight")]:
        parent = norm[: -len(".norm_layer")]
        conv = f"{parent}.conv" if f"{parent}.conv.weight" in p else f"{parent}.conv2"
        if f"{parent}.w_in" in p:  # an EA: its GroupNorm ends the block (residual, GELU): stays
            continue
        gamma, beta = p.pop(f"{norm}.weight"), p.pop(f"{norm}.bias")
        w = p[f"{conv}.weight"]
        p[f"{conv}.weight"] = w * gamma[None, :, None, None]
        p[f"{conv}.bias"] = p[f"{conv}.bias"] + w[:, :, 0, 0] @ beta
    atts = range(1, 6)
    p["scab.catt.fc.weight"] = np.concatenate([p.pop(f"scab.catt.att{k}.weight") for k in atts])
    p["scab.catt.fc.bias"] = np.concatenate([p.pop(f"scab.catt.att{k}.bias") for k in atts])
    return {k: v.astype(np.float32) for k, v in p.items()}


# ---- the reference forward ---------------------------------------------------------------------
def _conv(p, name, x, padding=0):
    return conv2d_ref(x, p[f"{name}.weight"], p[f"{name}.bias"], padding=padding)


def _dwct(p, name, x):
    """PW(GN(depthwise k x k + b)), the GroupNorm's affine folded into the PW."""
    y = depthwise_ref(x, p[f"{name}.conv1.weight"], p[f"{name}.conv1.bias"])
    return _conv(p, f"{name}.conv2", group_norm_ref(y, GN_GROUPS))


def _dga(p, name, x):
    y = np.concatenate([depthwise_ref(chunk, p[f"{name}.mda{j}.weight"], p[f"{name}.mda{j}.bias"], d)
                        for j, (chunk, d) in enumerate(zip(np.split(x, 4), DGA_DILATIONS))])  # [C, h, w]
    y = gelu_ref(_conv(p, f"{name}.conv", group_norm_ref(y, GN_GROUPS)))  # [C, h, w]
    g = sigmoid_gelu_product_ref(_dwct(p, f"{name}.gau.w1.0", y), _dwct(p, f"{name}.gau.w2.0", y))  # [C, h, w]
    return gelu_ref(_dwct(p, f"{name}.gau.wo.0", g)) + _conv(p, f"{name}.gau.cw", y)  # [C', h, w]


def _ea(p, name, x):
    z = external_attention_ref(x, p[f"{name}.w_in"], p[f"{name}.b_in"], p[f"{name}.w_out"])  # [C, h, w]
    return gelu_ref(_gn(p, f"{name}.norm_layer", z) + x)


def _gn(p, name, x):
    return group_norm_ref(x, GN_GROUPS, p[f"{name}.weight"], p[f"{name}.bias"])


def _up2(x):
    return resize_bilinear_ac_ref(x, 2 * x.shape[1], 2 * x.shape[2])


def reference_forward(cfg: MALUNetConfig, p: dict, x: np.ndarray) -> np.ndarray:
    """x [3, H, W] RGB, min-max scaled to [0, 255] (H, W multiples of 32) -> logits [1, H, W]."""
    skips = []
    y = x
    for k in range(1, 6):
        block = _conv(p, f"encoder{k}.0", y, 1) if k <= 3 else _dga(p, f"encoder{k}.1", _ea(p, f"encoder{k}.0", y))
        y = gelu_ref(max_pool2x2_ref(_gn(p, f"ebn{k}", block)))  # t_k [c_{k-1}, H/2^k]
        skips.append(y)
    b = gelu_ref(_dga(p, "encoder6.1", _ea(p, "encoder6.0", y)))  # [c5, H/32] from the un-bridged t5

    w_s, b_s = p["scab.satt.shared_conv2d.0.weight"], p["scab.satt.shared_conv2d.0.bias"]
    spatial = [spatial_gate_ref(t, w_s, b_s, SPATIAL_DILATION, reflect=False) for t in skips]  # five [1, h, w]
    a = channel_gates_ref([t * (1 + s) for t, s in zip(skips, spatial)], p["scab.catt.get_all_att.weight"].reshape(3),
                          p["scab.catt.fc.weight"], p["scab.catt.fc.bias"])  # [S] gates of u_k = t_k (1 + s_k)
    gates = np.split(a, np.cumsum(cfg.widths[:4]))
    bridged = [sequential_bridge_ref(t, g, s) for t, g, s in zip(skips, gates, spatial)]  # a u + s t

    y = gelu_ref(_gn(p, "dbn1", _ea(p, "decoder1.1", _dga(p, "decoder1.0", b)))) + bridged[4]  # [c4, H/32]
    for k in range(2, 6):
        block = _ea(p, f"decoder{k}.1", _dga(p, f"decoder{k}.0", y)) if k <= 3 else _conv(p, f"decoder{k}.0", y, 1)
        y = gelu_ref(_up2(_gn(p, f"dbn{k}", block))) + bridged[5 - k]  # [c_{5-k}, H/2^(6-k)]
    return _up2(_conv(p, "final", y))  # [1, H, W] logits


# ---- the fast plan -----------------------------------------------------------------------------
class _Builder:
    """Buffers and steps of one plan. GroupNorms in front of a 1x1 conv become a per-frame affine
    from the float64 sums the depthwise conv before them accumulated, folded into that conv."""

    def __init__(self, cfg: MALUNetConfig, p: dict, plan: Plan):
        self.p, self.plan = p, plan
        self.ones = {c: np.ones(c, F32) for c in (*cfg.widths, 1)}
        self.zeros = {c: np.zeros(c, F32) for c in self.ones}

    def gn_pointwise(self, v, stats, conv, out, act=ACT_NONE):
        """out = act(conv(GroupNorm(v))) (the affine folded into conv at load)."""
        c = v.shape[0]
        scale, shift = np.zeros(c, F32), np.zeros(c, F32)
        self.plan.add(ops_gp.gn_affine(stats, v.shape[1] * v.shape[2], GN_GROUPS, self.ones[c], self.zeros[c],
                                       self.ones[c], self.zeros[c], scale, shift, GN_EPS))
        self.plan.add(ops_gp.gn_pointwise(v, scale, shift, self.p[f"{conv}.weight"], self.p[f"{conv}.bias"], out, act))
        return out

    def dwct(self, name, x, cout, act=ACT_NONE):
        v, stats = self.plan.buffer(*x.shape), np.zeros((x.shape[0], 2))
        self.plan.add(ops_ds.depthwise(x, self.p[f"{name}.conv1.weight"], self.p[f"{name}.conv1.bias"], v, stats=stats))
        return self.gn_pointwise(v, stats, f"{name}.conv2", self.plan.buffer(cout, *x.shape[1:]), act)

    def dga(self, name, x, cout):
        c, q = x.shape[0], x.shape[0] // 4
        v, stats = self.plan.buffer(*x.shape), np.zeros((c, 2))
        for j, d in enumerate(DGA_DILATIONS):
            part = slice(j * q, (j + 1) * q)
            self.plan.add(ops_ds.depthwise(x[part], self.p[f"{name}.mda{j}.weight"], self.p[f"{name}.mda{j}.bias"],
                                           v[part], d, stats[part]))
        y = self.gn_pointwise(v, stats, f"{name}.conv", self.plan.buffer(*x.shape), ACT_GELU)
        g = self.plan.buffer(*x.shape)
        gate, value = self.dwct(f"{name}.gau.w1.0", y, c), self.dwct(f"{name}.gau.w2.0", y, c)
        self.plan.add(ops_gp.sigmoid_gelu_product(gate, value, g))
        out = self.dwct(f"{name}.gau.wo.0", g, cout, ACT_GELU)
        self.plan.add(ops.residual_conv1x1(out, y, self.p[f"{name}.gau.cw.weight"], self.p[f"{name}.gau.cw.bias"],
                                           self.plan.buffer(*out.shape)))
        return out

    def ea(self, name, x):
        p, (c, h, w) = self.p, x.shape
        slots, z = np.zeros((4 * c, h * w), F32), self.plan.buffer(*x.shape)
        scale, shift = np.zeros(c, F32), np.zeros(c, F32)
        self.plan.add([partial(np.dot, p[f"{name}.w_in"], x.reshape(c, -1), slots)]
                      + ops_ea.slot_softmax(slots, p[f"{name}.b_in"])
                      + [partial(np.dot, p[f"{name}.w_out"], slots, z.reshape(c, -1))])
        self.plan.add(ops.group_norm_coeffs(z, GN_GROUPS, p[f"{name}.norm_layer.weight"], p[f"{name}.norm_layer.bias"],
                                            scale, shift, GN_EPS))
        self.plan.add(ops.affine_act(z, scale, shift) + ops.add(z, x)
                      + ops.affine_act(z, self.ones[c], self.zeros[c], ACT_GELU))
        return z

    def conv3x3(self, name, x, cout):
        out = self.plan.buffer(cout, *x.shape[1:])
        self.plan.add(ops.conv3x3(x, self.p[f"{name}.weight"], self.p[f"{name}.bias"], out))
        return out

    def group_norm(self, name, x):
        c = x.shape[0]
        scale, shift = np.zeros(c, F32), np.zeros(c, F32)
        self.plan.add(ops.group_norm_coeffs(x, GN_GROUPS, self.p[f"{name}.weight"], self.p[f"{name}.bias"], scale,
                                            shift, GN_EPS))
        return scale, shift


def build_plan(cfg: MALUNetConfig, p: dict, h: int, w: int) -> Plan:
    """The Numba plan for an h x w input (multiples of 32)."""
    plan, c = Plan(h, w), cfg.widths
    b = _Builder(cfg, p, plan)
    total = sum(c[:5])
    sums, counts, gates = np.zeros(total), np.zeros(total), np.zeros(total, F32)
    skips, spatial, offset = [], [], 0
    y = plan.input
    for k in range(1, 6):
        block = (b.conv3x3(f"encoder{k}.0", y, c[k - 1]) if k <= 3
                 else b.dga(f"encoder{k}.1", b.ea(f"encoder{k}.0", y), c[k - 1]))
        y = plan.buffer(c[k - 1], block.shape[1] // 2, block.shape[2] // 2)
        plan.add(ops.max_pool2x2(block, *b.group_norm(f"ebn{k}", block), y, ACT_GELU))  # t_k
        s = plan.buffer(1, *y.shape[1:])[0]
        plan.add(ops_sb.spatial_gate(y, p["scab.satt.shared_conv2d.0.weight"], s, None,
                                     float(p["scab.satt.shared_conv2d.0.bias"][0]), SPATIAL_DILATION, reflect=False))
        plan.add(ops_sb.gated_sums(y, s, sums[offset:offset + c[k - 1]]))
        counts[offset:offset + c[k - 1]] = y.shape[1] * y.shape[2]
        skips.append(y)
        spatial.append(s)
        offset += c[k - 1]
    y = b.dga("encoder6.1", b.ea("encoder6.0", y), c[5])
    plan.add(ops.affine_act(y, b.ones[c[5]], b.zeros[c[5]], ACT_GELU))  # [c5, H/32]
    plan.add(ops_sb.channel_gates(sums, counts, p["scab.catt.get_all_att.weight"].reshape(3), p["scab.catt.fc.weight"],
                                  p["scab.catt.fc.bias"], gates))
    gate_k = np.split(gates, np.cumsum(c[:4]))
    for k in range(1, 6):
        skip = skips[5 - k]
        block = (b.ea(f"decoder{k}.1", b.dga(f"decoder{k}.0", y, c[5 - k])) if k <= 3
                 else b.conv3x3(f"decoder{k}.0", y, c[5 - k]))
        scale, shift = b.group_norm(f"dbn{k}", block)
        if k == 1:
            y = block
            plan.add(ops.affine_act(y, scale, shift, ACT_GELU))
        else:
            y = plan.buffer(*skip.shape)
            plan.add(ops.resize_bilinear(block, scale, shift, y, ACT_GELU))
        plan.add(ops_sb.bridge_add(y, skip, gate_k[5 - k], spatial[5 - k], (0.0, 1.0, 1.0, 1.0)))  # + a u + s t
    half = plan.buffer(1, *y.shape[1:])
    plan.add(ops.conv1x1(y, p["final.weight"], p["final.bias"], half))
    plan.output = plan.buffer(1, h, w)
    plan.add(ops.resize_bilinear(half, b.ones[1], b.zeros[1], plan.output))
    return plan


FAMILY = Family(
    name="malunet",
    config_type=MALUNetConfig,
    variants=VARIANTS,
    expected_tensors=expected_tensors,
    fold=fold,
    reference_forward=reference_forward,
    build_plan=build_plan,
    input_multiple=32,  # five 2x poolings
    min_input=32,
    preprocessing=minmax(0.0, 255.0),  # the authors': per image, over all pixels and channels, to [0, 255]
    output={"activation": "sigmoid", "polyp_channel": 0},
    out_channels=lambda cfg: 1,
)
