"""Load-time preparation of the tensors: the exact folds of shared ARCHITECTURE.md.

- Down: GroupNorm affine -> BatchNorm -> unpadded 2x2 conv become one conv
  (the GroupNorm statistics stay).
- AGF: Conv3x3 -> BatchNorm becomes one conv.
Norms in front of zero-padded convs are NOT folded: the border would differ.
"""
from __future__ import annotations

import numpy as np

from .config import UltraSegConfig
from .ops.norm import batchnorm_scale_shift, fold_affine_into_unpadded_conv, fold_scale_shift_after_conv

BN_EPS = 1e-5


def _bn(t, name):
    return batchnorm_scale_shift(t[f"{name}.weight"], t[f"{name}.bias"], t[f"{name}.running_mean"],
                                 t[f"{name}.running_var"], BN_EPS)


def fold_params(cfg: UltraSegConfig, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Tensors with the exact folds applied; folded-away keys are removed, folded convs renamed."""
    t = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    p = dict(t)
    for i in (1, 2, 3):
        bn_scale, bn_shift = _bn(t, f"Down{i}.bn")
        # GN affine (gamma, beta) then BN (scale, shift): x*gamma*scale + beta*scale + shift
        scale = t[f"ebn{i}.weight"] * bn_scale
        shift = t[f"ebn{i}.bias"] * bn_scale + bn_shift
        p[f"down{i}.weight"], p[f"down{i}.bias"] = fold_affine_into_unpadded_conv(
            t[f"Down{i}.conv.weight"], t[f"Down{i}.conv.bias"], scale, shift)
        for k in (f"ebn{i}.weight", f"ebn{i}.bias", f"Down{i}.conv.weight", f"Down{i}.conv.bias",
                  f"Down{i}.bn.weight", f"Down{i}.bn.bias", f"Down{i}.bn.running_mean", f"Down{i}.bn.running_var"):
            del p[k]
    if cfg.fusion:
        sa = "multiscale_fusion.spatial_attention"
        scale, shift = _bn(t, f"{sa}.1")
        p["agf.attention.weight"], p["agf.attention.bias"] = fold_scale_shift_after_conv(
            t[f"{sa}.0.weight"], t[f"{sa}.0.bias"], scale, shift)
        for k in (f"{sa}.0.weight", f"{sa}.0.bias", f"{sa}.1.weight", f"{sa}.1.bias", f"{sa}.1.running_mean",
                  f"{sa}.1.running_var"):
            del p[k]
    return p
