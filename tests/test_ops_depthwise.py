"""AKF's alpha-blended depthwise pair: the 5x5 blend fold, the fused kernel against the reference
(odd widths included), the reference against torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops import steps
from npseg.ops.activation import relu_ref
from npseg.ops.channel_gate import GATE_SIGMOID, channel_gate_ref
from npseg.ops.conv import conv2d_ref
from npseg.ops.depthwise import PAD, akf, akf_blend_ref, blend_kernels_ref

SETTINGS = settings(max_examples=20, deadline=None)


def _weights(rng, c):
    kl, kd = rng.normal(size=(c, 1, 3, 3)), rng.normal(size=(c, 1, 3, 3))
    return kl, kd, rng.normal(size=(c, c, 1, 1)) / np.sqrt(c), rng.normal(size=c)


def test_reference_matches_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 10, 14))
    kl, kd, wg, bg = _weights(rng, 6)
    t = torch.from_numpy(x)[None]
    a = torch.sigmoid(F.conv2d(t.mean((2, 3), keepdim=True), torch.from_numpy(wg), torch.from_numpy(bg)))
    expected = a * F.conv2d(t, torch.from_numpy(kl), padding=1, groups=6) + (1 - a) * F.conv2d(
        t, torch.from_numpy(kd), padding=2, dilation=2, groups=6)
    np.testing.assert_allclose(akf_blend_ref(x, kl, kd, wg, bg), expected[0].numpy(), atol=1e-12)


def test_blend_is_one_5x5_depthwise_conv():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 9, 7))
    kl, kd, wg, bg = _weights(rng, 5)
    a = channel_gate_ref(x, wg, bg, GATE_SIGMOID)
    k5 = blend_kernels_ref(a, kl, kd)
    one_conv = conv2d_ref(x, k5, np.zeros(5), padding=2, groups=5)
    np.testing.assert_allclose(one_conv, akf_blend_ref(x, kl, kd, wg, bg), atol=1e-12)


def _run_akf(rng, c, c1, c2, h, w, pad, relu2):
    x = (rng.normal(size=(c, h, w)) + 0.5).astype(np.float32)
    kl, kd, wg, bg = _weights(rng, c)
    w1, b1 = (rng.normal(size=(c1, c)) / np.sqrt(c)).astype(np.float32), rng.normal(size=c1).astype(np.float32)
    padded = steps.padded_buffer(x, pad)
    f = akf_blend_ref(x.astype(np.float64), kl, kd, wg, bg)
    y = relu_ref(w1.astype(np.float64) @ f.reshape(c, -1) + b1[:, None])  # [C1, h*w]
    extra = {}
    if c2:
        w2, b2 = (rng.normal(size=(c2, c1)) / np.sqrt(c1)).astype(np.float32), rng.normal(size=c2).astype(np.float32)
        y = w2.astype(np.float64) @ y + b2[:, None]
        y = relu_ref(y) if relu2 else y
        extra = {"w2": w2, "b2": b2, "relu2": relu2}
    out = np.zeros((c2 or c1, h, w), np.float32)
    for step in steps.pad(x, pad, padded) + akf(padded, pad, h, w, kl, kd, wg, bg, w1, b1, out, **extra):
        step()
    return out, y.reshape(out.shape)


@SETTINGS
@given(c=st.integers(1, 36), c1=st.integers(1, 36), c2=st.sampled_from([0, 1, 5, 15, 60]), h=st.integers(1, 40),
       w=st.integers(1, 40), pad=st.integers(PAD, PAD + 1), relu2=st.booleans(),
       seed=st.integers(0, 99))
def test_akf_kernel(c, c1, c2, h, w, pad, relu2, seed):
    out, expected = _run_akf(np.random.default_rng(seed), c, c1, c2, h, w, pad, relu2)
    np.testing.assert_allclose(out, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_akf_at_a_full_resolution_width():
    """Several row tiles of a 256-wide map with AULUNet's odd first width (5 channels)."""
    out, expected = _run_akf(np.random.default_rng(2), 5, 5, 0, 37, 256, PAD, False)
    np.testing.assert_allclose(out, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_akf_refuses_a_thin_border():
    x = np.zeros((3, 4, 4), np.float32)
    kl = np.zeros((3, 1, 3, 3))
    with pytest.raises(ValueError):
        akf(steps.padded_buffer(x, 1), 1, 4, 4, kl, kl, np.zeros((3, 3)), np.zeros(3), np.zeros((3, 3), np.float32),
            np.zeros(3, np.float32), np.zeros((3, 4, 4), np.float32))
