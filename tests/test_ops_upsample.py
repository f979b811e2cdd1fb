"""2x bilinear upsampling, align_corners=False: reference vs torch, the Numba kernels vs the reference."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops._jit import numba
from npseg.ops.upsample import up2_bias_relu, up2_ref, up2_relu_head

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("h, w", [(1, 1), (1, 5), (4, 3), (8, 8)])
def test_reference_matches_torch(h, w):
    x = np.random.default_rng(h * w).standard_normal((3, h, w))
    expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None], scale_factor=2, mode="bilinear",
                                               align_corners=False)[0].numpy()
    assert np.abs(up2_ref(x) - expected).max() < 1e-12


@pytest.mark.skipif(numba is None, reason="needs numba")
@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 6), k=st.integers(1, 2), h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_kernels_match_reference(c, k, h, w, seed):
    rng = np.random.default_rng(seed)
    x, bias = rng.standard_normal((c, h, w)).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    head_w, head_b = rng.standard_normal((k, c, 1, 1)).astype(np.float32), rng.standard_normal(k).astype(np.float32)
    up, logits = np.zeros((c, 2 * h, 2 * w), np.float32), np.zeros((k, 2 * h, 2 * w), np.float32)
    for step in up2_bias_relu(x, bias, up) + up2_relu_head(x, bias, head_w, head_b, logits):
        step()
    expected = np.maximum(up2_ref(x.astype(np.float64)) + bias[:, None, None], 0.0)
    assert np.abs(up - expected).max() <= 1e-5
    expected_logits = np.einsum("kc,chw->khw", head_w[:, :, 0, 0].astype(np.float64), expected) + head_b[:, None, None]
    assert np.abs(logits - expected_logits).max() <= 1e-5 * max(1.0, np.abs(expected_logits).max())
