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
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from npseg.models.microaunet import BN_EPS, GN_EPS, GN_GROUPS, MicroAUNetConfig

from . import GoldenCase, TorchFamily


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
        """Eval: logits [N, 1, H, W]. Training: features(x), what the distillation loss takes."""
        return self.features(x) if self.training else self.features(x)[0]


def build(cfg: MicroAUNetConfig) -> MicroAUNet:
    return MicroAUNet(cfg)


# ---- losses ------------------------------------------------------------------------------------
def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p y) + 1) / (sum p + sum y + 1) per sample, averaged over the batch (the authors')."""
    p, t = prob.flatten(1), target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)).mean()


def plain_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The authors' task loss: BCE + soft Dice of the sigmoid, weights 1 and 1 (BCE on the logits:
    the same value as their BCE on probabilities, without its clamping)."""
    return F.binary_cross_entropy_with_logits(logits, mask) + soft_dice_loss(torch.sigmoid(logits), mask)


def imitation_loss(student_skips, teacher_skips, student_logits, teacher_logits, omega: float) -> dict:
    """Stage 1 ("imitation"), as the authors' README describes it: (1 - omega) * L_mimic + omega * L_KL.
    L_mimic = sum over the five encoder skips of the mean squared difference to the teacher's (same
    shapes here; a student map of another size is resized bilinearly); L_KL = KL(teacher || student)
    of the per-pixel class distributions, i.e. [1 - p, p] for a one-logit sigmoid output (the
    authors' softmax over one channel is identically 0)."""
    mimic = sum(F.mse_loss(s if s.shape == t.shape else F.interpolate(s, size=t.shape[2:], mode="bilinear"), t)
                for s, t in zip(student_skips, teacher_skips, strict=True))
    log_ps, log_qs = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    log_pt, log_qt = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    kl = (log_pt.exp() * (log_pt - log_ps) + log_qt.exp() * (log_qt - log_qs)).mean()
    return {"mimic": (1 - omega) * mimic, "kl": omega * kl}


def preference_loss(embedding, mask, teacher_logits=None, temperature: float = 0.1, positives: int = 256,
                    negatives: int = 512, confident=(0.8, 0.3)) -> torch.Tensor:
    """Stage 2 ("preference"): a supervised InfoNCE over pixels, per sample: each foreground pixel's
    L2-normalised embedding (the last decoder map, upsampled) is pulled towards the other foreground
    pixels and pushed from the background ones, at the temperature. Pixels are drawn at random (up
    to `positives` / `negatives`); with the teacher's logits, only those it is confident about
    (p >= confident[0] in the foreground, p <= confident[1] in the background) are drawn."""
    emb = F.normalize(F.interpolate(embedding, size=mask.shape[2:], mode="bilinear", align_corners=True), dim=1)
    fg, bg = mask[:, 0] > 0.5, mask[:, 0] <= 0.5
    if teacher_logits is not None:
        p_t = torch.sigmoid(teacher_logits[:, 0])
        fg, bg = fg & (p_t >= confident[0]), bg & (p_t <= confident[1])
    losses = []
    for e, f, b in zip(emb.flatten(2).transpose(1, 2), fg.flatten(1), bg.flatten(1)):
        pos, neg = torch.nonzero(f)[:, 0], torch.nonzero(b)[:, 0]
        if len(pos) < 2 or len(neg) < 1:
            continue
        pos = pos[torch.randperm(len(pos), device=pos.device)[:positives]]
        neg = neg[torch.randperm(len(neg), device=neg.device)[:negatives]]
        anchors = e[pos]  # [P, C]
        sim = anchors @ torch.cat([anchors, e[neg]]).T / temperature  # [P, P + N]
        is_self = torch.eye(len(pos), len(pos) + len(neg), dtype=torch.bool, device=sim.device)
        log_prob = sim.masked_fill(is_self, float("-inf")).log_softmax(1)  # over every other pixel
        pulled = log_prob[:, :len(pos)].masked_fill(is_self[:, :len(pos)], 0.0).sum(1) / (len(pos) - 1)
        losses.append(-pulled.mean())
    return torch.stack(losses).mean() if losses else embedding.sum() * 0.0


@dataclass(frozen=True)
class MicroAUNetOptions:
    """The recipe's [options]: distillation stage 0 (none: the plain loss), 1 (imitation: the plain
    loss + feature and prediction imitation of the teacher) or 2 (preference: the plain loss +
    the pixel contrast, on the pixels the teacher is confident about); the stages' weights."""

    stage: int = 0
    omega: float = 0.5  # stage 1: weight of the KL term, 1 - omega of the feature term
    contrast: float = 1.0  # stage 2: weight of the contrast term
    temperature: float = 0.1  # stage 2

    def __post_init__(self):
        if self.stage not in (0, 1, 2) or not 0 <= self.omega <= 1 or self.temperature <= 0 or self.contrast < 0:
            raise ValueError(f"options: stage 0, 1 or 2, omega in [0, 1], temperature > 0, contrast >= 0; got {self}")


def microaunet_loss(outputs, batch: dict):
    """The family loss on the train-mode outputs (logits, skips, last decoder map): the plain loss,
    plus the distillation stage's terms (batch["teacher"]: the teacher's (logits, skips, last map)
    or, for stage 2, its logits). Returns (total, parts)."""
    logits, skips, last = outputs if isinstance(outputs, tuple) else (outputs, None, None)
    opts, mask = batch["options"], batch["mask"]
    parts = {"task": plain_loss(logits, mask)}
    teacher = batch.get("teacher")
    if opts.stage and (teacher is None or skips is None):
        raise ValueError(f"distillation stage {opts.stage} needs the teacher's outputs and the student in training")
    if opts.stage == 1:
        if not isinstance(teacher, tuple):
            raise ValueError("distillation stage 1 needs the teacher's encoder skips, not only its logits")
        parts |= imitation_loss(skips, teacher[1], logits, teacher[0], opts.omega)
    elif opts.stage == 2:
        t_logits = teacher[0] if isinstance(teacher, tuple) else teacher
        parts["contrast"] = opts.contrast * preference_loss(last, mask, t_logits, opts.temperature)
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


def teacher_features(teacher, image):
    """What the distillation stages read of a teacher: its (logits, encoder skips, last decoder map)."""
    return teacher.features(image)


FAMILY = TorchFamily(
    name="microaunet",
    build=build,
    loss=microaunet_loss,
    golden=(GoldenCase(variant="microaunet", weights="microaunet/microaunet.safetensors",
                       npz="microaunet/golden_microaunet.npz",
                       pairs=(("input", "output"), ("input_nonsquare", "output_nonsquare")), tolerance=1e-4,
                       probability=True),),
    options=MicroAUNetOptions,
    teach=teacher_features,
)
