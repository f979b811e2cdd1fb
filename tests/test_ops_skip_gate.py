"""The dense sigmoid skip gate: kernel against reference, reference against torch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops.pool import padded_size
from npseg.ops.skip_gate import skip_gate, skip_gate_ref

SETTINGS = settings(max_examples=20, deadline=None)


def test_reference_matches_torch():
    rng = np.random.default_rng(0)
    d, e = rng.normal(size=(5, 8, 6)), rng.normal(size=(5, 8, 6))
    w, b = rng.normal(size=(5, 10, 1, 1)), rng.normal(size=5)
    td, te = torch.from_numpy(d)[None], torch.from_numpy(e)[None]
    s = torch.sigmoid(F.conv2d(torch.cat([td, te], 1), torch.from_numpy(w), torch.from_numpy(b)))
    np.testing.assert_allclose(skip_gate_ref(d, e, w, b), (td + s * te)[0].numpy(), atol=1e-12)


@SETTINGS
@given(c=st.integers(1, 40), h=st.integers(1, 12), w=st.integers(1, 24), pad=st.integers(0, 2), seed=st.integers(0, 99))
def test_skip_gate_kernel(c, h, w, pad, seed):
    rng = np.random.default_rng(seed)
    d, e = (rng.normal(size=(c, h, w)).astype(np.float32) for _ in range(2))
    wg, b = (rng.normal(size=(c, 2 * c)) / np.sqrt(c)).astype(np.float32), rng.normal(size=c).astype(np.float32)
    out = np.zeros((c, padded_size(h, w, pad)), np.float32)
    for step in skip_gate(d, e, wg, b, out, pad):
        step()
    wp = w + 2 * pad
    interior = out[:, :(h + 2 * pad) * wp].reshape(c, h + 2 * pad, wp)[:, pad:pad + h, pad:pad + w]
    expected = skip_gate_ref(d.astype(np.float64), e.astype(np.float64), wg.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(interior, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))
    assert np.count_nonzero(out) <= c * h * w  # nothing outside the interior


def test_skip_gate_refuses_mismatched_weights():
    x = np.zeros((3, 4, 4), np.float32)
    with pytest.raises(ValueError):
        skip_gate(x, x.copy(), np.zeros((3, 3), np.float32), np.zeros(3, np.float32), np.zeros((3, 16), np.float32))
