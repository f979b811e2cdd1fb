"""Frame -> network input: a resized BGR uint8 HxWx3 frame to planar float32 [3, H, W], the
channels in the file's colour order and normalised per channel (x = pixel * scale + shift; the
coefficients come from npseg.preprocessing.affine_coefficients)."""
from __future__ import annotations

import numpy as np

from ._jit import kernel


def to_planar_ref(img, rgb, scale, shift):
    planes = (img[:, :, ::-1] if rgb else img).transpose(2, 0, 1).astype(np.float32)
    return (planes * scale[:, None, None] + shift[:, None, None]).astype(np.float32)


@kernel
def to_planar_nb(img, rgb, scale, shift, out):
    """out[c, y, x] = img[y, x, c or 2 - c] * scale[c] + shift[c] in float32."""
    h, w = img.shape[0], img.shape[1]
    for c in range(3):
        src = 2 - c if rgb else c
        s, t = scale[c], shift[c]
        for y in range(h):
            line, dst = img[y], out[c, y]
            for x in range(w):
                dst[x] = np.float32(line[x, src]) * s + t


def nearest_source_index(n_src: int, n_dst: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST source index for each destination index: floor(i / (n_dst / n_src))."""
    inv_scale = 1.0 / (n_dst / n_src)  # the same double arithmetic as cv::resize
    return np.minimum(np.floor(np.arange(n_dst) * inv_scale).astype(np.int64), n_src - 1)
