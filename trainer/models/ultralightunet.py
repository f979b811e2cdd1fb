"""UltraLightUNet (MK-UNet) in PyTorch, exactly as shared specs/ULTRALIGHTUNET.md specifies.

Built from npseg's config dataclass; module names are the authors' so their state_dicts (and
the golden files) load strictly. Eval-mode forward returns logits [N, K, H, W]; train-mode
forward also returns the three deep-supervision logits (heads out1..out3, upsampled to H x W),
which the family loss uses.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from npseg.models.ultralightunet import (BN_EPS, EXPANSION, KERNELS, UltraLightUNetConfig, ca_hidden,
                                         decoder_widths, encoder_widths, shuffle_groups)

from . import GoldenCase, TorchFamily


def _conv_bn(cin, cout, k, groups=1, bias=False, *act):
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=bias)
    return nn.Sequential(conv, nn.BatchNorm2d(cout, eps=BN_EPS), *act)


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class MultiKernelDepthwise(nn.Module):
    """Depthwise k x k (k = 1, 3, 5) + BN + ReLU6 branches, summed."""

    def __init__(self, c: int):
        super().__init__()
        self.dwconvs = nn.ModuleList(_conv_bn(c, c, k, c, False, nn.ReLU6()) for k in KERNELS)

    def forward(self, x):
        out = self.dwconvs[0](x)
        for branch in self.dwconvs[1:]:
            out = out + branch(x)
        return out


class MKIR(nn.Module):
    """Multi-kernel inverted residual block: expand, multi-kernel depthwise, shuffle, project, + residual."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        e = EXPANSION * cin
        self.groups = shuffle_groups(cin, cout)
        self.pconv1 = _conv_bn(cin, e, 1, 1, False, nn.ReLU6())
        self.multi_scale_dwconv = MultiKernelDepthwise(e)
        self.pconv2 = _conv_bn(e, cout, 1)
        self.conv1x1 = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x):
        s = self.multi_scale_dwconv(self.pconv1(x))
        n, e, h, w = s.shape
        s = s.view(n, self.groups, e // self.groups, h, w).transpose(1, 2).reshape(n, e, h, w)
        return self.pconv2(s) + (x if self.conv1x1 is None else self.conv1x1(x))


class GroupedAttentionGate(nn.Module):
    """Gate on the skip x from the decoder feature g: x * sigmoid(BN(psi(ReLU(Gg(g) + Gx(x)))))."""

    def __init__(self, c: int):
        super().__init__()
        self.W_g = _conv_bn(c, c // 2, 3, c // 2, True)
        self.W_x = _conv_bn(c, c // 2, 3, c // 2, True)
        self.psi = _conv_bn(c // 2, 1, 1, 1, True, nn.Sigmoid())

    def forward(self, g, x):
        return x * self.psi(F.relu(self.W_g(g) + self.W_x(x)))


class ChannelAttention(nn.Module):
    """CBAM channel gate [N, C, 1, 1] from the global average and maximum, one shared MLP."""

    def __init__(self, c: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, c, 1, bias=False)

    def forward(self, x):
        mlp = lambda v: self.fc2(F.relu(self.fc1(v)))  # noqa: E731
        return torch.sigmoid(mlp(F.adaptive_avg_pool2d(x, 1)) + mlp(F.adaptive_max_pool2d(x, 1)))


class SpatialAttention(nn.Module):
    """Per-pixel gate [N, 1, H, W]: 7x7 conv of the channel mean and max (in that order)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x):
        return torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


class UltraLightUNet(nn.Module):
    def __init__(self, cfg: UltraLightUNetConfig):
        super().__init__()
        self.cfg = cfg
        c, k = cfg.channels, cfg.num_classes
        for i, (cin, cout) in enumerate(encoder_widths(cfg)):
            setattr(self, f"encoder{i + 1}", nn.Sequential(MKIR(cin, cout)))
        for i, width in enumerate((c[3], c[2], c[1], c[0])):
            setattr(self, f"AG{i + 1}", GroupedAttentionGate(width))
        for i, (cin, cout) in enumerate(decoder_widths(cfg)):
            setattr(self, f"decoder{i + 1}", nn.Sequential(MKIR(cin, cout)))
        for i, width in enumerate((c[4], c[3], c[2], c[1], c[0])):
            setattr(self, f"CA{i + 1}", ChannelAttention(width, ca_hidden(width, i)))
        self.SA = SpatialAttention()
        for i, width in enumerate((c[2], c[1], c[0], c[0])):
            setattr(self, f"out{i + 1}", nn.Conv2d(width, k, 1))

    def forward_with_aux(self, x):
        """(logits [N, K, H, W], [out1, out2, out3] at their own resolutions H/8, H/4, H/2)."""
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        skips = []
        for i in range(1, 6):
            x = F.max_pool2d(getattr(self, f"encoder{i}")(x), 2)
            skips.append(x)
        u, aux = skips.pop(), []
        for i in range(1, 6):
            u = u * getattr(self, f"CA{i}")(u)
            u = u * self.SA(u)
            u = F.relu(_up2(getattr(self, f"decoder{i}")(u)))
            if i in (2, 3, 4):
                aux.append(getattr(self, f"out{i - 1}")(u))
            if i <= 4:
                u = u + getattr(self, f"AG{i}")(u, skips[4 - i])
        return self.out4(u), aux

    def forward(self, x):
        logits, aux = self.forward_with_aux(x)
        if not self.training:
            return logits
        size = logits.shape[2:]
        return logits, *(F.interpolate(a, size=size, mode="bilinear", align_corners=False) for a in aux)


def build(cfg: UltraLightUNetConfig) -> UltraLightUNet:
    return UltraLightUNet(cfg)


def structure_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weighted BCE + weighted IoU (the PraNet 'structure loss' the authors' recipe names): pixels
    whose 31 x 31 neighbourhood disagrees with them (edges) weigh up to 6x. mask [N, 1, H, W] {0,1}."""
    weight = 1 + 5 * torch.abs(F.avg_pool2d(mask, 31, stride=1, padding=15) - mask)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    bce = (weight * bce).sum((2, 3)) / weight.sum((2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * mask * weight).sum((2, 3))
    union = ((prob + mask) * weight).sum((2, 3))
    iou = 1 - (inter + 1) / (union - inter + 1)
    return (bce + iou).mean()


def ultralightunet_loss(outputs, batch: dict):
    """The family loss: structure loss on the logits plus, in training, on each deep-supervision
    output (equal weights, as in the authors' PraNet-lineage trainers). Returns (total, parts)."""
    mask = batch["mask"]
    outputs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    parts = {"main": structure_loss(outputs[0], mask)}
    parts.update({f"aux{i + 1}": structure_loss(o, mask) for i, o in enumerate(outputs[1:])})
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


FAMILY = TorchFamily(
    name="ultralightunet",
    build=build,
    loss=ultralightunet_loss,
    golden=tuple(GoldenCase(variant=f"ultralightunet-{v}", weights=f"ultralightunet/ultralightunet_{v}.safetensors",
                            npz=f"ultralightunet/golden_ultralightunet_{v}.npz",
                            pairs=(("input", "output"), ("input_rect", "output_rect")), tolerance=1e-4)
                 for v in "tsb"),
    output_layer=lambda model: model.out4,
)
