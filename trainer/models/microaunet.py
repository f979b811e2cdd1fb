"""MicroAUNet in PyTorch, as shared/specs/MICROAUNET.md specifies (the authors' released network).

Module names are the authors' (class `MAUNet`), so their state_dicts load strictly.
The eval forward returns LOGITS [N, 1, H, W]: the authors' final sigmoid is applied
by the weights file's output record. `features()` also returns the five encoder
skips (before the bridge) and the last decoder map, for distillation.

The losses: `plain_loss` (BCE + soft Dice, the authors' recipe) and
`distillation_loss`, the two-stage scheme as the paper and the authors' README
describe it (not as their training script runs it: see the spec).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from npseg.models.microaunet import BN_EPS, GN_EPS, GN_GROUPS, MicroAUNetConfig


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, c, eps=GN_EPS)


def up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


def init_weights(net: nn.Module) -> None:
    """The authors' init: conv N(0, sqrt(2 / fan_out)) (conv1d too), biases 0, linear trunc-normal 0.02.
    In the teacher it also redraws the tied EA weights in place, so the tie holds."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d)):
            fan_out = math.prod(m.kernel_size) * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


def unet_features(net: nn.Module, bridge: nn.Module, x):
    """The U shared by MicroAUNet and MALUNet: encoder stages block -> GN -> pool -> GELU, the
    bottleneck from the un-bridged t5, decoder stages block -> GN -> up x2 -> GELU + bridged skip,
    and the head's logits upsampled. Returns (logits, [t1..t5], last decoder map)."""
    skips = []
    y = x
    for k in range(1, 6):
        enc, gn = getattr(net, f"encoder{k}"), getattr(net, f"ebn{k}")
        y = F.gelu(F.max_pool2d(gn(enc(y)), 2))  # pool before the GELU
        skips.append(y)  # t_k [c_{k-1}, H/2^k]
    y = F.gelu(net.encoder6(y))  # [c5, H/32] from the un-bridged t5
    bridged = bridge(skips)
    y = F.gelu(net.dbn1(net.decoder1(y))) + bridged[4]  # [c4, H/32]
    for k in range(2, 6):
        dec, gn = getattr(net, f"decoder{k}"), getattr(net, f"dbn{k}")
        y = F.gelu(up2(gn(dec(y)))) + bridged[5 - k]  # [c_{5-k}, H/2^(6-k)]
    return up2(net.final(y)), skips, y


class DSConv(nn.Module):
    """ReLU(BN(PW(ReLU(BN(DW 3x3, dilation d)))))), both convs bias-free."""

    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn2(self.pointwise(F.relu(self.bn1(self.depthwise(x))))))


class DWD(nn.Module):
    """Residual pair of DSConvs (dilation 2, then 1): GELU(DS1(GELU(DS2(x))) + x)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = DSConv(c, c, dilation=2)
        self.conv2 = DSConv(c, c, dilation=1)

    def forward(self, x):
        return F.gelu(self.conv2(F.gelu(self.conv1(x))) + x)


class DWC(nn.Module):
    """PW(GN(depthwise k x k with bias)): for k = 1 the depthwise conv is a per-channel affine."""

    def __init__(self, cin: int, cout: int, k: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(cin, cin, k, padding=k // 2, groups=cin), _gn(cin), nn.Conv2d(cin, cout, 1))

    def forward(self, x):
        return self.net(x)


class LDGA(nn.Module):
    """u = DWC3(x); v = DWC1(u * sigmoid(PW_{C->1}(u))); y = v + DWC1'(x)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dwconv = DWC(cin, cin, 3)
        self.spatial_attention = nn.Sequential(nn.Conv2d(cin, 1, 1, bias=False), nn.Sigmoid())
        self.output_conv = DWC(cin, cout, 1)
        self.residual_conv = DWC(cin, cout, 1)

    def forward(self, x):
        u = self.dwconv(x)
        return self.output_conv(u * self.spatial_attention(u)) + self.residual_conv(x)


class ChannelGates(nn.Module):
    """sigmoid(W conv1d_3(concat GAP(t_k)) + b) [N, S]: one 3-tap filter along the concatenated
    channel vector (it crosses skip boundaries), one shared linear layer."""

    def __init__(self, total: int):
        super().__init__()
        self.get_all_att = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.shared_fc = nn.Linear(total, total)

    def forward(self, skips):
        z = torch.cat([t.mean((2, 3)) for t in skips], 1)  # [N, S]
        return torch.sigmoid(self.shared_fc(self.get_all_att(z[:, None])[:, 0]))


class SpatialGate(nn.Module):
    """sigmoid(conv 7x7 (reflect pad 3, no bias) of [mean_c t, max_c t]) [N, 1, h, w]."""

    def __init__(self):
        super().__init__()
        self.shared_conv2d = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3, padding_mode="reflect", bias=False),
                                           nn.Sigmoid())

    def forward(self, t):
        return self.shared_conv2d(torch.cat([t.mean(1, keepdim=True), t.amax(1, keepdim=True)], 1))


class LSCAB(nn.Module):
    """The skip bridge: t'_k = t_k * (1 + alpha * a_k[c] + beta * s_k[y, x])."""

    def __init__(self, widths):
        super().__init__()
        self.widths = list(widths)
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.beta = nn.Parameter(torch.tensor(0.5))
        self.catt = ChannelGates(sum(self.widths))
        self.satt = SpatialGate()

    def forward(self, skips):
        gates = torch.split(self.catt(skips), self.widths, 1)
        return [t * (1 + self.alpha * a[:, :, None, None] + self.beta * self.satt(t)) for t, a in zip(skips, gates)]


class MicroAUNet(nn.Module):
    def __init__(self, cfg: MicroAUNetConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.widths
        self.encoder1 = DSConv(3, c[0])
        for k in range(1, 6):  # encoder2..6: DWD then LDGA (width change)
            setattr(self, f"encoder{k + 1}", nn.Sequential(DWD(c[k - 1]), LDGA(c[k - 1], c[k])))
        self.lscab = LSCAB(c[:5])
        for k in range(1, 6):  # decoder1..5: LDGA (width change) then DWD
            setattr(self, f"decoder{k}", nn.Sequential(LDGA(c[6 - k], c[5 - k]), DWD(c[5 - k])))
        for k in range(1, 6):
            setattr(self, f"ebn{k}", _gn(c[k - 1]))
        for k in range(1, 6):
            setattr(self, f"dbn{k}", _gn(c[5 - k]))
        self.final = nn.Conv2d(c[0], 1, 1)
        init_weights(self)

    def features(self, x):
        """(logits [N, 1, H, W], encoder skips t1..t5 before the bridge, last decoder map [N, c0, H/2, W/2])."""
        return unet_features(self, self.lscab, x)

    def forward(self, x):
        return self.features(x)[0]


def build(cfg: MicroAUNetConfig) -> MicroAUNet:
    return MicroAUNet(cfg)
