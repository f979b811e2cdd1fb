"""Pre- and post-processing as data: what a weights file records, and the code that applies it.

A weights file's `preprocessing` (JSON) says how a frame becomes the network input:

    {"color_order": "RGB" | "BGR",                 channel order of the input planes
     "resize": "bilinear",                         cv2.resize INTER_LINEAR to input_size (aspect not kept)
     "normalize": {"kind": "affine", "scale": s, "mean": [m0, m1, m2], "std": [s0, s1, s2]}
                                                   x = (pixel * s - mean[c]) / std[c]
              or {"kind": "minmax", "low": lo, "high": hi}
                                                   per image, over all pixels and channels:
                                                   x = lo + (hi - lo) * (pixel - min) / (max - min)
              or {"kind": "standardize", "epsilon": e}
                                                   per image and channel, after the resize:
                                                   x = (pixel - mean[c]) / (std[c] + e)}

and its `output` how logits become a probability:

    {"activation": "softmax", "polyp_channel": 1}  softmax over the logit channels
    {"activation": "sigmoid", "polyp_channel": 0}  sigmoid of one logit

Both npseg and the trainer normalise through `affine_coefficients`, so a model
sees the same numbers in training and in deployment.
"""
from __future__ import annotations

import math

import numpy as np

RESIZE_MODES = ("bilinear",)
COLOR_ORDERS = ("RGB", "BGR")
ACTIVATIONS = ("softmax", "sigmoid")
# normalisation kind -> the frame statistics (image_statistics keys) its coefficients read
PER_IMAGE_KINDS = {"minmax": ("min", "max"), "standardize": ("mean", "std")}


def affine(scale: float = 1.0 / 255.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), color_order: str = "RGB") -> dict:
    return {"color_order": color_order, "resize": "bilinear",
            "normalize": {"kind": "affine", "scale": scale, "mean": list(mean), "std": list(std)}}


def minmax(low: float = 0.0, high: float = 255.0, color_order: str = "RGB") -> dict:
    return {"color_order": color_order, "resize": "bilinear", "normalize": {"kind": "minmax", "low": low, "high": high}}


def standardize(epsilon: float = 1.0, color_order: str = "RGB") -> dict:
    """Each channel to zero mean and unit spread over the frame: a camera's colour cast, gain and
    exposure change the input far less (epsilon, in pixel levels, bounds the gain of a flat frame)."""
    return {"color_order": color_order, "resize": "bilinear", "normalize": {"kind": "standardize", "epsilon": epsilon}}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e6


def preprocessing_problems(pre) -> list[str]:
    """Why `pre` is not a valid preprocessing record (empty list: it is)."""
    if not isinstance(pre, dict):
        return [f"preprocessing must be a JSON object, got {type(pre).__name__}"]
    problems = []
    if set(pre) != {"color_order", "resize", "normalize"}:
        problems.append(f"preprocessing keys are {sorted(pre)}, expected color_order, resize, normalize")
    if pre.get("color_order") not in COLOR_ORDERS:
        problems.append(f"color_order {pre.get('color_order')!r} is not one of {list(COLOR_ORDERS)}")
    if pre.get("resize") not in RESIZE_MODES:
        problems.append(f"resize {pre.get('resize')!r} is not one of {list(RESIZE_MODES)}")
    norm = pre.get("normalize")
    if isinstance(norm, dict) and norm.get("kind") == "affine" and set(norm) == {"kind", "scale", "mean", "std"}:
        vectors_ok = all(isinstance(norm[k], list) and len(norm[k]) == 3 and all(map(_number, norm[k]))
                         for k in ("mean", "std"))
        if not (_number(norm["scale"]) and norm["scale"] > 0 and vectors_ok and min(norm["std"]) > 0):
            problems.append(f"affine normalize needs a positive scale and 3 means and 3 positive stds, got {norm}")
    elif isinstance(norm, dict) and norm.get("kind") == "minmax" and set(norm) == {"kind", "low", "high"}:
        if not (_number(norm["low"]) and _number(norm["high"]) and norm["high"] > norm["low"]):
            problems.append(f"minmax normalize needs numbers low < high, got {norm}")
    elif isinstance(norm, dict) and norm.get("kind") == "standardize" and set(norm) == {"kind", "epsilon"}:
        if not (_number(norm["epsilon"]) and norm["epsilon"] > 0):
            problems.append(f"standardize normalize needs a positive epsilon, got {norm}")
    else:
        problems.append(f"normalize {norm!r} is not {{kind: affine, scale, mean, std}}, {{kind: minmax, low, high}} "
                        "or {kind: standardize, epsilon}")
    return problems


OUTPUT_KEYS = {"activation", "polyp_channel"}  # required; "threshold" is optional (default 0.5)
DEFAULT_THRESHOLD = 0.5


def output_problems(out, channels: int) -> list[str]:
    """Why `out` is not a valid output record for a network with `channels` logits."""
    if not isinstance(out, dict) or not OUTPUT_KEYS <= set(out) <= OUTPUT_KEYS | {"threshold"}:
        return [f"output must be {{activation, polyp_channel}} and optionally threshold, got {out!r}"]
    if type(out["polyp_channel"]) is not int:  # JSON false and 0.0 equal 0 but index arrays otherwise
        return [f"output polyp_channel must be an integer channel index, got {out['polyp_channel']!r}"]
    t = out.get("threshold", DEFAULT_THRESHOLD)
    if type(t) is not float or not 0.0 < t < 1.0:  # also refuses NaN, booleans and strings
        return [f"output threshold must be a probability strictly between 0 and 1, got {t!r}"]
    if out["activation"] == "softmax" and channels == 2 and out["polyp_channel"] in (0, 1):
        return []
    if out["activation"] == "sigmoid" and channels == 1 and out["polyp_channel"] == 0:
        return []
    return [f"output {out} does not fit {channels} logit channel(s): "
            "softmax needs 2 channels, sigmoid 1 (polyp_channel 0)"]


def decision_threshold(out: dict) -> float:
    """The polyp probability above which a pixel is polyp: the file's, chosen on validation frames
    (`python -m trainer calibrate`), or 0.5."""
    return out.get("threshold", DEFAULT_THRESHOLD)


def image_statistics(pixels: np.ndarray) -> dict:
    """What the per-image normalisations need of a frame's pixels [..., 3] (channels in the record's
    colour order): min and max over everything, and each channel's mean and (population) std."""
    flat = np.asarray(pixels, np.float64).reshape(-1, 3)
    return {"min": float(flat.min()), "max": float(flat.max()), "mean": flat.mean(0), "std": flat.std(0)}


_PLACEHOLDER_STATS = {"min": 0.0, "max": 255.0, "mean": np.zeros(3), "std": np.ones(3)}


def affine_coefficients(pre: dict, stats: dict | None = None):
    """(scale[3], shift[3]) float32 with network input = pixel * scale[c] + shift[c] (pixel in 0..255,
    planes already in `color_order`). The per-image kinds need the frame's `image_statistics`, the
    keys PER_IMAGE_KINDS names for each; without them
    a frame spanning 0..255 with mean 0 and std 1 stands in."""
    norm = pre["normalize"]
    stats = stats or _PLACEHOLDER_STATS
    if norm["kind"] == "affine":
        std = np.asarray(norm["std"], np.float64)
        scale = norm["scale"] / std
        shift = -np.asarray(norm["mean"], np.float64) / std
    elif norm["kind"] == "standardize":
        scale = 1.0 / (np.asarray(stats["std"], np.float64) + norm["epsilon"])
        shift = -np.asarray(stats["mean"], np.float64) * scale
    else:
        image_min, image_max = stats["min"], stats["max"]
        span = float(image_max) - float(image_min)
        s = (norm["high"] - norm["low"]) / span if span > 0 else 0.0
        scale = np.full(3, s)
        shift = np.full(3, norm["low"] - float(image_min) * s)
    return scale.astype(np.float32), shift.astype(np.float32)


def polyp_probability(logits: np.ndarray, out: dict, dst: np.ndarray | None = None) -> np.ndarray:
    """[K, h, w] logits -> [h, w] float32 polyp probability, as `out` says."""
    k = out["polyp_channel"]
    if out["activation"] == "softmax":  # two channels: p = 1 / (1 + exp(other - polyp))
        z = np.subtract(logits[1 - k], logits[k], out=dst)
    else:
        z = np.negative(logits[k], out=dst)
    np.exp(z, out=z)
    z += 1.0
    return np.reciprocal(z, out=z)


def polyp_mask(logits: np.ndarray, out: dict, dst: np.ndarray | None = None) -> np.ndarray:
    """[K, h, w] logits -> [h, w] bool, p > the decision threshold, without the exponential:
    p > t is the logit (or the softmax's logit difference) above log(t / (1 - t))."""
    k = out["polyp_channel"]
    t = decision_threshold(out)
    margin = np.float32(np.log(t / (1.0 - t)))
    if out["activation"] == "softmax":
        other = logits[1 - k] if margin == 0 else logits[1 - k] + margin
        return np.greater(logits[k], other, out=dst)
    return np.greater(logits[k], margin, out=dst)
