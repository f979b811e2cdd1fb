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


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import inline, kernel  # noqa: E402


@inline
def add_row_stats(row, stats, c):
    """stats[c] += (sum, sum of squares) of a row, accumulated in float64: the statistics a
    GroupNorm of the row's map needs, gathered by the kernel that produced the row."""
    total, total_sq = 0.0, 0.0
    for x in range(row.size):
        v = np.float64(row[x])
        total += v
        total_sq += v * v
    stats[c, 0] += total
    stats[c, 1] += total_sq


@inline
def group_mean_rstd(total, total_sq, count, eps):
    """A group's mean and 1/std from its float64 sum and sum of squares over `count` values
    (biased variance, as GroupNorm); float64 makes E[x^2] - E[x]^2 safe at these sizes."""
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return mean, 1.0 / np.sqrt(var + eps)


@kernel
def group_norm_coeffs_nb(src, groups, eps, gamma, beta, scale, shift):
    """GroupNorm of [C,H,W] as a per-channel affine: GN(x)[c] = x[c] * scale[c] + shift[c].

    Sums in float64, one pass (see group_mean_rstd).
    The affine form lets the consumer (down conv input, upsample, max-pool) apply it on the fly.
    """
    c_n = src.shape[0]
    n = src.size // c_n
    flat = src.reshape(c_n, n)
    per_group = c_n // groups
    for g in range(groups):
        total = 0.0
        total_sq = 0.0
        for c in range(g * per_group, (g + 1) * per_group):
            row = flat[c]
            for i in range(n):
                v = np.float64(row[i])
                total += v
                total_sq += v * v
        mean, rstd = group_mean_rstd(total, total_sq, per_group * n, eps)
        for c in range(g * per_group, (g + 1) * per_group):
            scale[c] = rstd * gamma[c]
            shift[c] = beta[c] - mean * rstd * gamma[c]
