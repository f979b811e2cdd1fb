"""npseg: real-time polyp segmentation on one CPU core, NumPy + Numba, no PyTorch.

    import cv2, npseg
    mask = npseg.load("ultraseg-130k").predict(cv2.imread("frame.jpg"))  # HxW uint8, 1 = polyp
"""
import os

# npseg is a single-core engine: OpenBLAS's default of one thread per CPU makes its
# small matrix products fight each other (5-10x slower on a busy machine). Must be
# set before NumPy is first imported; a caller's explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .segmenter import Segmenter, load
from .weights import WeightsError

__version__ = "0.1.0"
__all__ = ["load", "Segmenter", "WeightsError", "__version__"]
