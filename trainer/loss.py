"""The deep-supervision loss of the UltraSeg recipe, on logits (shared/ARCHITECTURE.md).

`empty_area` (None = the recipe) changes one thing: the soft-Dice smooth term of samples whose
target is empty (polyp-free frames), from 1 pixel to that fraction of the image. With smooth 1
such a sample's loss is 1 - 1/(1 + S), S its summed probability: it saturates once a false mark
covers a few pixels and its gradient 1/(1 + S)^2 vanishes, so polyp-free frames are learned from
the cross-entropy alone. With a smooth of A pixels it is S/(S + A), whose gradient stays of the
order a false pixel gets on a frame with a polyp of about A pixels.

`lovasz` (0 = the recipe) adds that weight times the Lovász hinge of the main output, per image:
the convex surrogate of 1 - IoU (Berman, Rannen Triki and Blaschko, CVPR 2018), which the
per-image Dice of the evaluation follows more closely than a soft Dice does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REGION_WEIGHTS = (0.1, 0.2, 0.3, 0.4)  # D1 -> D4
BOUNDARY_WEIGHTS = (0.1, 0.2, 0.3)  # D2 -> D4


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
                   empty_area: float | None = None) -> torch.Tensor:
    """1 - soft Dice per sample, averaged over the batch. prob, target [N, 1 or none, H, W].
    empty_area: smooth term of empty-target samples as a fraction of H*W (None: `smooth`)."""
    p = prob.reshape(prob.shape[0], -1)
    t = target.reshape(target.shape[0], -1)
    t_sum = t.sum(1)
    s = torch.full_like(t_sum, smooth)
    if empty_area is not None:
        s = torch.where(t_sum == 0, torch.full_like(t_sum, empty_area * p.shape[1]), s)
    dice = (2 * (p * t).sum(1) + s) / (p.sum(1) + t_sum + s)
    return (1 - dice).mean()


def lovasz_hinge(margin: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász hinge per sample, averaged over the batch. margin [N, H, W]: the polyp logit minus the
    background logit; target [N, H, W] in {0, 1}. The hinge errors 1 - margin * sign, sorted from
    the worst, are weighted by how much each one, in turn, adds to the Jaccard loss of the errors
    before it (the Lovász extension's gradient); a polyp-free target weighs only its worst error."""
    n = margin.shape[0]
    m = margin.reshape(n, -1)
    t = target.reshape(n, -1).to(m.dtype)
    errors = 1 - m * (2 * t - 1)
    errors_sorted, order = torch.sort(errors, dim=1, descending=True)
    t_sorted = torch.gather(t, 1, order)
    positives = t_sorted.sum(1, keepdim=True)
    intersection = positives - t_sorted.cumsum(1)
    union = positives + (1 - t_sorted).cumsum(1)
    jaccard = 1 - intersection / union
    weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)
    return (F.relu(errors_sorted) * weights).sum(1).mean()


def main_loss(logits: torch.Tensor, mask: torch.Tensor, empty_area: float | None = None,
              lovasz: float = 0.0) -> torch.Tensor:
    """Cross-entropy over the 2 logits + 2 x soft Dice of the polyp softmax (+ lovasz x the Lovász
    hinge). mask [N,1,H,W] {0,1}."""
    ce = F.cross_entropy(logits, mask[:, 0].long())
    loss = ce + 2 * soft_dice_loss(torch.softmax(logits, 1)[:, 1], mask[:, 0], empty_area=empty_area)
    if lovasz:
        loss = loss + lovasz * lovasz_hinge(logits[:, 1] - logits[:, 0], mask[:, 0])
    return loss


def side_loss(logit: torch.Tensor, target: torch.Tensor, empty_area: float | None = None) -> torch.Tensor:
    """0.5 x BCE-with-logits + soft Dice of the sigmoid (smooth 1, or empty_area on empty targets)."""
    return (0.5 * F.binary_cross_entropy_with_logits(logit, target)
            + soft_dice_loss(torch.sigmoid(logit), target, empty_area=empty_area))


def ultraseg_loss(logits, regions, boundaries, mask, boundary, empty_area: float | None = None,
                  lovasz: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (main, region, boundary) for logging."""
    main = main_loss(logits, mask, empty_area, lovasz)
    region = sum(w * side_loss(r, mask, empty_area) for w, r in zip(REGION_WEIGHTS, regions, strict=True))
    bound = sum(w * side_loss(b, boundary, empty_area) for w, b in zip(BOUNDARY_WEIGHTS, boundaries, strict=True))
    total = main + region + bound
    return total, {"main": float(main.detach()), "region": float(region.detach()), "boundary": float(bound.detach())}
