"""Validation of the frames handed to predict(): what is accepted, converted or refused.

Accepted as is (no copy, any memory layout: non-contiguous views, negative
strides and read-only arrays all work, because cv2.resize copies only when it
must):
    HxWx3 uint8, BGR channel order (what cv2.imread / cv2.VideoCapture give).

Accepted by a documented conversion (the caller's array is never modified):
    HxW or HxWx1 uint8 grayscale  -> the gray value copied to B, G and R
                                     (same as cv2.COLOR_GRAY2BGR);
    HxWx4 uint8 BGRA              -> the alpha channel dropped (as cv2.COLOR_BGRA2BGR;
                                     a view, no copy);
    float16/32/64 in [0, 1]       -> round(x * 255) to uint8, then the rules above
                                     (8 bits is what the network was trained on).

Refused, with a message that says what was given and what is expected:
    not a numpy array, or a bool/integer-other-than-uint8/complex/object dtype -> TypeError;
    any other number of dimensions or channels, a side shorter than MIN_SIDE or
    longer than MAX_SIDE, NaN/inf or values outside [0, 1] in a float frame -> ValueError.
"""
from __future__ import annotations

import numpy as np

MIN_SIDE = 16  # a smaller frame carries nothing a 256x256 network input could use
MAX_SIDE = 8192  # 8K video; beyond this a frame is almost surely not a video frame
_EXPECTED = "an HxWx3 uint8 BGR image (as cv2.imread / cv2.VideoCapture give)"


def _describe(frame: np.ndarray) -> str:
    return f"shape {frame.shape} dtype {frame.dtype}"


def _check_dtype(frame: np.ndarray) -> None:
    if frame.dtype == np.uint8 or frame.dtype.kind == "f":
        return
    if frame.dtype.kind in "iu":
        hint = ("; for 16-bit images use (frame >> 8).astype(np.uint8)" if frame.dtype == np.uint16
                else "; if the values are 0..255 use frame.astype(np.uint8)")
    else:
        hint = ""
    raise TypeError(f"frame dtype {frame.dtype} is not supported: expected uint8 (or float in [0, 1]){hint}")


def _check_shape(frame: np.ndarray) -> None:
    if frame.ndim not in (2, 3):
        hint = "; predict takes one frame: loop over a batch" if frame.ndim == 4 else ""
        raise ValueError(f"frame has {frame.ndim} dimension(s) ({_describe(frame)}), expected {_EXPECTED}{hint}")
    if frame.ndim == 3 and frame.shape[2] not in (1, 3, 4):
        hint = ("; it looks channels-first: use frame.transpose(1, 2, 0)"
                if frame.shape[0] in (1, 3, 4) else "")
        raise ValueError(
            f"frame has {frame.shape[2]} channels ({_describe(frame)}), expected 3 (BGR), "
            f"or 1 (gray) or 4 (BGRA), as the last axis{hint}"
        )
    h, w = frame.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:
        what = "empty" if h == 0 or w == 0 else "too small"
        raise ValueError(f"frame is {what}: {h}x{w} pixels ({_describe(frame)}), expected at least "
                         f"{MIN_SIDE}x{MIN_SIDE}")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ValueError(f"frame is too large: {h}x{w} pixels ({_describe(frame)}), the longest side accepted "
                         f"is {MAX_SIDE}; downscale it first (cv2.resize)")


def _float_to_uint8(frame: np.ndarray) -> np.ndarray:
    # min/max propagate NaN; an explicit isfinite check names inf as well
    if not np.isfinite(frame).all():
        bad = int(frame.size - np.count_nonzero(np.isfinite(frame)))
        raise ValueError(f"float frame holds {bad} NaN/inf value(s) ({_describe(frame)}), expected finite values in [0, 1]")
    lo, hi = float(frame.min()), float(frame.max())
    if lo < 0.0 or hi > 1.0:
        hint = "; for 0..255 values use frame.astype(np.uint8)" if hi <= 255.0 and lo >= 0.0 else ""
        raise ValueError(f"float frame values span [{lo:g}, {hi:g}] ({_describe(frame)}), expected [0, 1]{hint}")
    return np.rint(frame.astype(np.float32) * np.float32(255.0)).astype(np.uint8)


def check_frame(frame) -> np.ndarray:
    """Validate one video frame; return it as HxWx3 uint8 BGR (see the module doc for the policy)."""
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be a numpy array, {_EXPECTED}; got {type(frame).__name__}")
    _check_dtype(frame)
    _check_shape(frame)
    if frame.dtype != np.uint8:
        frame = _float_to_uint8(frame)
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    if frame.shape[2] == 4:
        return frame[:, :, :3]  # a view: cv2.resize reads it in place
    return frame
