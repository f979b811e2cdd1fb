"""Drawing a mask onto its frame: a translucent tint plus the outline.

Built for video rates: the tint is blended only inside the mask's bounding box
(a full-frame blend of 1280x1024 costs several ms on one core) and the outline
is traced on the mask as given, which may be the network's low-resolution mask,
then scaled to the frame with sub-pixel precision.
"""
from __future__ import annotations

import cv2
import numpy as np

TINT_BGR = (0, 255, 0)
OUTLINE_BGR = (0, 255, 255)
TINT_ALPHA = 0.35
_SHIFT = 4  # fixed-point bits for sub-pixel outline coordinates


def outline(mask: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """Outer contours of `mask` (HxW uint8, nonzero = polyp) in fixed-point frame coordinates."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    sy, sx = height / mask.shape[0], width / mask.shape[1]
    # A mask pixel (x, y) covers frame pixels [x*sx, (x+1)*sx): trace through its centre.
    scale = np.array([sx, sy]) * (1 << _SHIFT)
    offset = (np.array([sx, sy]) - 1) * 0.5 * (1 << _SHIFT)
    return [np.round(c * scale + offset).astype(np.int32) for c in contours]


def draw_overlay(frame: np.ndarray, mask: np.ndarray, in_place: bool = False) -> np.ndarray:
    """`frame` (HxWx3 uint8 BGR) with `mask` (any size; nonzero = polyp) tinted and outlined.

    A smaller mask is stretched to the frame by nearest neighbour, as `predict` does (the
    tinted pixels match `predict`'s mask exactly when the size ratios are integers)."""
    out = frame if in_place else frame.copy()
    h, w = frame.shape[:2]
    contours = outline(mask, h, w)
    if not contours:
        return out
    # Blend only inside the bounding box, and stretch only that part of the mask.
    bx, by, bw, bh = cv2.boundingRect(mask)
    sy, sx = h / mask.shape[0], w / mask.shape[1]
    x0, x1 = round(bx * sx), round((bx + bw) * sx)
    y0, y1 = round(by * sy), round((by + bh) * sy)
    box_mask = mask[by : by + bh, bx : bx + bw]
    if box_mask.shape != (y1 - y0, x1 - x0):
        box_mask = cv2.resize(box_mask, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    roi = out[y0:y1, x0:x1]
    tinted = cv2.add(cv2.convertScaleAbs(roi, alpha=1.0 - TINT_ALPHA),
                     tuple(c * TINT_ALPHA for c in TINT_BGR) + (0,))
    cv2.copyTo(tinted, box_mask, roi)  # writes through the view into `out`
    thickness = max(2, round(min(h, w) / 320))
    cv2.polylines(out, contours, True, OUTLINE_BGR, thickness, cv2.LINE_AA, shift=_SHIFT)
    return out


def draw_label(frame: np.ndarray, text: str) -> None:
    """A small white label on a dark box in the top-left corner (e.g. the FPS readout)."""
    scale = max(0.5, frame.shape[0] / 1400)
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = int(6 * scale)
    cv2.rectangle(frame, (0, 0), (tw + 2 * pad, th + base + 2 * pad), (0, 0, 0), cv2.FILLED)
    cv2.putText(frame, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
