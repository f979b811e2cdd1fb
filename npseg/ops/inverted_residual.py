"""The multi-kernel inverted residual block's depthwise stage: NumPy reference.

Three depthwise branches (1x1, 3x3, 5x5, zero padding k // 2), each + bias (BN folded) and
ReLU6, summed.
"""
from __future__ import annotations

from .activation import relu6_ref
from .conv import conv2d_ref


def multi_kernel_depthwise_ref(x, weights, biases):
    """x [E, H, W]; weights [E, 1, k, k] for k = 1, 3, 5; biases [E] each -> [E, H, W]."""
    out = 0
    for w, b in zip(weights, biases):
        out = out + relu6_ref(conv2d_ref(x, w, b, padding=w.shape[2] // 2, groups=x.shape[0]))
    return out
