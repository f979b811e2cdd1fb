"""GSA's normalisation core as one Numba kernel, and its NumPy reference.

LN1 -> multiply by the spatial gates -> channel shuffle -> LN2 is per pixel over
channels; one kernel does it in two sweeps instead of five array passes. LN1's
affine is folded into the (per-size constant) gates: (x̂·γ1 + β1)·g = x̂·(γ1 g) + β1 g.
"""
from __future__ import annotations

import numpy as np

from ._jit import kernel
from .norm import layer_norm_cf_ref

SHUFFLE = (1, 3, 0, 2)  # output chunk k is input chunk SHUFFLE[k]: concat(x2, x4, x1, x3)


def shuffle_source(channels: int) -> np.ndarray:
    """For each output channel, the input channel the group shuffle takes it from."""
    q = channels // 4
    return np.array([SHUFFLE[o // q] * q + o % q for o in range(channels)], dtype=np.int64)


def gsa_norm_ref(x, gamma1, beta1, gates, gamma2, beta2):
    """LN1 -> x_i * g_i -> shuffle -> LN2 with the reference ops (gates: [C,H,W], chunk i = g_i)."""
    y = layer_norm_cf_ref(x, gamma1, beta1) * gates
    return layer_norm_cf_ref(y[shuffle_source(x.shape[0])], gamma2, beta2)


@kernel
def channel_mean_nb(flat, mean):
    """Per-pixel mean over the channel axis of [C, P], summing whole rows (vectorises over P)."""
    c_n, n = flat.shape
    mean[:] = 0.0
    for c in range(c_n):
        row = flat[c]
        for i in range(n):
            mean[i] += row[i]
    inv_c = np.float32(1.0 / c_n)
    for i in range(n):
        mean[i] *= inv_c


@kernel
def _channel_stats(flat, eps, mean, rstd):
    """Per-pixel mean and 1/std over the channel axis of [C, P] (two passes, float32 rows)."""
    c_n, n = flat.shape
    channel_mean_nb(flat, mean)
    inv_c = np.float32(1.0 / c_n)
    rstd[:] = 0.0
    for c in range(c_n):
        row = flat[c]
        for i in range(n):
            dev = row[i] - mean[i]
            rstd[i] += dev * dev
    for i in range(n):
        rstd[i] = 1.0 / np.sqrt(rstd[i] * inv_c + eps)


@kernel
def gsa_norm_nb(src, gate_scale, gate_shift, source, gamma2, beta2, eps, out):
    """out = LN2(shuffle(LN1(src) * gates)); gate_scale = γ1·gates, gate_shift = β1·gates ([C,H,W])."""
    c_n = src.shape[0]
    n = src.size // c_n
    x, gs, gb, o = src.reshape(c_n, n), gate_scale.reshape(c_n, n), gate_shift.reshape(c_n, n), out.reshape(c_n, n)
    mean = np.empty(n, dtype=np.float32)
    rstd = np.empty(n, dtype=np.float32)
    _channel_stats(x, eps, mean, rstd)
    for oc in range(c_n):
        c = source[oc]
        xr, sr, br, orow = x[c], gs[c], gb[c], o[oc]
        for i in range(n):
            orow[i] = (xr[i] - mean[i]) * rstd[i] * sr[i] + br[i]
    _channel_stats(o, eps, mean, rstd)
    for oc in range(c_n):
        g, b = gamma2[oc], beta2[oc]
        orow = o[oc]
        for i in range(n):
            orow[i] = (orow[i] - mean[i]) * rstd[i] * g + b
