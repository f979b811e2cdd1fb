"""The attention gates of UltraLightUNet: CBAM channel and spatial attention, and the grouped
attention gate on a skip. NumPy references; Numba kernels below."""
from __future__ import annotations

import numpy as np

from .activation import relu_ref, sigmoid_ref
from .conv import conv2d_ref


def channel_attention_ref(x, w1, w2):
    """Channel gate [C] of x [C, H, W]: sigmoid(MLP(mean) + MLP(max)) over all positions, one MLP
    w2 @ relu(w1 @ v) (w1 [h, C, 1, 1], w2 [C, h, 1, 1], no biases) for both descriptors."""
    a, b = w1.reshape(w1.shape[0], -1), w2.reshape(w2.shape[0], -1)
    return sigmoid_ref(b @ relu_ref(a @ x.mean((1, 2))) + b @ relu_ref(a @ x.max((1, 2))))


def spatial_attention_ref(x, w):
    """Pixel gate [1, H, W] of x [C, H, W]: sigmoid of a 7x7 conv (w [1, 2, 7, 7], zero padding,
    no bias) of the channel mean and the channel max, in that order."""
    return sigmoid_ref(conv2d_ref(np.stack([x.mean(0), x.max(0)]), w, np.zeros(1, x.dtype), padding=3))


def attention_gate_ref(g, x, wg, bg, wx, bx, wpsi, bpsi):
    """Gate [1, h, w] on the skip x from the decoder feature g (both [C, h, w], BN folded):
    sigmoid(psi(relu(Gg(g) + Gx(x)))), Gg/Gx 3x3 convs with C/2 groups of 2 channels."""
    half = g.shape[0] // 2
    p = relu_ref(conv2d_ref(g, wg, bg, padding=1, groups=half) + conv2d_ref(x, wx, bx, padding=1, groups=half))
    return sigmoid_ref(conv2d_ref(p, wpsi, bpsi))
