"""Test-split metrics: per-image Dice, IoU and HD95 at the original mask resolution, Dice per
polyp-size bucket and the frames the model fails (Dice < 0.1), on a split part, on every frame of
a dataset (leave-one-dataset-out) or on CVC-ClinicDB's PraNet test frames.

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

import csv
import warnings
from pathlib import Path

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


def _torch_predict(model, seg, frame: np.ndarray) -> np.ndarray:
    """The deployed decision made by torch: npseg's preprocessing, argmax at the network size,
    nearest resize to the frame."""
    import cv2
    import torch

    from npseg.preprocessing import polyp_mask

    x = torch.from_numpy(seg.preprocess(frame))[None]
    with torch.no_grad():
        logits = model(x)[0].numpy()
    small = polyp_mask(logits, seg.weights.output).astype(np.uint8)
    return cv2.resize(small, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)


def _summary(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4)} if len(a) else {"mean": None, "std": None}


# polyp-size buckets: (name, lowest, highest) fraction of the frame the ground-truth mask covers
SIZE_BUCKETS = (("<1%", 0.0, 0.01), ("1-5%", 0.01, 0.05), ("5-20%", 0.05, 0.2), (">20%", 0.2, 1.0))
FAILED_DICE = 0.1  # a frame under this Dice counts as a failure (a missed or misplaced polyp)
PARTS = ("test", "val", "train", "all", "pranet-test")  # "all": every frame of the folder (leave-one-out)
PRANET_TEST_FILE = "pranet_test_ids.txt"  # the PraNet test frames of CVC-ClinicDB, for the literature


def size_bucket(area: float) -> str:
    """The SIZE_BUCKETS name of a mask covering `area` of the frame; "polyp-free" for 0."""
    if area == 0:
        return "polyp-free"
    return next(name for name, low, high in SIZE_BUCKETS if low <= area < high or high == 1.0)


def _size_table(rows: list[dict]) -> dict:
    """Per size bucket (and polyp-free frames): frame count, mean Dice, frames under FAILED_DICE."""
    table = {}
    for name in [b[0] for b in SIZE_BUCKETS] + ["polyp-free"]:
        dice = [r["dice"] for r in rows if r["size_bucket"] == name]
        table[name] = {"n": len(dice), "dice": _summary(dice)["mean"],
                       "dice_below_0.1": int(sum(d < FAILED_DICE for d in dice))}
    return table


def _frames_to_score(root, name: str, splits: dict | None, part: str, pairs: dict) -> tuple[list[str], dict]:
    """The stems `part` names in this folder, and what the result should say about them."""
    from . import data as D

    if part == "all":
        return sorted(pairs), {"frames": "every frame of the folder"}
    if part == "pranet-test":
        ids = Path(root) / PRANET_TEST_FILE
        if not ids.exists():
            raise D.DataError(f"{ids}: no PraNet test list in this folder (CVC-ClinicDB has one)")
        stems = ids.read_text().split()
        if splits is None:
            seen = "unknown (no split recorded)"
        else:  # a dataset the recorded splits do not name is one the model never trained on
            split = splits.get(name, {"train": [], "val": []})
            seen = len(set(stems) & (set(split["train"]) | set(split["val"])))
        return stems, {"frames": f"the {len(stems)} PraNet test frames", "in_this_model's_train_or_val": seen,
                       "note": "PraNet's frames share video sequences with training frames unless their sequences "
                               "are all in the test split: for comparison with the literature only"}
    if splits is None or name not in splits:
        raise D.DataError(f"no split for dataset {name!r} (have {sorted(splits or {})}); the model was not trained "
                          "on it: pass its split file with --splits, or --part all to score every frame")
    return list(splits[name][part]), {}


def evaluate(weights_path, data_roots, splits: dict | None = None, part: str = "test", cross_check: bool = True,
             backend: str | None = None, skip_bad: bool = False, limit: int | None = None, per_image_csv=None,
             progress: bool = True) -> dict:
    """Per dataset: mean/std of Dice, IoU, HD95 on `part` (a split part, "all" frames of the folder
    or the "pranet-test" frames), predicted by npseg at the original mask resolution, with Dice per
    polyp-size bucket and the count of frames under FAILED_DICE; with `cross_check`, torch's Dice on
    the same weights too. `splits` maps dataset name -> split; default: the weights' provenance."""
    import npseg

    from . import data as D
    from .models import torch_model_from_weights

    if part not in PARTS:
        raise ValueError(f"part {part!r}: one of {PARTS}")
    seg = npseg.load(weights_path, backend=backend)
    if splits is None:
        splits = seg.weights.provenance.get("splits")
        if not splits and part != "all":
            raise D.DataError(f"{weights_path}: no splits in its provenance; pass the run's split files (--splits)")
    model = torch_model_from_weights(weights_path)[0] if cross_check else None
    results, rows = {}, []
    for root in data_roots:
        packed = D.pack_info(root)
        if packed is not None:
            raise D.DataError(f"{root}: a packed copy (train and validation frames resized to "
                              f"{packed['size'][0]}x{packed['size'][1]}, no test frames); evaluate on the original "
                              f"folder, {packed['source']}, at the frames' own resolution")
        name = D.dataset_name(root)
        pairs = {p.stem: p for p in D.list_pairs(root, skip_bad=skip_bad)}
        stems, notes = _frames_to_score(root, name, splits, part, pairs)
        scored = _score_frames(seg, model, name, pairs, stems[:limit] if limit else stems, skip_bad,
                               f"eval {name} {part}" if progress else None)
        results[name] = {**_dataset_result(scored, model is not None), **notes}
        rows += scored
    if per_image_csv and rows:
        with open(per_image_csv, "w", newline="", errors="backslashreplace") as f:  # stems may not be UTF-8
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return {"part": part, "backend": seg.backend, "resolution": "original mask size (predict at "
            f"{seg.input_size[0]}x{seg.input_size[1]}, nearest resize)", "datasets": results}


def _score_frames(seg, model, name: str, pairs: dict, stems: list[str], skip_bad: bool,
                  progress: str | None) -> list[dict]:
    """One row per frame: Dice, IoU, HD95, the polyp's size bucket (and torch's Dice with `model`)."""
    from . import data as D

    rows = []
    it = stems
    if progress:
        from tqdm import tqdm
        it = tqdm(stems, desc=progress, mininterval=5)
    for stem in it:
        if stem not in pairs:
            raise D.DataError(f"{name}: the split names {stem!r} but there is no such image/mask pair")
        try:
            frame, gt = D.read_pair(pairs[stem])
        except D.DataError as e:
            if not skip_bad:
                raise
            warnings.warn(f"skipping {e}", stacklevel=2)
            continue
        pred = seg.predict(frame)
        d, j = dice_iou(pred, gt)
        row = {"dataset": name, "stem": stem, "dice": d, "iou": j, "hd95": hd95(pred, gt),
               "polyp_area": round(float(gt.mean()), 6), "size_bucket": size_bucket(float(gt.mean())),
               "pred_empty": not pred.any()}
        if model is not None:
            row["torch_dice"] = dice_iou(_torch_predict(model, seg, frame), gt)[0]
        rows.append(row)
    return rows


def _dataset_result(rows: list[dict], cross_check: bool) -> dict:
    dice = [r["dice"] for r in rows]
    res = {"n": len(rows), "dice": _summary(dice), "iou": _summary([r["iou"] for r in rows]),
           "hd95": _summary([r["hd95"] for r in rows]),
           "empty_ground_truth": sum(r["size_bucket"] == "polyp-free" for r in rows),
           "one_mask_empty": sum((r["size_bucket"] == "polyp-free") != r["pred_empty"] for r in rows),
           "dice_below_0.1": int(sum(d < FAILED_DICE for d in dice)), "by_polyp_size": _size_table(rows)}
    if cross_check and rows:  # HD95 = image diagonal where one mask is empty
        res["torch_dice"] = _summary([r["torch_dice"] for r in rows])
        res["npseg_torch_dice_diff"] = float(abs(np.mean(dice) - np.mean([r["torch_dice"] for r in rows])))
    return res
