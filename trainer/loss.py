"""The deep-supervision loss of the UltraSeg recipe, on logits (shared/ARCHITECTURE.md)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

REGION_WEIGHTS = (0.1, 0.2, 0.3, 0.4)  # D1 -> D4
BOUNDARY_WEIGHTS = (0.1, 0.2, 0.3)  # D2 -> D4


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
    """0.5 x BCE-with-logits + soft Dice of the sigmoid (smooth 1)."""
    return 0.5 * F.binary_cross_entropy_with_logits(logit, target) + soft_dice_loss(torch.sigmoid(logit), target)


def ultraseg_loss(logits, regions, boundaries, mask, boundary) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (main, region, boundary) for logging."""
    main = main_loss(logits, mask)
    region = sum(w * side_loss(r, mask) for w, r in zip(REGION_WEIGHTS, regions, strict=True))
    bound = sum(w * side_loss(b, boundary) for w, b in zip(BOUNDARY_WEIGHTS, boundaries, strict=True))
    total = main + region + bound
    return total, {"main": float(main.detach()), "region": float(region.detach()), "boundary": float(bound.detach())}
