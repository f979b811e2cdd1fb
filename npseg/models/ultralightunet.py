"""UltraLightUNet (MK-UNet), variants T, S, B (and M, L as configs): shared specs/ULTRALIGHTUNET.md.

A U-Net of multi-kernel inverted residual blocks (MKIR: 1x1 expand, depthwise 1x1 + 3x3 + 5x5
branches summed, channel shuffle, 1x1 project, residual), max-pool downsampling, decoder stages
gated by channel and spatial attention, and grouped attention gates on the skips. One sigmoid
logit. Tensor names are the authors' (MK-UNet's mkunet_network.py).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import preprocessing
from ..ops.activation import relu6_ref as relu6, relu_ref as relu
from ..ops.attention import (attention_gate_add, attention_gate_ref, channel_attention, channel_attention_ref,
                             spatial_attention_ref, spatial_gate)
from ..ops.conv import conv2d_ref
from ..ops.inverted_residual import image_block, multi_kernel_depthwise, multi_kernel_depthwise_ref, pointwise
from ..ops.resize import max_pool2x2_ref as max_pool
from ..ops.steps import max_pool2x2
from ..ops.upsample import up2_bias_relu, up2_ref as up2, up2_relu_head
from ..plan import Plan
from . import Family
from .config import ModelConfig

KERNELS = (1, 3, 5)  # the MKIR's depthwise branches
EXPANSION = 2
CA_RATIOS = (16, 16, 16, 8, 4)  # CA1..CA5
BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class UltraLightUNetConfig(ModelConfig):
    channels: tuple[int, ...] = (16, 32, 64, 96, 160)
    num_classes: int = 1

    def __post_init__(self):
        if len(self.channels) != 5 or any(c % 2 for c in self.channels):
            # five stages; the attention gates' grouped convs take channel pairs
            raise ValueError(f"channels must be 5 even widths, got {list(self.channels)}")


VARIANTS = {name: UltraLightUNetConfig(name=name, channels=c) for name, c in (
    ("ultralightunet-t", (4, 8, 16, 24, 32)),
    ("ultralightunet-s", (8, 16, 32, 48, 80)),
    ("ultralightunet-b", (16, 32, 64, 96, 160)),
    ("ultralightunet-m", (32, 64, 128, 192, 320)),
    ("ultralightunet-l", (64, 128, 256, 384, 512)),
)}


def encoder_widths(cfg: UltraLightUNetConfig) -> list[tuple[int, int]]:
    """(in, out) of encoder1..encoder5."""
    c = cfg.channels
    return [(3, c[0])] + [(c[i], c[i + 1]) for i in range(4)]


def decoder_widths(cfg: UltraLightUNetConfig) -> list[tuple[int, int]]:
    """(in, out) of decoder1..decoder5."""
    c = cfg.channels
    return [(c[4], c[3]), (c[3], c[2]), (c[2], c[1]), (c[1], c[0]), (c[0], c[0])]


def ca_hidden(c: int, i: int) -> int:
    """Hidden width of CA{i+1} on c channels."""
    return max(1, c // CA_RATIOS[i])


def shuffle_groups(cin: int, cout: int) -> int:
    """Groups of the MKIR's channel shuffle: gcd(expanded width, output width)."""
    return math.gcd(EXPANSION * cin, cout)


def _batchnorm(spec, name, c):
    for field in ("weight", "bias", "running_mean", "running_var"):
        spec[f"{name}.{field}"] = (c,)


def _mkir_tensors(spec, name, cin, cout):
    e = EXPANSION * cin
    spec[f"{name}.pconv1.0.weight"] = (e, cin, 1, 1)
    _batchnorm(spec, f"{name}.pconv1.1", e)
    for j, k in enumerate(KERNELS):
        spec[f"{name}.multi_scale_dwconv.dwconvs.{j}.0.weight"] = (e, 1, k, k)
        _batchnorm(spec, f"{name}.multi_scale_dwconv.dwconvs.{j}.1", e)
    spec[f"{name}.pconv2.0.weight"] = (cout, e, 1, 1)
    _batchnorm(spec, f"{name}.pconv2.1", cout)
    if cin != cout:
        spec[f"{name}.conv1x1.weight"] = (cout, cin, 1, 1)


def _gag_tensors(spec, name, c):
    for branch in ("W_g", "W_x"):
        spec[f"{name}.{branch}.0.weight"] = (c // 2, 2, 3, 3)
        spec[f"{name}.{branch}.0.bias"] = (c // 2,)
        _batchnorm(spec, f"{name}.{branch}.1", c // 2)
    spec[f"{name}.psi.0.weight"] = (1, c // 2, 1, 1)
    spec[f"{name}.psi.0.bias"] = (1,)
    _batchnorm(spec, f"{name}.psi.1", 1)


def expected_tensors(cfg: UltraLightUNetConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a weights file with its shape, in the authors' state_dict order."""
    c, k = cfg.channels, cfg.num_classes
    spec: dict[str, tuple[int, ...]] = {}
    for i, (cin, cout) in enumerate(encoder_widths(cfg)):
        _mkir_tensors(spec, f"encoder{i + 1}.0", cin, cout)
    for i, width in enumerate((c[3], c[2], c[1], c[0])):
        _gag_tensors(spec, f"AG{i + 1}", width)
    for i, (cin, cout) in enumerate(decoder_widths(cfg)):
        _mkir_tensors(spec, f"decoder{i + 1}.0", cin, cout)
    for i, width in enumerate((c[4], c[3], c[2], c[1], c[0])):
        h = ca_hidden(width, i)
        spec[f"CA{i + 1}.fc1.weight"] = (h, width, 1, 1)
        spec[f"CA{i + 1}.fc2.weight"] = (width, h, 1, 1)
    spec["SA.conv.weight"] = (1, 2, 7, 7)
    for i, width in enumerate((c[2], c[1], c[0], c[0])):  # out1..out3: deep-supervision heads
        spec[f"out{i + 1}.weight"] = (k, width, 1, 1)
        spec[f"out{i + 1}.bias"] = (k,)
    return spec


# ---- load-time folds -----------------------------------------------------------------------

def _bn_folded(t, conv, bn, bias=None):
    """(weight, bias) of conv `conv` followed by BatchNorm `bn`, folded exactly."""
    scale = t[f"{bn}.weight"] / np.sqrt(t[f"{bn}.running_var"] + BN_EPS)
    b0 = 0.0 if bias is None else t[bias]
    return t[conv] * scale[:, None, None, None], t[f"{bn}.bias"] + (b0 - t[f"{bn}.running_mean"]) * scale


def shuffle_source(e: int, groups: int) -> np.ndarray:
    """For each input column j of the projection applied to the unshuffled sum, the column of the
    authors' weight (which reads the shuffled one): shuffled channel k*g + i is channel i*q + k."""
    q = e // groups
    j = np.arange(e)
    return (j % q) * groups + j // q


def _fold_mkir(t, p, name, cin, cout):
    p[f"{name}.pw1.weight"], p[f"{name}.pw1.bias"] = _bn_folded(t, f"{name}.pconv1.0.weight", f"{name}.pconv1.1")
    for j, k in enumerate(KERNELS):
        branch = f"{name}.multi_scale_dwconv.dwconvs.{j}"
        p[f"{name}.dw{k}.weight"], p[f"{name}.dw{k}.bias"] = _bn_folded(t, f"{branch}.0.weight", f"{branch}.1")
    w2, p[f"{name}.project.bias"] = _bn_folded(t, f"{name}.pconv2.0.weight", f"{name}.pconv2.1")
    w2 = w2[:, shuffle_source(EXPANSION * cin, shuffle_groups(cin, cout))]
    # the residual joins the projection: one 1x1 conv over [s; x] (identity: a unit block)
    residual = t[f"{name}.conv1x1.weight"] if cin != cout else np.eye(cout)[:, :, None, None]
    p[f"{name}.project.weight"] = np.concatenate([w2, residual], axis=1)


def _fold_gate(t, p, name):
    for branch in ("W_g", "W_x"):
        p[f"{name}.{branch}.weight"], p[f"{name}.{branch}.bias"] = _bn_folded(
            t, f"{name}.{branch}.0.weight", f"{name}.{branch}.1", bias=f"{name}.{branch}.0.bias")
    p[f"{name}.psi.weight"], p[f"{name}.psi.bias"] = _bn_folded(
        t, f"{name}.psi.0.weight", f"{name}.psi.1", bias=f"{name}.psi.0.bias")


def fold(cfg: UltraLightUNetConfig, tensors: dict) -> dict:
    """Every BN into its conv, each channel shuffle into the projection's column order, the residual
    into the projection. The deep-supervision heads out1..out3 are dropped (never computed).
    Computed in float64; returned in the tensors' dtype."""
    dtype = tensors["out4.weight"].dtype
    t = {k: np.asarray(v, np.float64) for k, v in tensors.items()}
    p: dict[str, np.ndarray] = {}
    for i, (cin, cout) in enumerate(encoder_widths(cfg)):
        _fold_mkir(t, p, f"encoder{i + 1}.0", cin, cout)
    for i, (cin, cout) in enumerate(decoder_widths(cfg)):
        _fold_mkir(t, p, f"decoder{i + 1}.0", cin, cout)
    for i in range(1, 5):
        _fold_gate(t, p, f"AG{i}")
    for name in [f"CA{i}.fc{j}.weight" for i in range(1, 6) for j in (1, 2)] + ["SA.conv.weight", "out4.weight",
                                                                                 "out4.bias"]:
        p[name] = t[name]
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in p.items()}


# ---- reference forward ---------------------------------------------------------------------

def _conv(p, name, x, padding=0, groups=1):
    return conv2d_ref(x, p[f"{name}.weight"], p[f"{name}.bias"], padding=padding, groups=groups)


def mkir(p, name, x):
    """Multi-kernel inverted residual block, folded: [in, h, w] -> [out, h, w]."""
    e = relu6(_conv(p, f"{name}.pw1", x))  # [E, h, w] expand
    s = multi_kernel_depthwise_ref(e, [p[f"{name}.dw{k}.weight"] for k in KERNELS],
                                   [p[f"{name}.dw{k}.bias"] for k in KERNELS])  # [E, h, w]
    return _conv(p, f"{name}.project", np.concatenate([s, x]))  # [out, h, w] (shuffle and residual folded)


def decoder_stage(p, i, u):
    """CA, SA, the decoder MKIR at u's resolution, then up x2 and ReLU: [in, h, w] -> [out, 2h, 2w]."""
    u = u * channel_attention_ref(u, p[f"CA{i}.fc1.weight"], p[f"CA{i}.fc2.weight"])[:, None, None]  # [in, h, w]
    u = u * spatial_attention_ref(u, p["SA.conv.weight"])  # [in, h, w]
    return relu(up2(mkir(p, f"decoder{i}.0", u)))  # [out, 2h, 2w]


def gated_skip(p, i, u, skip):
    """u + skip * GAG_i(u, skip): [C, h, w]."""
    weights = (p[f"AG{i}.{n}.{f}"] for n in ("W_g", "W_x", "psi") for f in ("weight", "bias"))
    gate = attention_gate_ref(u, skip, *weights)  # [1, h, w]
    return u + skip * gate


def reference_features(cfg: UltraLightUNetConfig, p: dict, x: np.ndarray) -> dict:
    """The named features of the forward (the golden files' taps) and the logits."""
    f = {}
    f["t1"] = max_pool(mkir(p, "encoder1.0", x))  # [c0, H/2, W/2]
    f["t2"] = max_pool(mkir(p, "encoder2.0", f["t1"]))  # [c1, H/4, W/4]
    f["t3"] = max_pool(mkir(p, "encoder3.0", f["t2"]))  # [c2, H/8, W/8]
    f["t4"] = max_pool(mkir(p, "encoder4.0", f["t3"]))  # [c3, H/16, W/16]
    f["b"] = max_pool(mkir(p, "encoder5.0", f["t4"]))  # [c4, H/32, W/32]
    f["d1"] = gated_skip(p, 1, decoder_stage(p, 1, f["b"]), f["t4"])  # [c3, H/16, W/16]
    f["d2"] = gated_skip(p, 2, decoder_stage(p, 2, f["d1"]), f["t3"])  # [c2, H/8, W/8]
    f["d3"] = gated_skip(p, 3, decoder_stage(p, 3, f["d2"]), f["t2"])  # [c1, H/4, W/4]
    f["d4"] = gated_skip(p, 4, decoder_stage(p, 4, f["d3"]), f["t1"])  # [c0, H/2, W/2]
    f["logits"] = _conv(p, "out4", decoder_stage(p, 5, f["d4"]))  # [K, H, W]
    return f


def reference_forward(cfg: UltraLightUNetConfig, p: dict, x: np.ndarray) -> np.ndarray:
    """x [3, H, W] ImageNet-normalised RGB (H, W multiples of 32) -> logits [K, H, W]."""
    return reference_features(cfg, p, x)["logits"]


# ---- fast plan -----------------------------------------------------------------------------

def _dw(p, name):
    return [p[f"{name}.dw{k}.weight"] for k in KERNELS], [p[f"{name}.dw{k}.bias"] for k in KERNELS]


def _mkir_steps(plan, p, name, cat, out, scratch):
    """One MKIR whose input already sits in cat[E:]: expand (1x1) into `scratch`, multi-kernel
    depthwise into cat[:E], then the projection and residual as one 1x1 over cat into `out`,
    without its bias (the step that reads `out` adds it)."""
    e, h, w = p[f"{name}.pw1.weight"].shape[0], cat.shape[1], cat.shape[2]
    expanded = scratch[:e * h * w].reshape(e, h, w)
    plan.add(pointwise(cat[e:], p[f"{name}.pw1.weight"], expanded))
    plan.add(multi_kernel_depthwise(expanded, p[f"{name}.pw1.bias"], *_dw(p, name), cat[:e]))
    plan.add(pointwise(cat, p[f"{name}.project.weight"], out))


def _encoder_steps(plan, cfg, p, h, w, scratch):
    """The five encoder blocks; returns the pooled outputs t1..t4, b. The first block (on the
    image) and its pooling are one kernel; each later block's pooled output is written straight
    into the next block's input slot (cat[E:])."""
    widths = encoder_widths(cfg)
    cats = {i: plan.buffer((EXPANSION + 1) * cin, h >> i, w >> i) for i, (cin, _) in enumerate(widths) if i > 0}
    pooled = [cats[1][EXPANSION * widths[0][1]:]]
    plan.add(image_block(plan.input, p["encoder1.0.pw1.weight"], p["encoder1.0.pw1.bias"], *_dw(p, "encoder1.0"),
                         p["encoder1.0.project.weight"], p["encoder1.0.project.bias"], pooled[0]))
    for i, (cin, cout) in enumerate(widths[1:], start=1):
        name = f"encoder{i + 1}.0"
        y = scratch[1][:cout * (h >> i) * (w >> i)].reshape(cout, h >> i, w >> i)
        _mkir_steps(plan, p, name, cats[i], y, scratch[0])
        t = cats[i + 1][EXPANSION * cout:] if i < 4 else plan.buffer(cout, h >> 5, w >> 5)
        plan.add(max_pool2x2(y, np.ones(cout, np.float32), p[f"{name}.project.bias"], t))  # max, then bias
        pooled.append(t)
    return pooled


def build_plan(cfg: UltraLightUNetConfig, params: dict, h: int, w: int) -> Plan:
    """The float32 plan for an h x w input (multiples of 32)."""
    p = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
    plan = Plan(h, w)
    # (in, out, log2 of the downscale) of every block; one scratch holds each block's expanded
    # map in turn and one its projection output (pages that stay warm)
    blocks = [(cin, cout, i) for i, (cin, cout) in enumerate(encoder_widths(cfg))]
    blocks += [(cin, cout, 5 - i) for i, (cin, cout) in enumerate(decoder_widths(cfg))]
    scratch = (np.zeros(max(EXPANSION * cin * (h >> d) * (w >> d) for cin, _, d in blocks), np.float32),
               np.zeros(max(cout * (h >> d) * (w >> d) for _, cout, d in blocks), np.float32))
    *skips, u = _encoder_steps(plan, cfg, p, h, w, scratch)
    for i, (cin, cout) in enumerate(decoder_widths(cfg)):
        name, (hi, wi) = f"decoder{i + 1}.0", u.shape[1:]
        gate, cat = np.zeros(cin, np.float32), plan.buffer((EXPANSION + 1) * cin, hi, wi)
        y = scratch[1][:cout * hi * wi].reshape(cout, hi, wi)
        plan.add(channel_attention(u, p[f"CA{i + 1}.fc1.weight"], p[f"CA{i + 1}.fc2.weight"], gate))
        plan.add(spatial_gate(u, gate, p["SA.conv.weight"], cat[EXPANSION * cin:]))  # both gates into the input slot
        _mkir_steps(plan, p, name, cat, y, scratch[0])
        if i == 4:  # the last upsampling, its ReLU and the output head in one pass
            plan.output = plan.buffer(cfg.num_classes, h, w)
            plan.add(up2_relu_head(y, p[f"{name}.project.bias"], p["out4.weight"], p["out4.bias"], plan.output))
            break
        u = plan.buffer(cout, 2 * hi, 2 * wi)
        plan.add(up2_bias_relu(y, p[f"{name}.project.bias"], u))
        g = f"AG{i + 1}"
        plan.add(attention_gate_add(u, skips[3 - i], *(p[f"{g}.{n}.{f}"] for n in ("W_g", "W_x", "psi")
                                                        for f in ("weight", "bias"))))
    return plan


def runnable_problems(cfg: UltraLightUNetConfig) -> list[str]:
    if cfg.num_classes != 1:
        return [f"npseg runs one sigmoid polyp logit; this model has {cfg.num_classes} classes"]
    return []


FAMILY = Family(
    name="ultralightunet",
    config_type=UltraLightUNetConfig,
    variants=VARIANTS,
    expected_tensors=expected_tensors,
    fold=fold,
    reference_forward=reference_forward,
    build_plan=build_plan,
    input_multiple=32,
    min_input=32,
    preprocessing=preprocessing.affine(scale=1.0 / 255.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    output={"activation": "sigmoid", "polyp_channel": 0},
    out_channels=lambda cfg: cfg.num_classes,
    runnable_problems=runnable_problems,
)
