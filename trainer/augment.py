"""Augmentation for hospitals the model has never seen: geometry, scale, light, optics, sensor, codec.

An augmentation is named by a spec: a preset, optionally followed by ':' and a comma-separated
list of parts or groups to add (+name) or remove (-name), so that a leave-one-dataset-out run
can ablate any part:

    flips-rotations                  flips and rotation only (the baseline recipe)
    domain-shift                     every part
    domain-shift:-jpeg,-specular     every part but JPEG re-compression and specular highlights
    flips-rotations:+photometric     the baseline plus the photometric group

Each part fires with its own probability and draws from its own generator, seeded from the
sample's generator in a fixed order, so removing one part leaves every other part's draws as they
were. Images are HxWx3 uint8 RGB at the network size, masks HxW uint8 {0,1}; a geometric part
moves image and mask with the same warp (image bilinear, mask nearest, black and 0 outside the frame).
"""
from __future__ import annotations

import cv2
import numpy as np

# part -> (probability per sample, what it does); the order fixes each part's generator
PARTS = {
    "flips": (1.0, "horizontal and vertical flip, each p 0.5"),
    "rotation": (1.0, "rotation in [-30, 30] degrees"),
    "zoom_out": (0.25, "zoom out to 0.4-0.9 of the frame at a random place, black border (small polyps)"),
    "resized_crop": (0.25, "random resized crop: 35-100 % of the area, aspect 3/4-4/3 (not with zoom_out)"),
    "brightness": (0.5, "brightness x0.7-1.3"),
    "contrast": (0.5, "contrast x0.7-1.3 about the mean grey"),
    "gamma": (0.5, "gamma 0.7-1.4"),
    "hue_saturation": (0.5, "hue +-12 degrees, saturation x0.7-1.3"),
    "temperature": (0.5, "colour temperature: red x(1+t), blue x(1-t), t in [-0.12, 0.12]"),
    "channel_gain": (0.5, "per-channel gain x0.88-1.12"),
    "specular": (0.3, "1-6 soft white specular highlights"),
    "blur": (0.25, "Gaussian (sigma 0.5-1.8) or motion blur (3-9 px)"),
    "noise": (0.25, "Gaussian sensor noise, sigma 2-8 grey levels"),
    "jpeg": (0.3, "JPEG re-compression at quality 30-90"),
}
GROUPS = {
    "photometric": ("brightness", "contrast", "gamma", "hue_saturation", "temperature", "channel_gain"),
    "scale": ("zoom_out", "resized_crop"),
}
PRESETS = {"flips-rotations": ("flips", "rotation"), "domain-shift": tuple(PARTS)}


class AugmentError(ValueError):
    """An augmentation spec that names no preset, part or group; the message lists them."""


def parse(spec: str) -> frozenset[str]:
    """The parts an augmentation spec turns on (see the module docstring)."""
    preset, _, changes = spec.partition(":")
    if preset not in PRESETS:
        raise AugmentError(f"augmentation {spec!r}: start with a preset, one of {sorted(PRESETS)}")
    parts = set(PRESETS[preset])
    for change in filter(None, (c.strip() for c in changes.split(","))):
        sign, name = change[0], change[1:]
        named = GROUPS.get(name, (name,) if name in PARTS else None)
        if sign not in "+-" or named is None:
            raise AugmentError(f"augmentation {spec!r}: {change!r} is not +NAME or -NAME with NAME one of the "
                               f"parts {list(PARTS)} or groups {sorted(GROUPS)}")
        parts = parts | set(named) if sign == "+" else parts - set(named)
    return frozenset(parts)


def describe(spec: str) -> str:
    """What a spec does, for the run's provenance: its parts in order with their probabilities."""
    on = parse(spec)
    return "; ".join(f"{what} (p {p:g})" if p < 1 else what for name, (p, what) in PARTS.items() if name in on)


def augment(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            parts: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
    """Augmented (image, mask): geometry and scale first (image and mask together), then light,
    highlights, optics, sensor noise and the codec, in a camera's order."""
    seeds = rng.integers(0, 2**63, size=len(PARTS))
    draw = {name: np.random.default_rng(int(s)) for name, s in zip(PARTS, seeds)}
    fires = {name: name in parts and draw[name].random() < p for name, (p, _) in PARTS.items()}
    img, mask = _geometry(np.asarray(img), np.asarray(mask), draw, fires)
    x = img.astype(np.float32)
    for name, apply in _PIXEL_PARTS:
        if fires[name]:
            x = apply(x, draw[name])
    return np.clip(x + 0.5, 0, 255).astype(np.uint8), mask


def _geometry(img, mask, draw, fires):
    if fires["flips"]:
        g = draw["flips"]
        if g.random() < 0.5:
            img, mask = img[:, ::-1], mask[:, ::-1]
        if g.random() < 0.5:
            img, mask = img[::-1], mask[::-1]
    h, w = mask.shape
    warp = np.eye(3)
    if fires["rotation"]:
        angle = draw["rotation"].uniform(-30.0, 30.0)
        warp = np.vstack([cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, 1.0), [0, 0, 1]])
    if fires["zoom_out"]:
        warp = _zoom_out(draw["zoom_out"], h, w) @ warp
    elif fires["resized_crop"]:
        warp = _resized_crop(draw["resized_crop"], h, w) @ warp
    if np.array_equal(warp, np.eye(3)):
        return np.ascontiguousarray(img), np.ascontiguousarray(mask)
    img = cv2.warpAffine(np.ascontiguousarray(img), warp[:2], (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = cv2.warpAffine(np.ascontiguousarray(mask), warp[:2], (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return img, mask


def _zoom_out(g: np.random.Generator, h: int, w: int) -> np.ndarray:
    """The frame shrunk by 0.4-0.9 (log-uniform) and placed anywhere inside itself."""
    s = float(np.exp(g.uniform(np.log(0.4), np.log(0.9))))
    tx, ty = g.uniform(0, (1 - s) * w), g.uniform(0, (1 - s) * h)
    return np.array([[s, 0, tx], [0, s, ty], [0, 0, 1]])


def _resized_crop(g: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A crop of 35-100 % of the area with aspect 3/4-4/3, anywhere in the frame, stretched to the frame."""
    area, aspect = g.uniform(0.35, 1.0), float(np.exp(g.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(w, w * np.sqrt(area * aspect)), min(h, h * np.sqrt(area / aspect))
    x0, y0 = g.uniform(0, w - cw), g.uniform(0, h - ch)
    sx, sy = w / cw, h / ch
    return np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy], [0, 0, 1]])


def _brightness(x, g):
    return x * np.float32(g.uniform(0.7, 1.3))


def _contrast(x, g):
    mean = np.float32((x @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
    return (x - mean) * np.float32(g.uniform(0.7, 1.3)) + mean


def _gamma(x, g):
    gamma = np.float32(np.exp(g.uniform(np.log(0.7), np.log(1.4))))
    return np.float32(255.0) * (np.clip(x, 0, 255) / np.float32(255.0)) ** gamma


def _hue_saturation(x, g):
    hsv = cv2.cvtColor(np.clip(x, 0, 255) / np.float32(255.0), cv2.COLOR_RGB2HSV)  # H in degrees, S and V in 0..1
    hsv[..., 0] = (hsv[..., 0] + np.float32(g.uniform(-12.0, 12.0))) % np.float32(360.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * np.float32(g.uniform(0.7, 1.3)), 0, 1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * np.float32(255.0)


def _temperature(x, g):
    t = g.uniform(-0.12, 0.12)
    return x * np.array([1 + t, 1.0, 1 - t], np.float32)


def _channel_gain(x, g):
    return x * g.uniform(0.88, 1.12, size=3).astype(np.float32)


def _specular(x, g):
    """Small saturated reflections of the light source: soft white ellipses, anywhere."""
    h, w = x.shape[:2]
    spots = np.zeros((h, w), np.float32)
    for _ in range(int(g.integers(1, 7))):
        centre = (int(g.integers(0, w)), int(g.integers(0, h)))
        axes = (max(1, int(g.uniform(0.005, 0.04) * w)), max(1, int(g.uniform(0.005, 0.04) * h)))
        cv2.ellipse(spots, centre, axes, float(g.uniform(0, 180)), 0, 360, 1.0, -1)
    alpha = np.clip(cv2.GaussianBlur(spots, (0, 0), 1.0) * 1.5, 0, 1)[..., None]
    return x * (1 - alpha) + np.float32(252.0) * alpha


def _blur(x, g):
    if g.random() < 0.5:
        return cv2.GaussianBlur(x, (0, 0), g.uniform(0.5, 1.8))
    length = int(g.integers(3, 10))
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2] = 1.0 / length
    rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(g.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (length, length))
    return cv2.filter2D(x, -1, kernel / max(float(kernel.sum()), 1e-6), borderType=cv2.BORDER_REFLECT_101)


def _noise(x, g):
    return x + g.normal(0.0, g.uniform(2.0, 8.0), size=x.shape).astype(np.float32)


def _jpeg(x, g):
    bgr = np.clip(x[..., ::-1] + 0.5, 0, 255).astype(np.uint8)  # the codec's colour transform expects BGR
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(g.integers(30, 91))])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)


_PIXEL_PARTS = (("brightness", _brightness), ("contrast", _contrast), ("gamma", _gamma),
                ("hue_saturation", _hue_saturation), ("temperature", _temperature),
                ("channel_gain", _channel_gain), ("specular", _specular), ("blur", _blur), ("noise", _noise),
                ("jpeg", _jpeg))
