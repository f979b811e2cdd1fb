"""Test-split metrics: per-image Dice, IoU and HD95 at the original mask resolution.

Predictions go through npseg (`npseg.load(file).predict(bgr)`, the deployed
path); the torch model on the same weights is the cross-check.

Empty-mask conventions (PolypGen has frames without a polyp):
- Dice and IoU are 1 when prediction and ground truth are both empty, 0 when
  exactly one is empty.
- HD95 is 0 when both are empty; when exactly one is empty it is the image
  diagonal (the largest distance possible in that image), so a missed polyp
  or a false alarm on a clean frame is penalised, never dropped.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice_iou(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks (see the module docstring for empty masks)."""
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(gt, dtype=bool)
    inter = np.count_nonzero(p & g)
    ps, gs = np.count_nonzero(p), np.count_nonzero(g)
    if ps + gs == 0:
        return 1.0, 1.0
    return 2.0 * inter / (ps + gs), inter / (ps + gs - inter)


def _surface(m: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-connected background neighbour (the image border counts as background)."""
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(2, 1), border_value=0)


def hd95(pred: np.ndarray, gt: np.ndarray) -> float:
    """95th percentile of the symmetric surface distances in pixels (both directed distance sets pooled).
    Empty cases: see the module docstring."""
    p = np.asarray(pred, dtype=bool)
    g = np.asarray(gt, dtype=bool)
    if not p.any() and not g.any():
        return 0.0
    if not p.any() or not g.any():
        return float(np.hypot(*p.shape))
    sp, sg = _surface(p), _surface(g)
    to_g = ndimage.distance_transform_edt(~sg)  # distance of every pixel to the nearest gt surface pixel
    to_p = ndimage.distance_transform_edt(~sp)
    return float(np.percentile(np.concatenate([to_g[sp], to_p[sg]]), 95))
