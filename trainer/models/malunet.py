"""MALUNet (Ruan et al., BIBM 2022), MicroAUNet's distillation teacher, in PyTorch, as
shared/specs/MICROAUNET.md specifies (split_att='fc', bridge on).

Module names are the authors', so their state_dicts load strictly. The eval forward
returns LOGITS [N, 1, H, W] (the authors' final sigmoid moves out); `features()` also
returns the five encoder skips (before the bridge) and the last decoder map, the
targets of MicroAUNet's feature imitation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from npseg.models.malunet import GN_EPS, GN_GROUPS, MALUNetConfig

from . import GoldenCase, TorchFamily
from .microaunet import init_weights, plain_loss, unet_features


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, c, eps=GN_EPS)


class DWCt(nn.Module):
    """PW(GN(depthwise k x k with bias, zero padding p)) with bias."""

    def __init__(self, cin: int, cout: int, k: int, padding: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, k, padding=padding, groups=cin)
        self.norm_layer = _gn(cin)
        self.conv2 = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.conv2(self.norm_layer(self.conv1(x)))


class GAU(nn.Module):
    """GELU(DWCt_3(sigmoid(DWCt_3(x)) * GELU(DWCt_5(x)))) + PW(x)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.w1 = nn.Sequential(DWCt(cin, cin, 3, 1), nn.Sigmoid())
        self.w2 = nn.Sequential(DWCt(cin, cin, 5, 2), nn.GELU())
        self.wo = nn.Sequential(DWCt(cin, cout, 3, 1), nn.GELU())
        self.cw = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.wo(self.w1(x) * self.w2(x)) + self.cw(x)


class DGA(nn.Module):
    """Four quarter-channel depthwise 3x3 convs (dilations 7, 5, 2, 1) -> GN -> PW -> GELU -> GAU."""

    DILATIONS = (7, 5, 2, 1)

    def __init__(self, cin: int, cout: int):
        super().__init__()
        q = cin // 4
        for j, d in enumerate(self.DILATIONS):
            setattr(self, f"mda{j}", nn.Conv2d(q, q, 3, padding=d, dilation=d, groups=q))
        self.norm_layer = _gn(cin)
        self.conv = nn.Conv2d(cin, cin, 1)
        self.gau = GAU(cin, cout)

    def forward(self, x):
        chunks = torch.chunk(x, 4, 1)
        x = torch.cat([getattr(self, f"mda{j}")(c) for j, c in enumerate(chunks)], 1)
        return self.gau(F.gelu(self.conv(self.norm_layer(x))))


class EA(nn.Module):
    """External attention with 4C memory slots: softmax over positions, then renormalised over
    the slots; linear_1 shares linear_0's storage (transposed), as in the authors' class."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 1)
        self.linear_0 = nn.Conv1d(c, 4 * c, 1, bias=False)
        self.linear_1 = nn.Conv1d(4 * c, c, 1, bias=False)
        self.linear_1.weight.data = self.linear_0.weight.data.permute(1, 0, 2)
        self.conv2 = nn.Conv2d(c, c, 1, bias=False)
        self.norm_layer = _gn(c)

    def forward(self, x):
        n, c, h, w = x.shape
        a = self.linear_0(self.conv1(x).reshape(n, c, h * w))  # [N, 4C, hw]
        a = torch.softmax(a, dim=-1)
        a = a / (1e-9 + a.sum(dim=1, keepdim=True))
        z = self.linear_1(a).reshape(n, c, h, w)
        return F.gelu(self.norm_layer(self.conv2(z)) + x)


class SpatialGate(nn.Module):
    """sigmoid(conv 7x7, dilation 3, zero pad 9, bias) of [mean_c t, max_c t]."""

    def __init__(self):
        super().__init__()
        self.shared_conv2d = nn.Sequential(nn.Conv2d(2, 1, 7, padding=9, dilation=3), nn.Sigmoid())

    def forward(self, t):
        return self.shared_conv2d(torch.cat([t.mean(1, keepdim=True), t.amax(1, keepdim=True)], 1))


class ChannelGates(nn.Module):
    """Per skip sigmoid(Linear_k(conv1d_3(concat GAP(u)))): one 3-tap filter, five linears."""

    def __init__(self, widths):
        super().__init__()
        self.get_all_att = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        for k, c in enumerate(widths):
            setattr(self, f"att{k + 1}", nn.Linear(sum(widths), c))
        self.count = len(widths)

    def forward(self, skips):
        z = self.get_all_att(torch.cat([t.mean((2, 3)) for t in skips], 1)[:, None])[:, 0]  # [N, S]
        return torch.cat([torch.sigmoid(getattr(self, f"att{k + 1}")(z)) for k in range(self.count)], 1)


class SCAB(nn.Module):
    """Sequential spatial -> channel bridge: u = t (1 + s); t' = a u + s t."""

    def __init__(self, widths):
        super().__init__()
        self.widths = list(widths)
        self.catt = ChannelGates(widths)
        self.satt = SpatialGate()

    def forward(self, skips):
        spatial = [self.satt(t) for t in skips]
        updated = [t + s * t for t, s in zip(skips, spatial)]
        gates = torch.split(self.catt(updated), self.widths, 1)
        return [a[:, :, None, None] * u + s * t for t, s, u, a in zip(skips, spatial, updated, gates)]


class MALUNet(nn.Module):
    def __init__(self, cfg: MALUNetConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.widths
        self.encoder1 = nn.Sequential(nn.Conv2d(3, c[0], 3, padding=1))
        self.encoder2 = nn.Sequential(nn.Conv2d(c[0], c[1], 3, padding=1))
        self.encoder3 = nn.Sequential(nn.Conv2d(c[1], c[2], 3, padding=1))
        for k in (3, 4, 5):  # encoder4..6: EA then DGA (width change)
            setattr(self, f"encoder{k + 1}", nn.Sequential(EA(c[k - 1]), DGA(c[k - 1], c[k])))
        self.scab = SCAB(c[:5])
        for k in (1, 2, 3):  # decoder1..3: DGA (width change) then EA
            setattr(self, f"decoder{k}", nn.Sequential(DGA(c[6 - k], c[5 - k]), EA(c[5 - k])))
        self.decoder4 = nn.Sequential(nn.Conv2d(c[2], c[1], 3, padding=1))
        self.decoder5 = nn.Sequential(nn.Conv2d(c[1], c[0], 3, padding=1))
        for k in range(1, 6):
            setattr(self, f"ebn{k}", _gn(c[k - 1]))
        for k in range(1, 6):
            setattr(self, f"dbn{k}", _gn(c[5 - k]))
        self.final = nn.Conv2d(c[0], 1, 1)
        init_weights(self)  # the authors' (it redraws the tied EA weights in place: the tie holds)

    def features(self, x):
        """(logits [N, 1, H, W], encoder skips t1..t5 before the bridge, last decoder map [N, c0, H/2, W/2])."""
        return unet_features(self, self.scab, x)

    def forward(self, x):
        return self.features(x)[0]


def build(cfg: MALUNetConfig) -> MALUNet:
    return MALUNet(cfg)


def malunet_loss(logits, batch: dict):
    """The authors' recipe: BCE + soft Dice."""
    return plain_loss(logits, batch["mask"])


FAMILY = TorchFamily(
    name="malunet",
    build=build,
    loss=malunet_loss,
    golden=(GoldenCase(variant="malunet", weights="microaunet/malunet_teacher.safetensors",
                       npz="microaunet/golden_malunet_teacher.npz",
                       pairs=(("input", "output"), ("input_nonsquare", "output_nonsquare")), tolerance=1e-4,
                       probability=True),),
)
