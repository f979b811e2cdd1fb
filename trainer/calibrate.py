"""The decision threshold of a weights file, chosen on validation frames.

npseg marks a pixel as polyp where its probability exceeds the file's decision threshold (0.5
unless the file records one). `calibrate` scores a grid of thresholds on the validation splits the
file records (never its test splits), takes the one with the best mean Dice over the datasets
(ties: the one nearest 0.5), and writes a copy of the file that records it. The copy's metrics,
measured with the old decision, are dropped; `--evaluate` measures them again on the test splits.
"""
from __future__ import annotations

import cv2
import numpy as np

from .evaluate import SIZE_BUCKETS, dice_iou, size_bucket

GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))  # 0.1, 0.15, ..., 0.9
BUCKETS = [name for name, _, _ in SIZE_BUCKETS] + ["polyp-free"]


def _frame_dice(prob: np.ndarray, gt: np.ndarray, grid) -> list[float]:
    """Dice of `prob` > t for every t of the grid, the mask resized to the frame as predict() does."""
    h, w = gt.shape
    return [dice_iou(cv2.resize((prob > t).view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST), gt)[0]
            for t in grid]


def threshold_dice(seg, data_roots, grid=GRID, limit: int | None = None) -> dict:
    """Per dataset: frame count, mean Dice per threshold, and mean Dice per threshold in each
    polyp-size bucket, on the validation frames of the splits the file records."""
    from tqdm import tqdm

    from npseg.preprocessing import polyp_probability

    from . import data as D

    splits = seg.weights.provenance.get("splits") or {}
    result = {}
    for root in data_roots:
        name = D.dataset_name(root)
        if name not in splits:
            raise D.DataError(f"{seg.weights.path}: records no split for dataset {name!r} (has {sorted(splits)}); "
                              "calibrate on the datasets the file was trained on")
        pairs = {p.stem: p for p in D.list_pairs(root)}
        rows = []
        for stem in tqdm(splits[name]["val"][:limit], desc=f"calibrate {name} val", mininterval=5):
            frame, gt = D.read_pair(pairs[stem])
            prob = polyp_probability(seg.logits(frame), seg.weights.output)
            rows.append((size_bucket(float(gt.mean())), _frame_dice(prob, gt, grid)))
        by_size = {b: {"n": sum(s == b for s, _ in rows),
                       "dice": np.mean([d for s, d in rows if s == b], axis=0).round(4).tolist()}
                   for b in BUCKETS if any(s == b for s, _ in rows)}
        result[name] = {"n": len(rows), "dice": np.mean([d for _, d in rows], axis=0).round(4).tolist(),
                        "by_size": by_size}
    return result


def choose(per_dataset: dict, grid=GRID) -> float:
    """The threshold with the best mean over datasets of their mean Dice; ties go to the one nearest 0.5."""
    mean = np.mean([r["dice"] for r in per_dataset.values()], axis=0)
    best = max(mean)
    return min((t for t, m in zip(grid, mean) if m == best), key=lambda t: abs(t - 0.5))


def calibrated(weights, threshold: float, per_dataset: dict, grid=GRID):
    """A copy of `weights` that records `threshold` and how it was chosen; its metrics are dropped."""
    from dataclasses import replace

    from npseg.preprocessing import decision_threshold

    record = {"chosen_on": "validation splits", "rule": "best mean Dice over the datasets", "grid": list(grid),
              "previous": decision_threshold(weights.output), "validation": per_dataset}
    return replace(weights, output={**weights.output, "threshold": float(threshold)},
                   provenance={**weights.provenance, "decision_threshold": record}, metrics={})


def table(per_dataset: dict, grid, chosen: float) -> str:
    """Validation Dice per threshold: each dataset, their mean, and the polyp-size buckets pooled over them."""
    names = list(per_dataset)
    buckets = [b for b in BUCKETS if any(b in r["by_size"] for r in per_dataset.values())]
    pooled = {}
    for b in buckets:  # mean over every frame of the bucket, whichever dataset it is from
        parts = [r["by_size"][b] for r in per_dataset.values() if b in r["by_size"]]
        pooled[b] = np.sum([np.multiply(p["dice"], p["n"]) for p in parts], axis=0) / sum(p["n"] for p in parts)
    lines = ["threshold " + " ".join(f"{n:>13}" for n in names) + "      mean " + " ".join(f"{b:>10}" for b in buckets)]
    for i, t in enumerate(grid):
        vals = [per_dataset[n]["dice"][i] for n in names]
        lines.append(f"{t:9.2f} " + " ".join(f"{v:13.4f}" for v in vals) + f" {np.mean(vals):9.4f} "
                     + " ".join(f"{pooled[b][i]:10.4f}" for b in buckets) + ("  <- chosen" if t == chosen else ""))
    return "\n".join(lines)
