"""Frame -> network input: BGR uint8 HxWx3 to planar RGB float32 in [0, 1] (Numba kernel)."""
from __future__ import annotations

import numpy as np

from ._jit import kernel

INV_255 = np.float32(1.0 / 255.0)


def bgr_to_rgb_planar_ref(img):
    return (img[:, :, ::-1].transpose(2, 0, 1) * INV_255).astype(np.float32)


@kernel
def bgr_to_rgb_planar_nb(img, out):
    """out[c, y, x] = img[y, x, 2 - c] / 255 (same float32 product as the reference)."""
    h, w = img.shape[0], img.shape[1]
    for y in range(h):
        line = img[y]
        r, g, b = out[0, y], out[1, y], out[2, y]
        for x in range(w):
            r[x] = np.float32(line[x, 2]) * INV_255
            g[x] = np.float32(line[x, 1]) * INV_255
            b[x] = np.float32(line[x, 0]) * INV_255


def nearest_source_index(n_src: int, n_dst: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST source index for each destination index: floor(i / (n_dst / n_src))."""
    inv_scale = 1.0 / (n_dst / n_src)  # the same double arithmetic as cv::resize
    return np.minimum(np.floor(np.arange(n_dst) * inv_scale).astype(np.int64), n_src - 1)

