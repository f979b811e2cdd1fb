"""npseg: real-time polyp segmentation on one CPU core, NumPy + Numba, no PyTorch.

    import cv2, npseg
    mask = npseg.load("ultraseg-130k").predict(cv2.imread("frame.jpg"))  # HxW uint8, 1 = polyp
"""
import os

# npseg is a single-core engine: OpenBLAS's default of one thread per CPU makes its
# small matrix products fight each other (5-10x slower on a busy machine). Must be
# set before NumPy is first imported; a caller's explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
__all__ = ["load", "Segmenter", "WeightsError", "__version__"]

# imported on first use, so that `npseg` (the command) can tune its process before NumPy and Numba load
_PUBLIC = {"load": "segmenter", "Segmenter": "segmenter", "WeightsError": "weights"}


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)


def __dir__():
    return sorted(list(globals()) + list(_PUBLIC))
