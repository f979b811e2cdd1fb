"""Average pooling: the 2x2 and global kernels against their references, the references against torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops import steps
from npseg.ops.pool import avg_pool2x2, avg_pool2x2_ref, global_avg_pool_nb, global_avg_pool_ref, padded_size

SETTINGS = settings(max_examples=20, deadline=None)


def test_references_match_torch():
    x = np.random.default_rng(0).normal(size=(7, 12, 18))
    t = torch.from_numpy(x)[None]
    np.testing.assert_allclose(avg_pool2x2_ref(x), F.avg_pool2d(t, 2)[0].numpy(), atol=1e-12)
    np.testing.assert_allclose(global_avg_pool_ref(x), F.adaptive_avg_pool2d(t, 1)[0, :, 0, 0].numpy(), atol=1e-12)


@SETTINGS
@given(c=st.integers(1, 9), h=st.integers(1, 12), w=st.integers(1, 20), pad=st.integers(0, 3), seed=st.integers(0, 99))
def test_avg_pool2x2_kernel_writes_the_interior(c, h, w, pad, seed):
    x = np.random.default_rng(seed).normal(size=(c, 2 * h, 2 * w)).astype(np.float32)
    out = np.full((c, padded_size(h, w, pad)), 7.0, np.float32)
    for step in avg_pool2x2(x, out, pad):
        step()
    wp = w + 2 * pad
    interior = out[:, :(h + 2 * pad) * wp].reshape(c, h + 2 * pad, wp)[:, pad:pad + h, pad:pad + w]
    np.testing.assert_allclose(interior, avg_pool2x2_ref(x.astype(np.float64)), atol=1e-6)
    border = np.ones(out.shape, bool)
    border[:, :(h + 2 * pad) * wp].reshape(c, h + 2 * pad, wp)[:, pad:pad + h, pad:pad + w] = False
    assert np.all(out[border] == 7.0)  # the zero border a producer relies on is never written


@SETTINGS
@given(c=st.integers(1, 9), h=st.integers(1, 40), w=st.integers(1, 40), pad=st.integers(0, 3), seed=st.integers(0, 99))
def test_global_avg_pool_kernel(c, h, w, pad, seed):
    x = (np.random.default_rng(seed).normal(size=(c, h, w)) + 3.0).astype(np.float32)
    padded = steps.padded_buffer(x, pad)
    for step in steps.pad(x, pad, padded):
        step()
    means = np.zeros(c)
    global_avg_pool_nb(padded, pad, h, w, means)
    np.testing.assert_allclose(means, global_avg_pool_ref(x.astype(np.float64)), rtol=1e-6)


def test_avg_pool2x2_refuses_odd_sizes_and_wrong_buffers():
    x = np.zeros((2, 6, 5), np.float32)
    with pytest.raises(ValueError):
        avg_pool2x2(x, np.zeros((2, 15), np.float32))
    with pytest.raises(ValueError):
        avg_pool2x2(np.zeros((2, 6, 4), np.float32), np.zeros((2, 7), np.float32))
