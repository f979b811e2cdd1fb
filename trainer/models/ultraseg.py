"""UltraSeg in PyTorch (shared/ARCHITECTURE.md): the module, its deep-supervision loss and
boundary targets, distillation from a teacher's logits, the import of the authors' checkpoint,
and growing a 108K file into a 130K.

Module names follow the published checkpoint so that its state_dict loads as is.
One module class serves every variant of `UltraSegConfig`.
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from npseg.models.ultraseg import VARIANTS, UltraSegConfig

from . import GoldenCase, TorchFamily


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of NCHW, eps 1e-6."""

    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def _group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(4, c, eps=1e-5)


class Down(nn.Module):
    """BN then a 2x2 stride-2 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(c)
        self.conv = nn.Conv2d(c, c, 2, stride=2)

    def forward(self, x):
        return self.conv(self.bn(x))


EDB_RES_SCALE = 0.1  # the 108K's constant residual scale, and the 130K's learned scale at init


class EnhancedDilatedBlock(nn.Module):
    """Three grouped 3x3 convs (dilation 1, 2, 3; groups C/3, C -> C/3), 1x1 fusion, scaled residual."""

    def __init__(self, c: int, learned_scale: bool):
        super().__init__()
        self.dilated_convs = nn.ModuleList(
            nn.Conv2d(c, c // 3, 3, padding=d, dilation=d, groups=c // 3) for d in (1, 2, 3)
        )
        self.fusion = nn.Conv2d(c, c, 1)
        if learned_scale:
            self.res_weight = nn.Parameter(torch.tensor(EDB_RES_SCALE))
        else:
            self.res_weight = EDB_RES_SCALE

    def forward(self, x):
        y = torch.cat([conv(x) for conv in self.dilated_convs], 1)
        return x + self.res_weight * self.fusion(y)


def _dw_gelu_pw(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin), nn.GELU(), nn.Conv2d(cin, cout, 1))


class GroupShuffleAttention(nn.Module):
    """GSA: LN, four input-independent spatial gates, channel shuffle, LN, dw3x3-GELU-1x1."""

    def __init__(self, din: int, dout: int, grid: int = 8):
        super().__init__()
        q = din // 4
        for i in range(1, 5):
            setattr(self, f"share_space{i}", nn.Parameter(torch.ones(1, q, grid, grid)))
            setattr(self, f"conv{i}", _dw_gelu_pw(q, q))
        self.norm1 = ChannelsFirstLayerNorm(din)
        self.norm2 = ChannelsFirstLayerNorm(din)
        self.ldw = _dw_gelu_pw(din, dout)

    def gates(self, size) -> list[torch.Tensor]:
        """The four [1, q, h, w] gates; they depend only on the feature size."""
        return [getattr(self, f"conv{i}")(_up(getattr(self, f"share_space{i}"), size)) for i in range(1, 5)]

    def forward(self, x):
        x = self.norm1(x)
        chunks = torch.chunk(x, 4, dim=1)
        x1, x2, x3, x4 = (c * g for c, g in zip(chunks, self.gates(x.shape[2:])))
        x = torch.cat([x2, x4, x1, x3], 1)
        return self.ldw(self.norm2(x))


class Adapter(nn.Sequential):
    def __init__(self, c: int):
        hidden = max(c // 8, 4)
        super().__init__(nn.Conv2d(c, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, c, 1))


class AdaptiveMerge(nn.Module):
    """out = Adapter(x) + t + rw*sigmoid(r)*t (+ bw*b*t)."""

    def __init__(self, c: int, boundary: bool):
        super().__init__()
        self.region_weight = nn.Parameter(torch.tensor(0.3))
        if boundary:
            self.boundary_weight = nn.Parameter(torch.tensor(0.1))
        self.feature_adapter = Adapter(c) if c > 16 else nn.Identity()

    def forward(self, x, skip, region_prob, boundary_prob=None):
        out = self.feature_adapter(x) + skip + self.region_weight * region_prob * skip
        if boundary_prob is not None:
            out = out + self.boundary_weight * boundary_prob * skip
        return out


class RegionHead(nn.Module):
    """First decoder head: x + x*sigmoid(r)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        r = self.conv(x)
        return x + x * torch.sigmoid(r), r


class GateHead(nn.Module):
    """Decoder gate: x + x*b + x*sigmoid(r); conv1 is the boundary conv, conv2 the region conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 1, 1)
        self.conv2 = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        b_logit = self.conv1(x)
        r = self.conv2(x)
        return x + x * torch.sigmoid(b_logit) + x * torch.sigmoid(r), r, b_logit


class AttentionGuidedFusion(nn.Module):
    """AGF: per-pixel softmax weights over (projected t3, t4)."""

    def __init__(self, c2: int, c3: int):
        super().__init__()
        self.transforms = nn.ModuleList([nn.Conv2d(c2, c3, 1)])
        self.spatial_attention = nn.Sequential(
            nn.Conv2d(2 * c3, c3 // 4, 3, padding=1),
            nn.BatchNorm2d(c3 // 4),
            nn.GELU(),
            nn.Conv2d(c3 // 4, 2, 1),
        )

    def forward(self, t3, t4):
        f3 = self.transforms[0](_up(t3, t4.shape[2:]))
        w = torch.softmax(self.spatial_attention(torch.cat([f3, t4], 1)), dim=1)
        return w[:, 0:1] * f3 + w[:, 1:2] * t4


class UltraSeg(nn.Module):
    def __init__(self, cfg: UltraSegConfig):
        super().__init__()
        self.cfg = cfg
        c0, c1, c2, c3, c4 = cfg.widths
        g = cfg.gsa_grid
        self.encoder1 = nn.Sequential(nn.Conv2d(3, c0, 3, padding=1))
        self.encoder2 = nn.Sequential(nn.Conv2d(c0, c1, 3, padding=1))
        self.encoder3 = nn.Sequential(
            nn.Conv2d(c1, c2, 3, padding=1),
            EnhancedDilatedBlock(c2, cfg.learned_res_scale),
            EnhancedDilatedBlock(c2, cfg.learned_res_scale),
        )
        self.encoder4 = nn.Sequential(GroupShuffleAttention(c2, c3, g))
        self.Down1, self.Down2, self.Down3 = Down(c0), Down(c1), Down(c2)
        self.ebn1, self.ebn2, self.ebn3, self.ebn4 = (_group_norm(c) for c in (c0, c1, c2, c3))
        if cfg.fusion:
            self.multiscale_fusion = AttentionGuidedFusion(c2, c3)
            self.attention_alpha = nn.Parameter(torch.tensor(0.3))
        self.bottleneck = nn.Conv2d(c3, c4, 3, padding=1)
        self.decoder1 = nn.Sequential(GroupShuffleAttention(c4, c3, g))
        self.decoder2 = nn.Sequential(GroupShuffleAttention(c3, c2, g))
        self.decoder3 = nn.Sequential(GroupShuffleAttention(c2, c1, g))
        self.decoder4 = nn.Sequential(nn.Conv2d(c1, c0, 3, padding=1))
        self.dbn1, self.dbn2, self.dbn3, self.dbn4 = (_group_norm(c) for c in (c3, c2, c1, c0))
        self.pred1 = RegionHead(c3)
        self.gate1, self.gate2, self.gate3 = GateHead(c2), GateHead(c1), GateHead(c0)
        self.merge4 = AdaptiveMerge(c3, boundary=False)
        self.merge3 = AdaptiveMerge(c2, boundary=True)
        self.merge2 = AdaptiveMerge(c1, boundary=True)
        self.merge1 = AdaptiveMerge(c0, boundary=True)
        self.final = nn.Sequential(nn.Conv2d(c0, cfg.out_ch, 1))
        self._init_weights()

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
                nn.init.zeros_(m.bias)

    def forward(self, x, side_outputs: bool | None = None):
        """Logits [N, out_ch, H, W]; with side outputs (default: in training) also
        the region logits D1..D4 and boundary logits D2..D4 at H x W."""
        if side_outputs is None:
            side_outputs = self.training
        size = x.shape[2:]
        t1 = F.gelu(self.Down1(self.ebn1(self.encoder1(x))))  # [c0, H/2]
        t2 = F.gelu(self.Down2(self.ebn2(self.encoder2(t1))))  # [c1, H/4]
        t3 = F.gelu(self.Down3(self.ebn3(self.encoder3(t2))))  # [c2, H/8]
        t4 = F.gelu(F.max_pool2d(self.ebn4(self.encoder4(t3)), 2))  # [c3, H/16]
        if self.cfg.fusion:
            b = self.bottleneck(self.multiscale_fusion(t3, t4))  # [c4, H/16]
            a = self.attention_alpha
            z = (1 - a) * b + a * b * torch.sigmoid(b.mean(1, keepdim=True))
        else:
            z = self.bottleneck(t4)

        y = F.gelu(self.dbn1(self.decoder1(z)))  # [c3, H/16]
        y, r1 = self.pred1(y)
        y = self.merge4(y, t4, torch.sigmoid(r1))
        regions, boundaries = [r1], []
        for dec, gn, gate, merge, skip in (
            (self.decoder2, self.dbn2, self.gate1, self.merge3, t3),  # [c2, H/8]
            (self.decoder3, self.dbn3, self.gate2, self.merge2, t2),  # [c1, H/4]
            (self.decoder4, self.dbn4, self.gate3, self.merge1, t1),  # [c0, H/2]
        ):
            y = gn(dec(y))
            y = F.gelu(_up(y, (y.shape[2] * 2, y.shape[3] * 2)))
            y, r, b_logit = gate(y)
            y = merge(y, skip, torch.sigmoid(r), torch.sigmoid(b_logit))
            regions.append(r)
            boundaries.append(b_logit)
        logits = _up(self.final(y), size)  # [out_ch, H, W]
        if not side_outputs:
            return logits
        return logits, [_up(r, size) for r in regions], [_up(b, size) for b in boundaries]


# ---------------------------------------------------------------- targets and loss

REGION_WEIGHTS = (0.1, 0.2, 0.3, 0.4)  # D1 -> D4
BOUNDARY_WEIGHTS = (0.1, 0.2, 0.3)  # D2 -> D4


def boundary_target(mask01: np.ndarray) -> np.ndarray:
    """The recipe's boundary label: Canny(mask*255, 30, 90), dilated once by a 5x5 ellipse, {0,1}."""
    edges = cv2.Canny(mask01.astype(np.uint8) * 255, 30, 90)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    return (cv2.dilate(edges, kernel, iterations=1) > 0).astype(np.uint8)


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per sample, averaged over the batch. prob, target [N, 1 or none, H, W]."""
    p = prob.reshape(prob.shape[0], -1)
    t = target.reshape(target.shape[0], -1)
    dice = (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return (1 - dice).mean()


def main_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the 2 logits + 2 x soft Dice of the polyp softmax. mask [N,1,H,W] {0,1}."""
    ce = F.cross_entropy(logits, mask[:, 0].long())
    return ce + 2 * soft_dice_loss(torch.softmax(logits, 1)[:, 1], mask[:, 0])


def side_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 x BCE-with-logits + soft Dice of the sigmoid."""
    return 0.5 * F.binary_cross_entropy_with_logits(logit, target) + soft_dice_loss(torch.sigmoid(logit), target)


@dataclasses.dataclass(frozen=True)
class UltraSegOptions:
    """The recipe's [options]: `distillation`, the weight of the pixel-wise KL term towards the
    recipe's teacher (0: no teacher), at `temperature` (the term is scaled by its square, so that its
    gradients keep their size as the temperature changes)."""

    distillation: float = 0.0
    temperature: float = 1.0

    def __post_init__(self):
        if self.distillation < 0 or self.temperature <= 0:
            raise ValueError(f"options: distillation >= 0, temperature > 0; got {self}")


def _class_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """[N, 2, H, W] log (background, polyp) probabilities at the temperature, from two softmax logits
    or one sigmoid logit (a teacher of another family)."""
    z = logits / temperature
    if z.shape[1] == 1:
        return torch.cat([F.logsigmoid(-z), F.logsigmoid(z)], 1)
    return F.log_softmax(z, 1)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 x KL(teacher || student) of the per-pixel class distributions at temperature T, averaged
    over pixels (both outputs at the input's size: the teacher sees the student's batch)."""
    log_pt = _class_log_probs(teacher_logits, temperature)
    log_ps = _class_log_probs(logits, temperature)
    return temperature ** 2 * (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()


def ultraseg_loss(outputs, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The recipe's deep supervision: main + region heads D1..D4 + boundary heads D2..D4, plus, with
    a teacher, the weighted distillation term on the main logits; the total and its parts for the log."""
    logits, regions, boundaries = outputs
    mask, boundary = batch["mask"], batch["boundary"]
    opts, teacher = batch.get("options", UltraSegOptions()), batch.get("teacher")
    if (teacher is None) != (opts.distillation == 0):
        raise ValueError("a teacher and options.distillation > 0 go together: name both in the recipe "
                         "(teacher = WEIGHTS, [options] distillation = W) or neither")
    parts = {"main": main_loss(logits, mask),
             "region": sum(w * side_loss(r, mask) for w, r in zip(REGION_WEIGHTS, regions, strict=True)),
             "boundary": sum(w * side_loss(b, boundary) for w, b in zip(BOUNDARY_WEIGHTS, boundaries, strict=True))}
    if teacher is not None:
        parts["distillation"] = opts.distillation * distillation_loss(logits, teacher, opts.temperature)
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


# ---------------------------------------------------------------- other weights

def import_upstream(pth) -> UltraSeg:
    """The 130K holding the authors' published checkpoint (a plain state_dict; names already match ours)."""
    state = torch.load(str(pth), map_location="cpu", weights_only=True)
    model = UltraSeg(VARIANTS["ultraseg-130k"])
    model.load_state_dict(state, strict=True)
    return model.eval()


# A file of the fusion-less variant (108K) may start the fusion variant of the same widths (130K): the
# 130K graph computes the 108K function when AGF passes t4 through and SSA's alpha is 0 (here to 0.25 %:
# see below), so the larger model starts from everything the smaller one learned, not from a random init.
AGF_PASS_THROUGH_LOGIT = 3.0  # AGF softmax weights (0.0025, 0.9975): t4 almost alone, f3 still gets gradient


def grow(model: UltraSeg, file_cfg: UltraSegConfig, tensors: dict) -> str:
    """Load a fusion-less file (108K) into its fusion twin (130K): its tensors as they are, AGF + SSA
    set to leave its function unchanged. ValueError for any other pair of configs."""
    twin = dataclasses.replace(model.cfg, name=file_cfg.name, fusion=False, learned_res_scale=False)
    if not model.cfg.fusion or file_cfg != twin:
        raise ValueError(f"a {file_cfg.name} file cannot start a {model.cfg.name}")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    grown = set(model.state_dict()) - set(UltraSeg(twin).state_dict())
    missing = [k for k in missing if k not in grown and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"missing tensors {missing}, unexpected tensors {unexpected}")
    with torch.no_grad():
        head = model.multiscale_fusion.spatial_attention[-1]  # Conv1x1 -> the two AGF logits (f3, t4)
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-AGF_PASS_THROUGH_LOGIT, AGF_PASS_THROUGH_LOGIT]))
        model.attention_alpha.zero_()  # z = B
        for block in model.encoder3[1:]:
            block.res_weight.fill_(EDB_RES_SCALE)  # the 108K's constant
    return (f"{file_cfg.name}: its tensors loaded as they are, AGF set to pass t4 through (softmax logits "
            f"-{AGF_PASS_THROUGH_LOGIT:g}/+{AGF_PASS_THROUGH_LOGIT:g}), SSA alpha 0, EDB residual scales 0.1")


FAMILY = TorchFamily(
    name="ultraseg",
    build=UltraSeg,
    loss=ultraseg_loss,
    targets=lambda mask01: {"boundary": boundary_target(mask01)},
    golden=(GoldenCase(variant="ultraseg-130k", weights="best-ultraseg-130K.pth", npz="golden_ultraseg130k.npz",
                       pairs=(("inputs_256", "logits_256"), ("inputs_320x384", "logits_320x384")),
                       tolerance=1e-4),),
    import_upstream=import_upstream,
    grow=grow,
    options=UltraSegOptions,
)
