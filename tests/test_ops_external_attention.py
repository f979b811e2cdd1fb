"""External attention's normalisations (softmax over positions, then over slots): the kernel
against its reference (hypothesis shapes), and the whole reference against torch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops.external_attention import external_attention_ref, slot_softmax, slot_softmax_ref

F32 = np.float32


@settings(max_examples=20, deadline=None)
@given(slots=st.integers(1, 40), n=st.integers(1, 300), scale=st.floats(0.1, 30), seed=st.integers(0, 2**31))
def test_slot_softmax_kernel_matches_reference(slots, n, scale, seed):
    """Large logits too (the max is subtracted before the exponential)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    a, bias = (rng.standard_normal((slots, n)) * scale).astype(F32), rng.standard_normal(slots).astype(F32)
    expected = slot_softmax_ref(a.astype(np.float64) + bias[:, None])
    for step in slot_softmax(a, bias):
        step()
    assert np.abs(a - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())


def test_reference_matches_torch():
    """As the authors' EA computes it: 1x1 convs folded (W_in = W0 conv1, b_in = W0 b1, W_out = conv2 W1)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    c, h, w = 8, 5, 7
    x, conv1, b1, w0, conv2 = (rng.standard_normal(s) for s in ((c, h, w), (c, c), (c,), (4 * c, c), (c, c)))
    t = torch.from_numpy(x)[None]
    y = torch.nn.functional.conv2d(t, torch.from_numpy(conv1)[:, :, None, None], torch.from_numpy(b1)).flatten(2)
    attn = torch.softmax(torch.from_numpy(w0) @ y, dim=-1)
    attn = attn / (1e-9 + attn.sum(dim=1, keepdim=True))
    expected = (torch.from_numpy(conv2 @ w0.T) @ attn).reshape(1, c, h, w)[0].numpy()
    ours = external_attention_ref(x, w0 @ conv1, w0 @ b1, conv2 @ w0.T)
    assert np.abs(ours - expected).max() < 1e-10
