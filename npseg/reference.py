"""The reference forward pass of UltraSeg in plain NumPy, top to bottom.

Readable first: every line is one step of shared ARCHITECTURE.md's graph and
carries the shape it produces (one image, channels first). The Numba backend
must agree with it; it in turn agrees with the torch model.
"""
from __future__ import annotations

import numpy as np

from .config import UltraSegConfig
from .ops.activation import gelu_ref as gelu, relu_ref as relu, sigmoid_ref as sigmoid, softmax_channels_ref
from .ops.conv import conv2d_ref
from .ops.conv1x1 import conv1x1_ref
from .ops.norm import group_norm_ref, layer_norm_cf_ref
from .ops.resize import max_pool2x2_ref, resize_bilinear_ac_ref as resize

GN_GROUPS = 4


def conv(p, name, x, padding=0, dilation=1, stride=1, groups=1):
    w, b = p[f"{name}.weight"], p[f"{name}.bias"]
    if w.shape[2] == 1 and groups == 1:
        return conv1x1_ref(x, w, b)
    return conv2d_ref(x, w, b, padding=padding, dilation=dilation, stride=stride, groups=groups)


def gn(p, name, x):
    return group_norm_ref(x, GN_GROUPS, p[f"{name}.weight"], p[f"{name}.bias"])


def dw_gelu_pw(p, name, x):
    """Depthwise 3x3 -> GELU -> 1x1 (GSA's conv_i and ldw)."""
    x = conv(p, f"{name}.0", x, padding=1, groups=x.shape[0])
    return conv(p, f"{name}.2", gelu(x))


def gsa_gates(p, name, h, w):
    """GSA's four spatial gates [q,h,w]; they depend on the feature size only, so an engine caches them."""
    return [dw_gelu_pw(p, f"{name}.conv{i}", resize(p[f"{name}.share_space{i}"][0], h, w)) for i in range(1, 5)]


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
        adapted = conv(p, f"{name}.feature_adapter.2", relu(conv(p, f"{name}.feature_adapter.0", x)))
    out = adapted + skip + p[f"{name}.region_weight"] * region_prob * skip
    if boundary_prob is not None:
        out = out + p[f"{name}.boundary_weight"] * boundary_prob * skip
    return out


def gate_head(p, name, y):
    b = sigmoid(conv(p, f"{name}.conv1", y))  # [1, h, w] boundary probability
    r = sigmoid(conv(p, f"{name}.conv2", y))  # [1, h, w] region probability
    return y + y * b + y * r, r, b


def up2(x):
    return resize(x, 2 * x.shape[1], 2 * x.shape[2])


def forward(cfg: UltraSegConfig, p: dict, x: np.ndarray, gates: dict) -> np.ndarray:
    """x [3, H, W] RGB in [0, 1] (H, W multiples of 16) -> logits [out_ch, H, W].

    `p` are the folded parameters (params.fold_params); `gates` maps each GSA
    name to its gsa_gates() at this input size.
    """
    _, H, W = x.shape
    res_scale = (lambda i: p[f"encoder3.{i}.res_weight"]) if cfg.learned_res_scale else (lambda i: 0.1)
    t1 = gelu(down(p, 1, conv(p, "encoder1.0", x, padding=1)))  # [c0, H/2, W/2]
    t2 = gelu(down(p, 2, conv(p, "encoder2.0", t1, padding=1)))  # [c1, H/4, W/4]
    e3 = conv(p, "encoder3.0", t2, padding=1)  # [c2, H/4, W/4]
    e3 = edb(p, "encoder3.2", edb(p, "encoder3.1", e3, res_scale(1)), res_scale(2))  # [c2, H/4, W/4]
    t3 = gelu(down(p, 3, e3))  # [c2, H/8, W/8]
    t4 = gelu(max_pool2x2_ref(gn(p, "ebn4", gsa(p, "encoder4.0", t3, gates["encoder4.0"]))))  # [c3, H/16, W/16]

    if cfg.fusion:  # AGF + SSA
        f3 = conv(p, "multiscale_fusion.transforms.0", resize(t3, *t4.shape[1:]))  # [c3, H/16, W/16]
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
    return resize(conv(p, "final.0", y), H, W)  # [out_ch, H, W]


GSA_NAMES = ("encoder4.0", "decoder1.0", "decoder2.0", "decoder3.0")
GSA_DOWNSCALE = {"encoder4.0": 8, "decoder1.0": 16, "decoder2.0": 16, "decoder3.0": 8}


def all_gates(p: dict, H: int, W: int) -> dict:
    """Every GSA's gates for an H x W input."""
    return {n: gsa_gates(p, n, H // GSA_DOWNSCALE[n], W // GSA_DOWNSCALE[n]) for n in GSA_NAMES}
