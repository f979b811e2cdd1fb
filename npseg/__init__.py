"""npseg: real-time polyp segmentation (UltraSeg) on one CPU core, NumPy + Numba, no PyTorch.

    import cv2, npseg
    mask = npseg.load("ultraseg-130k").predict(cv2.imread("frame.jpg"))  # HxW uint8, 1 = polyp
"""
from .segmenter import Segmenter, load
from .weights import WeightsError

__version__ = "0.1.0"
__all__ = ["load", "Segmenter", "WeightsError", "__version__"]
