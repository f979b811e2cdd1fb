"""Channel attention, spatial attention (as the gate step applies them) and the grouped attention
gate: references vs torch, the Numba kernels vs the references."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops._jit import numba
from npseg.ops.attention import (attention_gate_add, attention_gate_ref, channel_attention, channel_attention_ref,
                                 spatial_attention_ref, spatial_gate)

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _gate_weights(rng, c, dtype):
    return (rng.standard_normal((c // 2, 2, 3, 3)).astype(dtype) / 3, rng.standard_normal(c // 2).astype(dtype),
            rng.standard_normal((c // 2, 2, 3, 3)).astype(dtype) / 3, rng.standard_normal(c // 2).astype(dtype),
            rng.standard_normal((1, c // 2, 1, 1)).astype(dtype), rng.standard_normal(1).astype(dtype))


def test_references_match_torch():
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((6, 9, 10)), rng.standard_normal((6, 9, 10))
    w1, w2 = rng.standard_normal((2, 6, 1, 1)), rng.standard_normal((6, 2, 1, 1))
    w_sa = rng.standard_normal((1, 2, 7, 7))
    t = torch.from_numpy(x)[None]
    mlp = lambda v: F.conv2d(F.relu(F.conv2d(v, torch.from_numpy(w1))), torch.from_numpy(w2))  # noqa: E731
    ca = torch.sigmoid(mlp(F.adaptive_avg_pool2d(t, 1)) + mlp(F.adaptive_max_pool2d(t, 1)))[0, :, 0, 0]
    assert np.abs(channel_attention_ref(x, w1, w2) - ca.numpy()).max() < 1e-12
    desc = torch.cat([t.mean(1, keepdim=True), t.amax(1, keepdim=True)], 1)
    sa = torch.sigmoid(F.conv2d(desc, torch.from_numpy(w_sa), padding=3))[0]
    assert np.abs(spatial_attention_ref(x, w_sa) - sa.numpy()).max() < 1e-12
    wg, bg, wx, bx, wpsi, bpsi = (torch.from_numpy(a) for a in _gate_weights(rng, 6, np.float64))
    p = F.relu(F.conv2d(torch.from_numpy(g)[None], wg, bg, padding=1, groups=3)
               + F.conv2d(t, wx, bx, padding=1, groups=3))
    psi = torch.sigmoid(F.conv2d(p, wpsi, bpsi))[0]
    ours = attention_gate_ref(g, x, *(a.numpy() for a in (wg, bg, wx, bx, wpsi, bpsi)))
    assert np.abs(ours - psi.numpy()).max() < 1e-12


@pytest.mark.skipif(numba is None, reason="needs numba")
@settings(max_examples=20, deadline=None)
@given(half=st.integers(1, 8), h=st.integers(1, 16), w=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_kernels_match_references(half, h, w, seed):
    c, rng = 2 * half, np.random.default_rng(seed)
    f64 = lambda a: a.astype(np.float64)  # noqa: E731
    x, skip = (3 * rng.standard_normal((c, h, w))).astype(np.float32), rng.standard_normal((c, h, w)).astype(np.float32)
    hidden = max(1, c // 4)
    w1 = rng.standard_normal((hidden, c, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((c, hidden, 1, 1)).astype(np.float32)
    w_sa = (rng.standard_normal((1, 2, 7, 7)) / 7).astype(np.float32)
    gate, gated, u = np.zeros(c, np.float32), np.zeros_like(x), x.copy()
    weights = _gate_weights(rng, c, np.float32)
    steps = channel_attention(x, w1, w2, gate) + spatial_gate(x, gate, w_sa, gated)
    for step in steps + attention_gate_add(u, skip, *weights):
        step()
    assert np.abs(gate - channel_attention_ref(f64(x), f64(w1), f64(w2))).max() <= 1e-6
    a_u = f64(x) * f64(gate)[:, None, None]
    assert np.abs(gated - a_u * spatial_attention_ref(a_u, f64(w_sa))).max() <= 1e-5 * max(1.0, np.abs(a_u).max())
    expected = f64(x) + f64(skip) * attention_gate_ref(f64(x), f64(skip), *map(f64, weights))
    assert np.abs(u - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
