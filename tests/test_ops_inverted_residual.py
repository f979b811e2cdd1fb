"""The multi-kernel depthwise stage, the bias-free 1x1 step and the fused first block: Numba vs NumPy
reference vs torch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops._jit import numba
from npseg.ops.activation import relu6_ref
from npseg.ops.inverted_residual import image_block, multi_kernel_depthwise, multi_kernel_depthwise_ref, pointwise
from npseg.ops.resize import max_pool2x2_ref

torch = pytest.importorskip("torch")
F = torch.nn.functional


def f64(a):
    return a.astype(np.float64)


def _weights(rng, e, dtype):
    return ([rng.standard_normal((e, 1, k, k)).astype(dtype) / k for k in (1, 3, 5)],
            [rng.standard_normal(e).astype(dtype) for _ in range(3)])


def test_reference_matches_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 9, 11))
    ws, bs = _weights(rng, 6, np.float64)
    expected = sum(F.relu6(F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w), torch.from_numpy(b),
                                    padding=w.shape[2] // 2, groups=6)) for w, b in zip(ws, bs))[0].numpy()
    assert np.abs(multi_kernel_depthwise_ref(x, ws, bs) - expected).max() < 1e-12


@pytest.mark.skipif(numba is None, reason="needs numba")
@settings(max_examples=20, deadline=None)
@given(e=st.integers(1, 12), h=st.integers(1, 20), w=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_kernel_matches_reference(e, h, w, seed):
    rng = np.random.default_rng(seed)
    pre, pre_bias = (2 * rng.standard_normal((e, h, w))).astype(np.float32), rng.standard_normal(e).astype(np.float32)
    ws, bs = _weights(rng, e, np.float32)
    out = np.zeros_like(pre)
    for step in multi_kernel_depthwise(pre, pre_bias, ws, bs, out):
        step()
    expanded = relu6_ref(pre.astype(np.float64) + pre_bias[:, None, None])
    expected = multi_kernel_depthwise_ref(expanded, [f64(a) for a in ws], [f64(a) for a in bs])
    assert np.abs(out - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.skipif(numba is None, reason="needs numba")
@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 9), h=st.integers(1, 10), w=st.integers(1, 10), seed=st.integers(0, 2**31))
def test_image_block_matches_reference(m, h, w, seed):
    """The first block fused with its pooling: expand 3 -> 6, depthwise stage, projection over
    [s; image], max-pool, bias."""
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((3, 2 * h, 2 * w)).astype(np.float32)
    expand, pre_bias = rng.standard_normal((6, 3, 1, 1)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    ws, bs = _weights(rng, 6, np.float32)
    w_proj, b_proj = rng.standard_normal((m, 9, 1, 1)).astype(np.float32), rng.standard_normal(m).astype(np.float32)
    out = np.zeros((m, h, w), np.float32)
    for step in image_block(image, expand, pre_bias, ws, bs, w_proj, b_proj, out):
        step()
    e = relu6_ref(np.einsum("ec,chw->ehw", f64(expand[:, :, 0, 0]), f64(image)) + f64(pre_bias)[:, None, None])
    s = multi_kernel_depthwise_ref(e, [f64(a) for a in ws], [f64(a) for a in bs])
    y = np.einsum("mk,khw->mhw", f64(w_proj[:, :, 0, 0]), np.concatenate([s, f64(image)]))
    expected = max_pool2x2_ref(y) + f64(b_proj)[:, None, None]
    assert np.abs(out - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


@settings(max_examples=10, deadline=None)
@given(cin=st.integers(1, 70), cout=st.integers(1, 40), h=st.integers(1, 9), w=st.integers(1, 9),
       seed=st.integers(0, 99))
def test_pointwise_is_the_matrix_product(cin, cout, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cin, h, w)).astype(np.float32)
    wt = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
    out = np.zeros((cout, h, w), np.float32)
    for step in pointwise(x, wt, out):
        step()
    assert np.allclose(out, np.einsum("oi,ihw->ohw", wt[:, :, 0, 0].astype(np.float64), x), atol=1e-4)
