"""MicroAUNet (Wang et al., arXiv:2511.01143): the distilled ultra-light polyp U-Net, as released.

The released network (the authors' class and training config) has widths
(8, 16, 24, 32, 48, 64) and 84,281 parameters; the paper's "0.0249 M" is the same
graph at half width (24,881). Input: RGB, per-image min-max to [0, 255]; output:
one logit per pixel (the authors' sigmoid moves to the output record).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ops import dsconv as ops_ds
from ..ops import gated_pointwise as ops_gp
from ..ops import skip_bridge as ops_sb
from ..ops import steps as ops
from ..ops._jit import ACT_GELU, ACT_NONE
from ..ops.activation import gelu_ref
from ..ops.conv import conv2d_ref
from ..ops.dsconv import EPILOGUE_GELU, EPILOGUE_RELU, EPILOGUE_RESIDUAL_GELU, depthwise_ref, dsconv_ref
from ..ops.gated_pointwise import gn_pointwise_ref, spatial_gate_pointwise_ref
from ..ops.norm import batchnorm_scale_shift, fold_scale_shift_after_conv, group_norm_ref
from ..ops.pool_extremes import pool_extremes_apply
from ..ops.resize import max_pool2x2_ref, resize_bilinear_ac_ref
from ..ops.skip_bridge import bridge_ref, channel_gates_ref, spatial_gate_ref
from ..plan import F32, Plan
from ..preprocessing import minmax
from . import Family
from .config import ModelConfig

GN_GROUPS = 4
GN_EPS = BN_EPS = 1e-5
# intermediates of reference_forward / the plan (the golden files' taps): the encoder skips t1..t5,
# the bridge's channel gates and bridged t2, the bottleneck before its GELU, decoder blocks 2..5
# before their GroupNorm, the head's logits at H/2
TAPS = ("t1", "t2", "t3", "t4", "t5", "catt", "bridged_t2", "enc6", "dec2", "dec3", "dec4", "dec5", "final")


@dataclass(frozen=True)
class SixWidthsConfig(ModelConfig):
    """widths c0..c5 (each a multiple of 4): c0..c4 the five encoder skips, c5 the bottleneck.
    The base of MicroAUNet's and its MALUNet teacher's configs (sibling types: a file's family is
    its config's type)."""

    widths: tuple[int, ...] = (8, 16, 24, 32, 48, 64)

    def __post_init__(self):
        if len(self.widths) != 6 or any(c % GN_GROUPS for c in self.widths):
            raise ValueError(f"widths must be 6 multiples of {GN_GROUPS}, got {self.widths}")


@dataclass(frozen=True)
class MicroAUNetConfig(SixWidthsConfig):
    pass


VARIANTS = {"microaunet": MicroAUNetConfig(name="microaunet")}


# ---- tensor spec: the authors' state_dict names and shapes ---------------------------------
def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")}


def _dsconv_spec(prefix: str, cin: int, cout: int) -> dict:
    return {f"{prefix}.depthwise.weight": (cin, 1, 3, 3), **_bn(f"{prefix}.bn1", cin),
            f"{prefix}.pointwise.weight": (cout, cin, 1, 1), **_bn(f"{prefix}.bn2", cout)}


def _dwd_spec(prefix: str, c: int) -> dict:
    return {**_dsconv_spec(f"{prefix}.conv1", c, c), **_dsconv_spec(f"{prefix}.conv2", c, c)}


def _dwc_spec(prefix: str, cin: int, cout: int, k: int) -> dict:
    return {f"{prefix}.net.0.weight": (cin, 1, k, k), f"{prefix}.net.0.bias": (cin,), f"{prefix}.net.1.weight": (cin,),
            f"{prefix}.net.1.bias": (cin,), f"{prefix}.net.2.weight": (cout, cin, 1, 1),
            f"{prefix}.net.2.bias": (cout,)}


def _ldga_spec(prefix: str, cin: int, cout: int) -> dict:
    return {**_dwc_spec(f"{prefix}.dwconv", cin, cin, 3), f"{prefix}.spatial_attention.0.weight": (1, cin, 1, 1),
            **_dwc_spec(f"{prefix}.output_conv", cin, cout, 1), **_dwc_spec(f"{prefix}.residual_conv", cin, cout, 1)}


def expected_tensors(cfg: MicroAUNetConfig) -> dict:
    """{name: shape} of a weights file, in the authors' registration order."""
    c = cfg.widths
    total = sum(c[:5])
    spec = _dsconv_spec("encoder1", 3, c[0])
    for k in range(1, 6):
        spec |= _dwd_spec(f"encoder{k + 1}.0", c[k - 1]) | _ldga_spec(f"encoder{k + 1}.1", c[k - 1], c[k])
    spec |= {"lscab.alpha": (), "lscab.beta": (), "lscab.catt.get_all_att.weight": (1, 1, 3),
             "lscab.catt.shared_fc.weight": (total, total), "lscab.catt.shared_fc.bias": (total,),
             "lscab.satt.shared_conv2d.0.weight": (1, 2, 7, 7)}
    for k in range(1, 6):
        spec |= _ldga_spec(f"decoder{k}.0", c[6 - k], c[5 - k]) | _dwd_spec(f"decoder{k}.1", c[5 - k])
    for prefix, widths in (("ebn", c[:5]), ("dbn", c[4::-1])):
        for k, width in enumerate(widths, 1):
            spec |= {f"{prefix}{k}.weight": (width,), f"{prefix}{k}.bias": (width,)}
    return spec | {"final.weight": (1, c[0], 1, 1), "final.bias": (1,)}


# ---- exact load-time folds -------------------------------------------------------------------
def fold(cfg: MicroAUNetConfig, tensors: dict) -> dict:
    """Every BatchNorm into the bias-free conv before it (DSConv: depthwise, pointwise get a bias),
    and every DWC's GroupNorm affine into the 1x1 conv right after it (net.2; net.1 disappears).
    The other GroupNorms (ebn, dbn) stay: pooling and upsampling + GELU follow them."""
    p = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    for name in [k[: -len(".bn1.weight")] for k in p if k.endswith(".bn1.weight")]:
        for conv, bn in (("depthwise", "bn1"), ("pointwise", "bn2")):
            scale, shift = batchnorm_scale_shift(*(p.pop(f"{name}.{bn}.{k}") for k in
                                                   ("weight", "bias", "running_mean", "running_var")), eps=BN_EPS)
            w = p[f"{name}.{conv}.weight"]
            p[f"{name}.{conv}.weight"], p[f"{name}.{conv}.bias"] = fold_scale_shift_after_conv(w, np.zeros(len(w)),
                                                                                             scale, shift)
    for name in [k[: -len(".net.1.weight")] for k in p if k.endswith(".net.1.weight")]:
        gamma, beta = p.pop(f"{name}.net.1.weight"), p.pop(f"{name}.net.1.bias")
        w, b = p[f"{name}.net.2.weight"], p[f"{name}.net.2.bias"]
        p[f"{name}.net.2.weight"] = w * gamma[None, :, None, None]
        p[f"{name}.net.2.bias"] = b + w[:, :, 0, 0] @ beta
    return {k: v.astype(np.float32) for k, v in p.items()}


# ---- the reference forward: readable NumPy, float64 --------------------------------------------
def _dsconv(p, name, x, dilation, epilogue=EPILOGUE_RELU, residual=None):
    return dsconv_ref(x, p[f"{name}.depthwise.weight"], p[f"{name}.depthwise.bias"], p[f"{name}.pointwise.weight"],
                      p[f"{name}.pointwise.bias"], dilation, epilogue, residual)


def _dwd(p, name, x):
    y = _dsconv(p, f"{name}.conv1", x, 2, EPILOGUE_GELU)  # GELU(DSConv_d2(x))
    return _dsconv(p, f"{name}.conv2", y, 1, EPILOGUE_RESIDUAL_GELU, x)  # GELU(DSConv_d1(y) + x)


def _dwc(p, name, x):
    """PW(GN(depthwise k x k + b)) for k = 3; for k = 1 the depthwise conv is a per-channel affine."""
    w, b = p[f"{name}.net.0.weight"], p[f"{name}.net.0.bias"]
    if w.shape[2] == 3:
        return gn_pointwise_ref(depthwise_ref(x, w, b), GN_GROUPS, p[f"{name}.net.2.weight"], p[f"{name}.net.2.bias"])
    return gn_pointwise_ref(x, GN_GROUPS, p[f"{name}.net.2.weight"], p[f"{name}.net.2.bias"], w.reshape(-1), b)


def _ldga(p, name, x):
    u = _dwc(p, f"{name}.dwconv", x)  # [C, h, w]
    y = spatial_gate_pointwise_ref(u, p[f"{name}.spatial_attention.0.weight"])  # [C, h, w] u * sigmoid(wg . u)
    return _dwc(p, f"{name}.output_conv", y) + _dwc(p, f"{name}.residual_conv", x)  # [C', h, w]


def _gn(p, name, x):
    return group_norm_ref(x, GN_GROUPS, p[f"{name}.weight"], p[f"{name}.bias"])


def _up2(x):
    return resize_bilinear_ac_ref(x, 2 * x.shape[1], 2 * x.shape[2])


def reference_forward(cfg: MicroAUNetConfig, p: dict, x: np.ndarray, taps: dict | None = None) -> np.ndarray:
    """x [3, H, W] RGB, min-max scaled to [0, 255] (H, W multiples of 32, at least 128) -> logits [1, H, W].
    `taps`, a dict, receives the intermediates the authors' golden files hold (TAPS)."""
    taps = {} if taps is None else taps
    skips = []
    y = _dsconv(p, "encoder1", x, 1)  # [c0, H, W]
    for k in range(1, 6):
        if k > 1:
            y = _ldga(p, f"encoder{k}.1", _dwd(p, f"encoder{k}.0", y))  # [c_{k-1}, H/2^(k-1)]
        y = gelu_ref(max_pool2x2_ref(_gn(p, f"ebn{k}", y)))  # t_k [c_{k-1}, H/2^k], pool before GELU
        skips.append(y)
    taps["enc6"] = _ldga(p, "encoder6.1", _dwd(p, "encoder6.0", y))  # [c5, H/32] from the un-bridged t5
    b = gelu_ref(taps["enc6"])

    a = channel_gates_ref(skips, p["lscab.catt.get_all_att.weight"].reshape(3), p["lscab.catt.shared_fc.weight"],
                          p["lscab.catt.shared_fc.bias"])  # [S] channel gates of all five skips
    gates = np.split(a, np.cumsum(cfg.widths[:4]))  # five [c_k]
    bridged = [bridge_ref(t, g, spatial_gate_ref(t, p["lscab.satt.shared_conv2d.0.weight"]), p["lscab.alpha"],
                          p["lscab.beta"]) for t, g in zip(skips, gates)]  # t'_k = t_k (1 + alpha a_k + beta s_k)
    taps.update({f"t{k}": t for k, t in enumerate(skips, 1)}, catt=a, bridged_t2=bridged[1])

    y = gelu_ref(_gn(p, "dbn1", _dwd(p, "decoder1.1", _ldga(p, "decoder1.0", b)))) + bridged[4]  # [c4, H/32]
    for k in range(2, 6):
        y = taps[f"dec{k}"] = _dwd(p, f"decoder{k}.1", _ldga(p, f"decoder{k}.0", y))  # [c_{5-k}, H/2^(7-k)]
        y = gelu_ref(_up2(_gn(p, f"dbn{k}", y))) + bridged[5 - k]  # [c_{5-k}, H/2^(6-k)]
    taps["final"] = conv2d_ref(y, p["final.weight"], p["final.bias"])  # [1, H/2, W/2]
    return _up2(taps["final"])  # [1, H, W] logits, upsampled before the sigmoid


# ---- the fast plan: float32 Numba steps into preallocated buffers ------------------------------
class _Builder:
    """Buffers and steps of one plan; every GroupNorm is a per-channel affine computed per frame
    from float64 sums that the producer of its input accumulated (no statistics passes)."""

    def __init__(self, cfg: MicroAUNetConfig, p: dict, plan: Plan):
        self.p, self.plan = p, plan
        self.ones = {c: np.ones(c, F32) for c in (*cfg.widths, 1)}
        self.zeros = {c: np.zeros(c, F32) for c in self.ones}

    @staticmethod
    def stats(c: int):
        """A float64 [C, 2] buffer a kernel fills with per-channel sums and sums of squares."""
        return np.zeros((c, 2), np.float64)

    def dsconv(self, name, x, dilation, epilogue, residual=None, stats=None):
        p, out = self.p, self.plan.buffer(self.p[f"{name}.pointwise.weight"].shape[0], *x.shape[1:])
        self.plan.add(ops_ds.dsconv(x, p[f"{name}.depthwise.weight"], p[f"{name}.depthwise.bias"],
                                    p[f"{name}.pointwise.weight"], p[f"{name}.pointwise.bias"], out, dilation,
                                    epilogue, residual, stats))
        return out

    def dwd(self, name, x, stats):
        y = self.dsconv(f"{name}.conv1", x, 2, EPILOGUE_GELU)
        return self.dsconv(f"{name}.conv2", y, 1, EPILOGUE_RESIDUAL_GELU, x, stats)

    def gn_affine(self, stats, count, pre_scale, pre_shift, gamma=None, beta=None):
        c = stats.shape[0]
        scale, shift = np.zeros(c, F32), np.zeros(c, F32)
        gamma = self.ones[c] if gamma is None else gamma
        beta = self.zeros[c] if beta is None else beta
        self.plan.add(ops_gp.gn_affine(stats, count, GN_GROUPS, pre_scale, pre_shift, gamma, beta, scale, shift,
                                       GN_EPS))
        return scale, shift

    def ldga(self, name, x, x_stats, act=ACT_NONE, out_stats=None, pooled=False):
        """LDGA(x); x_stats: the float64 sums of x (its producer's). pooled: return the (max, min) of
        the output's 2x2 windows instead of the output (see pool_extremes)."""
        p, c, count = self.p, x.shape[0], x.shape[1] * x.shape[2]
        v, v_stats = self.plan.buffer(*x.shape), self.stats(c)
        self.plan.add(ops_ds.depthwise(x, p[f"{name}.dwconv.net.0.weight"], p[f"{name}.dwconv.net.0.bias"], v,
                                          stats=v_stats))
        s1, t1 = self.gn_affine(v_stats, count, self.ones[c], self.zeros[c])
        y, y_stats = self.plan.buffer(*x.shape), self.stats(c)
        self.plan.add(ops_gp.gate_pointwise(v, s1, t1, p[f"{name}.dwconv.net.2.weight"], p[f"{name}.dwconv.net.2.bias"],
                                            p[f"{name}.spatial_attention.0.weight"], y, y_stats))
        out_w, res_w = f"{name}.output_conv.net.", f"{name}.residual_conv.net."
        sy, ty = self.gn_affine(y_stats, count, p[out_w + "0.weight"].reshape(c), p[out_w + "0.bias"])
        sx, tx = self.gn_affine(x_stats, count, p[res_w + "0.weight"].reshape(c), p[res_w + "0.bias"])
        cout, (h, w) = p[out_w + "2.weight"].shape[0], x.shape[1:]
        out = (self.plan.buffer(cout, h // 2, w // 2), self.plan.buffer(cout, h // 2, w // 2)) if pooled else None
        out_map = None if pooled else self.plan.buffer(cout, h, w)
        self.plan.add(ops_gp.dual_pointwise(y, x, sy, ty, sx, tx, p[out_w + "2.weight"], p[res_w + "2.weight"],
                                            p[out_w + "2.bias"] + p[res_w + "2.bias"], out_map, act, out_stats, out))
        return out if pooled else out_map

    def gn_pool_gelu(self, name, pooled, stats):
        """GELU(maxpool(GN(x))) from the (max, min) of x's 2x2 windows and x's sums (see pool_extremes)."""
        c, h, w = pooled[0].shape
        scale, shift = self.gn_affine(stats, 4 * h * w, self.ones[c], self.zeros[c], self.p[f"{name}.weight"],
                                      self.p[f"{name}.bias"])
        out = self.plan.buffer(c, h, w)
        self.plan.add(pool_extremes_apply(*pooled, scale, shift, out, ACT_GELU))
        return out


def _encoder(b: _Builder, cfg: MicroAUNetConfig, sums, counts):
    """The encoder's steps: (skips t1..t5, their spatial gates [h, w], bottleneck, its sums). On the
    way, sums / counts receive every skip channel's float64 sum and size (the channel gates')."""
    p, plan, (h, w) = b.p, b.plan, b.plan.input.shape[1:]
    skips, spatial, offset = [], [], 0
    stats = b.stats(cfg.widths[0])
    # the stem's [c0, H, W] output, the largest map, is never stored: only its 2x2 windows' max and min
    y = (plan.buffer(cfg.widths[0], h // 2, w // 2), plan.buffer(cfg.widths[0], h // 2, w // 2))
    plan.add(ops_ds.dsconv(plan.input, p["encoder1.depthwise.weight"], p["encoder1.depthwise.bias"],
                           p["encoder1.pointwise.weight"], p["encoder1.pointwise.bias"], None, 1, EPILOGUE_RELU,
                           stats=stats, pooled=y))
    for k in range(1, 6):
        if k > 1:
            x_stats = b.stats(y.shape[0])
            x = b.dwd(f"encoder{k}.0", y, x_stats)  # [c_{k-2}, H/2^(k-1)]
            stats = b.stats(cfg.widths[k - 1])
            y = b.ldga(f"encoder{k}.1", x, x_stats, out_stats=stats, pooled=True)  # [c_{k-1}, H/2^(k-1)], pooled
        y = b.gn_pool_gelu(f"ebn{k}", y, stats)  # t_k [c_{k-1}, H/2^k]
        s, c = plan.buffer(1, *y.shape[1:])[0], y.shape[0]
        plan.add(ops_sb.spatial_gate(y, p["lscab.satt.shared_conv2d.0.weight"], s, sums[offset:offset + c]))
        counts[offset:offset + c] = y.shape[1] * y.shape[2]
        skips.append(y)
        spatial.append(s)
        offset += c
    x_stats, y_stats = b.stats(y.shape[0]), b.stats(cfg.widths[5])
    y = b.ldga("encoder6.1", b.dwd("encoder6.0", y, x_stats), x_stats, ACT_GELU, y_stats)  # [c5, H/32]
    return skips, spatial, y, y_stats


def build_plan(cfg: MicroAUNetConfig, p: dict, h: int, w: int) -> Plan:
    """The Numba plan for an h x w input (multiples of 32, at least 128). `plan.taps` maps the
    TAPS the plan stores to their buffers (valid after run())."""
    plan = Plan(h, w)
    b = _Builder(cfg, p, plan)
    total = sum(cfg.widths[:5])
    sums, counts, gates = np.zeros(total, np.float64), np.zeros(total, np.float64), np.zeros(total, F32)
    skips, spatial, y, y_stats = _encoder(b, cfg, sums, counts)
    plan.add(ops_sb.channel_gates(sums, counts, p["lscab.catt.get_all_att.weight"].reshape(3),
                                  p["lscab.catt.shared_fc.weight"], p["lscab.catt.shared_fc.bias"], gates))
    gate_k = np.split(gates, np.cumsum(cfg.widths[:4]))
    coeffs = (1.0, float(p["lscab.alpha"]), float(p["lscab.beta"]), 0.0)  # t (1 + alpha a + beta s)
    taps = {f"t{k}": t for k, t in enumerate(skips, 1)} | {"catt": gates}
    for k in range(1, 6):
        skip = skips[5 - k]
        x_stats = b.stats(skip.shape[0])
        dec = b.dwd(f"decoder{k}.1", b.ldga(f"decoder{k}.0", y, y_stats), x_stats)  # [c_{5-k}, H/2^(6-k)] or H/32
        taps[f"dec{k}"] = dec
        scale, shift = b.gn_affine(x_stats, dec.shape[1] * dec.shape[2], b.ones[dec.shape[0]], b.zeros[dec.shape[0]],
                                   p[f"dbn{k}.weight"], p[f"dbn{k}.bias"])
        if k == 1:
            y = dec
            plan.add(ops.affine_act(y, scale, shift, ACT_GELU))
        else:
            y = plan.buffer(*skip.shape)
            plan.add(ops.resize_bilinear(dec, scale, shift, y, ACT_GELU))
        y_stats = b.stats(y.shape[0]) if k < 5 else None
        plan.add(ops_sb.bridge_add(y, skip, gate_k[5 - k], spatial[5 - k], coeffs, y_stats))
    half = taps["final"] = plan.buffer(1, *y.shape[1:])
    plan.add(ops.conv1x1(y, p["final.weight"], p["final.bias"], half))
    plan.output = plan.buffer(1, h, w)
    plan.add(ops.resize_bilinear(half, b.ones[1], b.zeros[1], plan.output))
    plan.taps = {k: v for k, v in taps.items() if k != "dec1"}
    return plan


FAMILY = Family(
    name="microaunet",
    config_type=MicroAUNetConfig,
    variants=VARIANTS,
    expected_tensors=expected_tensors,
    fold=fold,
    reference_forward=reference_forward,
    build_plan=build_plan,
    input_multiple=32,  # five 2x poolings
    min_input=128,  # the bridge's reflect padding of 3 needs the H/32 skip to be at least 4
    preprocessing=minmax(0.0, 255.0),  # the authors': per image, over all pixels and channels, to [0, 255]
    output={"activation": "sigmoid", "polyp_channel": 0},
    out_channels=lambda cfg: 1,
)
