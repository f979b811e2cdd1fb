"""Channel gates from global average pooling: kernels against references, references against torch."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops import steps
from npseg.ops.channel_gate import (GATE_SIGMOID, GATE_TANH, channel_gate_nb, channel_gate_ref, residual_gate,
                                    residual_gate_ref, tanh_ref)

SETTINGS = settings(max_examples=20, deadline=None)


def test_references_match_torch():
    rng = np.random.default_rng(0)
    x, w, b = rng.normal(size=(6, 9, 11)), rng.normal(size=(6, 6, 1, 1)), rng.normal(size=6)
    t = torch.from_numpy(x)[None]
    z = F.conv2d(t.mean((2, 3), keepdim=True), torch.from_numpy(w), torch.from_numpy(b))[0, :, 0, 0]
    np.testing.assert_allclose(channel_gate_ref(x, w, b, GATE_SIGMOID), torch.sigmoid(z).numpy(), atol=1e-12)
    np.testing.assert_allclose(tanh_ref(x), torch.tanh(t)[0].numpy(), atol=1e-12)
    rgf = t * (1 + torch.tanh(F.conv2d(t.mean((2, 3), keepdim=True), torch.from_numpy(w))))
    np.testing.assert_allclose(residual_gate_ref(x, w), rgf[0].numpy(), atol=1e-12)


@SETTINGS
@given(c=st.integers(1, 12), g=st.integers(1, 12), h=st.integers(1, 20), w=st.integers(1, 20),
       pad=st.integers(0, 2), kind=st.sampled_from([GATE_SIGMOID, GATE_TANH]), seed=st.integers(0, 99))
def test_channel_gate_kernel(c, g, h, w, pad, kind, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(c, h, w)).astype(np.float32)
    wg, bg = rng.normal(size=(g, c)), rng.normal(size=g)
    padded = steps.padded_buffer(x, pad)
    for step in steps.pad(x, pad, padded):
        step()
    gate = np.zeros(g)
    channel_gate_nb(padded, pad, h, w, wg, bg, kind, np.zeros(c), gate)
    np.testing.assert_allclose(gate, channel_gate_ref(x.astype(np.float64), wg, bg, kind), atol=1e-6)


@SETTINGS
@given(c=st.integers(1, 64), h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 99))
def test_residual_gate_kernel(c, h, w, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(c, h, w)).astype(np.float32)
    wr = rng.normal(size=(c, c, 1, 1)).astype(np.float32)
    expected = residual_gate_ref(x.astype(np.float64), wr.astype(np.float64))
    for step in residual_gate(x, wr):
        step()
    np.testing.assert_allclose(x, expected, atol=1e-5 * max(1.0, np.abs(expected).max()))
