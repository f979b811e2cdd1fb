"""Pointwise activations and channel softmax: NumPy reference."""
from __future__ import annotations

import numpy as np
from scipy.special import erf


def gelu_ref(x):
    """Exact (erf) GELU."""
    return (0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))).astype(x.dtype)


def sigmoid_ref(x):
    return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype)


def relu_ref(x):
    return np.maximum(x, 0)


def softmax_channels_ref(x):
    """Softmax over axis 0 of [C,H,W]."""
    e = np.exp(x - x.max(0, keepdims=True))
    return e / e.sum(0, keepdims=True)
