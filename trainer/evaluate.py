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


def torch_model_from_weights(path):
    """The torch UltraSeg holding an npseg weights file's tensors (eval mode)."""
    import torch

    from npseg.weights import load as load_weights

    from .model import build

    w = load_weights(path)
    model = build(w.config)
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in w.tensors.items()},
                                                strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # BN step counters are not exported
    if missing or unexpected:
        raise ValueError(f"{path}: tensors do not fit the torch model: missing {missing}, unexpected {unexpected}")
    return model.eval()


def _torch_predict(model, seg, frame: np.ndarray) -> np.ndarray:
    """The deployed decision made by torch: npseg's preprocessing, argmax at the network size,
    nearest resize to the frame."""
    import cv2
    import torch

    x = torch.from_numpy(seg.preprocess(frame))[None]
    with torch.no_grad():
        lo = model(x, side_outputs=False)[0]
    small = (lo[1] > lo[0]).numpy().astype(np.uint8)
    return cv2.resize(small, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)


def _summary(values: list[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4)}


def evaluate(weights_path, data_roots, splits: dict | None = None, part: str = "test", cross_check: bool = True,
             backend: str | None = None, skip_bad: bool = False, limit: int | None = None, per_image_csv=None,
             progress: bool = True) -> dict:
    """Per-dataset mean/std of Dice, IoU, HD95 on `part` of each dataset's split, predicted by npseg
    at the original mask resolution; with `cross_check`, torch's Dice on the same weights too.
    `splits` maps dataset name -> split; default: the splits recorded in the weights' provenance."""
    import csv

    import npseg

    from . import data as D

    seg = npseg.load(weights_path, backend=backend)
    if splits is None:
        splits = seg.weights.provenance.get("splits")
        if not splits:
            raise D.DataError(f"{weights_path}: no splits in its provenance; pass the run's split files (--splits)")
    model = torch_model_from_weights(weights_path) if cross_check else None
    results, rows = {}, []
    for root in data_roots:
        name = D.dataset_name(root)
        packed = D.pack_info(root)
        if packed is not None:
            raise D.DataError(f"{root}: a packed copy (train and validation frames resized to "
                              f"{packed['size'][0]}x{packed['size'][1]}, no test frames); evaluate on the original "
                              f"folder, {packed['source']}, at the frames' own resolution")
        if name not in splits:
            raise D.DataError(f"no split for dataset {name!r} (have {sorted(splits)}); the model was not trained "
                             f"on it: pass its split file with --splits to evaluate on it anyway")
        pairs = {p.stem: p for p in D.list_pairs(root, skip_bad=skip_bad)}
        stems = splits[name][part][:limit] if limit else splits[name][part]
        scores = {"dice": [], "iou": [], "hd95": [], "torch_dice": []}
        empty_gt = one_empty = 0
        it = stems
        if progress:
            from tqdm import tqdm
            it = tqdm(stems, desc=f"eval {name} {part}", mininterval=5)
        for stem in it:
            if stem not in pairs:
                raise D.DataError(f"{root}: the split names {stem!r} but there is no such image/mask pair")
            try:
                frame, gt = D.read_pair(pairs[stem])
            except D.DataError as e:
                if not skip_bad:
                    raise
                import warnings
                warnings.warn(f"skipping {e}", stacklevel=2)
                continue
            pred = seg.predict(frame)
            d, j = dice_iou(pred, gt)
            h = hd95(pred, gt)
            empty_gt += int(not gt.any())
            one_empty += int(gt.any() != pred.any())
            row = {"dataset": name, "stem": stem, "dice": d, "iou": j, "hd95": h}
            scores["dice"].append(d)
            scores["iou"].append(j)
            scores["hd95"].append(h)
            if model is not None:
                row["torch_dice"] = dice_iou(_torch_predict(model, seg, frame), gt)[0]
                scores["torch_dice"].append(row["torch_dice"])
            rows.append(row)
        res = {"n": len(scores["dice"]), "dice": _summary(scores["dice"]), "iou": _summary(scores["iou"]),
               "hd95": _summary(scores["hd95"]), "empty_ground_truth": empty_gt,
               "one_mask_empty": one_empty}  # HD95 = image diagonal for these
        if model is not None:
            res["torch_dice"] = _summary(scores["torch_dice"])
            res["npseg_torch_dice_diff"] = float(abs(np.mean(scores["dice"]) - np.mean(scores["torch_dice"])))
        results[name] = res
    if per_image_csv:
        with open(per_image_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return {"part": part, "backend": seg.backend, "resolution": "original mask size (predict at "
            f"{seg.input_size[0]}x{seg.input_size[1]}, nearest resize)", "datasets": results}
