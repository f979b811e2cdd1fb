"""Normalisations: NumPy reference, and the exact load-time folds."""
from __future__ import annotations

import numpy as np


def group_norm_ref(x, groups, weight=None, bias=None, eps=1e-5):
    """GroupNorm of one image [C,H,W]; biased variance; affine optional (it may be folded away)."""
    c = x.shape[0]
    xg = x.reshape(groups, -1)
    mean = xg.mean(1, keepdims=True)
    var = ((xg - mean) ** 2).mean(1, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * weight.reshape(c, 1, 1) + bias.reshape(c, 1, 1)
    return y


def layer_norm_cf_ref(x, weight, bias, eps=1e-6):
    """Channels-first LayerNorm: per pixel over the channel axis of [C,H,W]."""
    mean = x.mean(0, keepdims=True)
    var = ((x - mean) ** 2).mean(0, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight[:, None, None] + bias[:, None, None]


def batchnorm_scale_shift(weight, bias, running_mean, running_var, eps=1e-5):
    """Inference BN as y = x*scale + shift."""
    scale = weight / np.sqrt(running_var + eps)
    return scale, bias - running_mean * scale


def fold_affine_into_unpadded_conv(w, b, scale, shift):
    """conv(x*scale + shift) for a conv WITHOUT padding == conv'(x); exact since every tap reads real pixels."""
    w2 = w * scale[None, :, None, None]
    b2 = b + np.einsum("oikl,i->o", w, shift)
    return w2.astype(w.dtype), b2.astype(b.dtype)


def fold_scale_shift_after_conv(w, b, scale, shift):
    """conv(x)*scale + shift == conv'(x): a per-output-channel affine after any conv folds exactly."""
    return (w * scale[:, None, None, None]).astype(w.dtype), (b * scale + shift).astype(b.dtype)
