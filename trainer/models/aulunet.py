"""AULUNet in PyTorch, as shared/specs/AULUNET.md specifies (the authors' released network).

Module names are the authors', so their state_dicts load strictly. The eval forward
returns LOGITS [N, num_classes, H, W]: the authors' final sigmoid is applied by the
weights file's output record, and the loss (BCE + soft Dice, the authors' recipe)
takes the logits, with BCE in its with-logits form.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from npseg.models.aulunet import BN_EPS, STAGES, AULUNetConfig

from . import GoldenCase, TorchFamily


def up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class PointConv(nn.Module):
    """ReLU(BN(PW(x))), the PW bias-free."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class AKF(nn.Module):
    """Adaptive kernel fusion: PointConv(a * DW3_d1(x) + (1 - a) * DW3_d2(x)),
    a = sigmoid(PW_gate(GAP(x))) per sample and channel. No residual."""

    def __init__(self, c: int):
        super().__init__()
        self.dw_local = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.dw_dilated = nn.Conv2d(c, c, 3, padding=2, dilation=2, groups=c, bias=False)
        self.gate_conv = nn.Conv2d(c, c, 1)
        self.fuse_conv = PointConv(c, c)

    def forward(self, x):
        a = torch.sigmoid(self.gate_conv(x.mean((2, 3), keepdim=True)))
        return self.fuse_conv(a * self.dw_local(x) + (1 - a) * self.dw_dilated(x))


class RGF(nn.Module):
    """Residual global fusion: x * (1 + tanh(PW(GAP(x)))), the PW bias-free."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1, bias=False)

    def forward(self, x):
        return x * (1 + torch.tanh(self.conv(x.mean((2, 3), keepdim=True))))


class UpProj(nn.Module):
    """Bilinear x2 (align_corners=True), then PointConv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = PointConv(cin, cout)

    def forward(self, x):
        return self.proj(up2(x))


class LSG(nn.Module):
    """Lightweight skip gate: d + sigmoid(BN(PW([d, e]))) * e, the PW bias-free, decoder first."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c, eps=BN_EPS)

    def forward(self, d, e):
        return d + torch.sigmoid(self.bn(self.conv(torch.cat([d, e], 1)))) * e


class AULUNet(nn.Module):
    def __init__(self, cfg: AULUNetConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.enc0_conv = nn.Sequential(nn.Conv2d(3, c[0], 3, padding=1, bias=False),
                                       nn.BatchNorm2d(c[0], eps=BN_EPS), nn.ReLU())
        self.enc0_akfb = AKF(c[0])
        for k in range(1, STAGES):  # AKF at the incoming width, then the point conv widens
            setattr(self, f"enc{k}_akfb", AKF(c[k - 1]))
            setattr(self, f"enc{k}_proj", PointConv(c[k - 1], c[k]))
        self.bottleneck_rgfb = RGF(c[5])
        for k in range(STAGES - 2, -1, -1):
            setattr(self, f"up{k}", UpProj(c[k + 1], c[k]))
            setattr(self, f"skip{k}", LSG(c[k]))
            setattr(self, f"dec{k}_akfb", AKF(c[k]))
        self.head = nn.Sequential(nn.Conv2d(c[0], cfg.num_classes, 1))

    def features(self, x) -> dict[str, torch.Tensor]:
        """Every named feature (as npseg.models.aulunet.reference_features): e0..e5, b, d4..d0, logits."""
        f = {"e0": self.enc0_akfb(self.enc0_conv(x))}
        for k in range(1, STAGES):
            f[f"e{k}"] = getattr(self, f"enc{k}_proj")(getattr(self, f"enc{k}_akfb")(F.avg_pool2d(f[f"e{k - 1}"], 2)))
        f["b"] = d = self.bottleneck_rgfb(f["e5"])
        for k in range(STAGES - 2, -1, -1):
            d = getattr(self, f"skip{k}")(getattr(self, f"up{k}")(d), f[f"e{k}"])
            f[f"d{k}"] = d = getattr(self, f"dec{k}_akfb")(d)
        f["logits"] = self.head(d)
        return f

    def forward(self, x):
        """x [N, 3, H, W] min-max normalised to [0, 255] (H, W multiples of 32) -> logits."""
        return self.features(x)["logits"]


def aulunet_loss(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The authors' loss on the logits: BCE (with logits) + soft Dice of the sigmoid, per sample
    (2 sum(p t) + 1) / (sum p + sum t + 1), 1 - the batch mean; weights 1 and 1."""
    mask = batch["mask"].to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, mask)
    p, t = torch.sigmoid(logits).flatten(1), mask.flatten(1)
    dice = 1 - ((2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()
    return bce + dice, {"bce": float(bce.detach()), "dice": float(dice.detach())}


FAMILY = TorchFamily(
    name="aulunet",
    build=AULUNet,
    loss=aulunet_loss,
    golden=(GoldenCase(variant="aulunet", weights="aulunet/aulunet.safetensors", npz="aulunet/golden_aulunet.npz",
                       pairs=(("input", "output"),), tolerance=1e-5, probability=True),),
)
