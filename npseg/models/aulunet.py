"""AULUNet (Rahman, Jung, Hammond, BMVC 2025): the 29K-parameter adaptive U-Net, as released.

Written from shared specs/AULUNET.md alone (the authors' code carries no licence).
Six widths c0..c5 (5, 10, 15, 25, 35, 60): a 3x3 stem, adaptive-kernel blocks (AKF: two
depthwise 3x3 convs, dilation 1 and 2, blended per channel by a gate from the input's
global average), average-pool down-sampling, a tanh channel gate at the bottleneck
(RGF), bilinear up-sampling and dense sigmoid skip gates (LSG). Input: RGB, per-image
min-max to [0, 255]; output: one logit per pixel (the authors' sigmoid moves to the
output record).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ops import steps as ops
from ..ops._jit import ACT_RELU
from ..ops.activation import relu_ref as relu
from ..ops.channel_gate import residual_gate, residual_gate_ref
from ..ops.conv import conv2d_ref
from ..ops.depthwise import PAD as AKF_PAD, akf, akf_blend_ref
from ..ops.norm import batchnorm_scale_shift, fold_scale_shift_after_conv
from ..ops.pool import avg_pool2x2, avg_pool2x2_ref, padded_size
from ..ops.resize import resize_bilinear_ac_ref
from ..ops.skip_gate import skip_gate, skip_gate_ref
from ..plan import Plan
from ..preprocessing import minmax
from . import Family
from .config import ModelConfig

BN_EPS = 1e-5
F32 = np.float32
STAGES = 6  # widths c0..c5: five 2x poolings, so H and W are multiples of 32


@dataclass(frozen=True)
class AULUNetConfig(ModelConfig):
    """channels c0..c5 (c5 the bottleneck); num_classes logit channels (npseg runs 1)."""

    channels: tuple[int, ...] = (5, 10, 15, 25, 35, 60)
    num_classes: int = 1

    def __post_init__(self):
        if len(self.channels) != STAGES:
            raise ValueError(f"channels must be {STAGES} widths c0..c5, got {self.channels}")


VARIANTS = {"aulunet": AULUNetConfig(name="aulunet")}


def akf_names(cfg: AULUNetConfig) -> list[tuple[str, int]]:
    """(module name, width) of every AKF block, in registration order."""
    c = cfg.channels
    encoder = [("enc0_akfb", c[0])] + [(f"enc{k}_akfb", c[k - 1]) for k in range(1, STAGES)]
    return encoder + [(f"dec{k}_akfb", c[k]) for k in range(STAGES - 2, -1, -1)]


def expected_tensors(cfg: AULUNetConfig) -> dict[str, tuple[int, ...]]:
    """The authors' state_dict names and shapes, in their order, without num_batches_tracked."""
    c = cfg.channels
    spec: dict[str, tuple[int, ...]] = {}

    def bn(name, n):
        spec.update({f"{name}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")})

    def akf(name, n):
        spec.update({f"{name}.dw_local.weight": (n, 1, 3, 3), f"{name}.dw_dilated.weight": (n, 1, 3, 3),
                     f"{name}.gate_conv.weight": (n, n, 1, 1), f"{name}.gate_conv.bias": (n,),
                     f"{name}.fuse_conv.conv.weight": (n, n, 1, 1)})
        bn(f"{name}.fuse_conv.bn", n)

    def point(name, n_in, n_out):
        spec[f"{name}.conv.weight"] = (n_out, n_in, 1, 1)
        bn(f"{name}.bn", n_out)

    spec["enc0_conv.0.weight"] = (c[0], 3, 3, 3)
    bn("enc0_conv.1", c[0])
    akf("enc0_akfb", c[0])
    for k in range(1, STAGES):
        akf(f"enc{k}_akfb", c[k - 1])
        point(f"enc{k}_proj", c[k - 1], c[k])
    spec["bottleneck_rgfb.conv.weight"] = (c[5], c[5], 1, 1)
    for k in range(STAGES - 2, -1, -1):
        point(f"up{k}.proj", c[k + 1], c[k])
        point(f"skip{k}", 2 * c[k], c[k])
        akf(f"dec{k}_akfb", c[k])
    spec["head.0.weight"], spec["head.0.bias"] = (cfg.num_classes, c[0], 1, 1), (cfg.num_classes,)
    return spec


def _conv_bn_pairs(cfg: AULUNetConfig) -> list[tuple[str, str]]:
    """(conv, the BN right after it) of all 27 BatchNorms; every one folds exactly into its conv."""
    pairs = [("enc0_conv.0", "enc0_conv.1")] + [(f"{a}.fuse_conv.conv", f"{a}.fuse_conv.bn") for a, _ in akf_names(cfg)]
    pairs += [(f"enc{k}_proj.conv", f"enc{k}_proj.bn") for k in range(1, STAGES)]
    return pairs + [(f"{m}.conv", f"{m}.bn") for k in range(STAGES - 1) for m in (f"up{k}.proj", f"skip{k}")]


def fold(cfg: AULUNetConfig, tensors: dict) -> dict:
    """Every BatchNorm folded into the bias-free conv before it: `<conv>.weight` scaled per output
    channel and a new `<conv>.bias`; the BN tensors are dropped. The other tensors pass as they
    are (the AKF blend depends on the frame: the engine folds it per frame)."""
    dtype = np.result_type(*tensors.values())
    p = {k: np.asarray(v, dtype) for k, v in tensors.items()}
    for conv, bn in _conv_bn_pairs(cfg):
        scale, shift = batchnorm_scale_shift(*(p.pop(f"{bn}.{k}").astype(np.float64)
                                               for k in ("weight", "bias", "running_mean", "running_var")), BN_EPS)
        w = p[f"{conv}.weight"].astype(np.float64)
        w, b = fold_scale_shift_after_conv(w, np.zeros(w.shape[0]), scale, shift)
        p[f"{conv}.weight"], p[f"{conv}.bias"] = w.astype(dtype), b.astype(dtype)
    return p


def _point(p, name, x):
    """A folded pointwise conv (+ bias) of [Cin, h, w] -> [Cout, h, w]."""
    return conv2d_ref(x, p[f"{name}.weight"], p[f"{name}.bias"])


def _akf(p, name, x):
    """Adaptive kernel fusion: gated blend of two depthwise 3x3 convs, then PW + BN + ReLU."""
    f = akf_blend_ref(x, p[f"{name}.dw_local.weight"], p[f"{name}.dw_dilated.weight"],
                      p[f"{name}.gate_conv.weight"], p[f"{name}.gate_conv.bias"])  # [C, h, w]
    return relu(_point(p, f"{name}.fuse_conv.conv", f))  # [C, h, w]


def _up2(x):
    return resize_bilinear_ac_ref(x, 2 * x.shape[1], 2 * x.shape[2])


def reference_features(cfg: AULUNetConfig, p: dict, x: np.ndarray) -> dict:
    """Every named feature of the forward of x [3, H, W] (H, W multiples of 32): the encoder
    outputs e0..e5, the bottleneck b, the decoder outputs d4..d0 and the logits."""
    f = {}
    stem = relu(conv2d_ref(x, p["enc0_conv.0.weight"], p["enc0_conv.0.bias"], padding=1))  # [c0, H, W]
    f["e0"] = _akf(p, "enc0_akfb", stem)  # [c0, H, W]
    for k in range(1, STAGES):
        pooled = avg_pool2x2_ref(f[f"e{k - 1}"])  # [c(k-1), H/2^k, W/2^k]
        f[f"e{k}"] = relu(_point(p, f"enc{k}_proj.conv", _akf(p, f"enc{k}_akfb", pooled)))  # [ck, H/2^k, W/2^k]
    f["b"] = d = residual_gate_ref(f["e5"], p["bottleneck_rgfb.conv.weight"])  # [c5, H/32, W/32]
    for k in range(STAGES - 2, -1, -1):
        up = relu(_point(p, f"up{k}.proj.conv", _up2(d)))  # [ck, H/2^k, W/2^k]: upsample, then project
        gated = skip_gate_ref(up, f[f"e{k}"], p[f"skip{k}.conv.weight"], p[f"skip{k}.conv.bias"])  # [ck, ...]
        f[f"d{k}"] = d = _akf(p, f"dec{k}_akfb", gated)  # [ck, H/2^k, W/2^k]
    f["logits"] = _point(p, "head.0", d)  # [num_classes, H, W], before the authors' sigmoid
    return f


def reference_forward(cfg: AULUNetConfig, p: dict, x: np.ndarray) -> np.ndarray:
    """x [3, H, W] min-max normalised to [0, 255] -> logits [num_classes, H, W]."""
    return reference_features(cfg, p, x)["logits"]


def runnable_problems(cfg: AULUNetConfig) -> list[str]:
    return [] if cfg.num_classes == 1 else [f"npseg runs one logit channel (sigmoid), not {cfg.num_classes}"]


def _weight(p, name):
    return np.ascontiguousarray(p[name], np.float32)


def _akf_step(p, name, src, pad, out, then=None, relu=False):
    """The AKF of `src` (a flat bordered buffer), optionally fused with the pointwise conv `then`."""
    _, h, w = out.shape
    extra = {} if then is None else {"w2": _weight(p, f"{then}.weight"), "b2": _weight(p, f"{then}.bias"),
                                     "relu2": relu}
    return akf(src, pad, h, w, p[f"{name}.dw_local.weight"], p[f"{name}.dw_dilated.weight"],
               p[f"{name}.gate_conv.weight"], p[f"{name}.gate_conv.bias"],
               _weight(p, f"{name}.fuse_conv.conv.weight"), _weight(p, f"{name}.fuse_conv.conv.bias"), out, **extra)


def build_plan(cfg: AULUNetConfig, p: dict, h: int, w: int) -> Plan:
    """The fast float32 plan for an h x w input (multiples of 32). Every AKF input lives in a flat
    buffer with a zero border of 2 that its producer (stem, pool, skip gate) writes into; each
    AKF runs fused with the pointwise conv after it (encoder: the stage's point conv; decoder:
    the next UpProj's projection, done before its upsampling, which it commutes with; last: the
    head). `plan.features` holds the encoder outputs e0..e5 and the bottleneck b."""
    c, plan = cfg.channels, Plan(h, w)
    sizes = [(h >> k, w >> k) for k in range(STAGES)]
    akf_in = [np.zeros((c[k], padded_size(*sizes[k], AKF_PAD)), F32) for k in range(STAGES - 1)]
    enc = [plan.buffer(c[k], *sizes[k]) for k in range(STAGES)]
    stem = plan.buffer(c[0], h, w)
    plan.add(ops.conv3x3(plan.input, _weight(p, "enc0_conv.0.weight"), _weight(p, "enc0_conv.0.bias"), stem,
                         act=ACT_RELU, out_padded=akf_in[0], out_pad_width=AKF_PAD))
    plan.add(_akf_step(p, "enc0_akfb", akf_in[0], AKF_PAD, enc[0]))
    for k in range(1, STAGES):
        pooled = np.zeros((c[k - 1], padded_size(*sizes[k], AKF_PAD)), F32)
        plan.add(avg_pool2x2(enc[k - 1], pooled, AKF_PAD))
        plan.add(_akf_step(p, f"enc{k}_akfb", pooled, AKF_PAD, enc[k], then=f"enc{k}_proj.conv", relu=True))
    plan.add(residual_gate(enc[5], p["bottleneck_rgfb.conv.weight"]))
    projected = plan.buffer(c[4], *sizes[5])
    plan.add(ops.conv1x1(enc[5], _weight(p, "up4.proj.conv.weight"), _weight(p, "up4.proj.conv.bias"), projected))
    for k in range(STAGES - 2, -1, -1):
        up = plan.buffer(c[k], *sizes[k])
        plan.add(ops.resize_bilinear(projected, np.ones(c[k], F32), np.zeros(c[k], F32), up, act=ACT_RELU))
        plan.add(skip_gate(up, enc[k], p[f"skip{k}.conv.weight"], _weight(p, f"skip{k}.conv.bias"), akf_in[k], AKF_PAD))
        then = f"up{k - 1}.proj.conv" if k > 0 else "head.0"
        projected = plan.buffer(c[k - 1] if k > 0 else cfg.num_classes, *sizes[k])
        plan.add(_akf_step(p, f"dec{k}_akfb", akf_in[k], AKF_PAD, projected, then=then))
    plan.output = projected
    plan.features = {**{f"e{k}": enc[k] for k in range(STAGES)}, "b": enc[5]}
    return plan


FAMILY = Family(
    name="aulunet",
    config_type=AULUNetConfig,
    variants=VARIANTS,
    expected_tensors=expected_tensors,
    fold=fold,
    reference_forward=reference_forward,
    build_plan=build_plan,
    input_multiple=32,
    min_input=32,
    preprocessing=minmax(0.0, 255.0),
    output={"activation": "sigmoid", "polyp_channel": 0},
    out_channels=lambda cfg: cfg.num_classes,
    runnable_problems=runnable_problems,
)
