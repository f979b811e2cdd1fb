"""The skip-bridge kernels (channel gates, reflect-padded spatial gate with the channel sums,
the bridged add) against their NumPy references, and the references against torch."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops.skip_bridge import (bridge_add, bridge_ref, channel_conv1d_ref, channel_gates, channel_gates_ref,
                                   gated_sums, reflect_pad_ref, sequential_bridge_ref, spatial_gate, spatial_gate_ref)

SETTINGS = settings(max_examples=20, deadline=None)
F32 = np.float32


def _close(ours, ref, tol=1e-5):
    err = float(np.abs(np.asarray(ours, np.float64) - ref).max())
    assert err <= tol * max(1.0, float(np.abs(ref).max())), err


def _run(steps):
    for step in steps:
        step()


@SETTINGS
@given(c=st.integers(1, 9), h=st.integers(4, 20), w=st.integers(4, 40), seed=st.integers(0, 2**31))
def test_spatial_gate_kernel_matches_reference(c, h, w, seed):
    """Maps down to 4 x 4, the smallest the reflect padding of 3 allows."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    t, wt = rng.standard_normal((c, h, w)).astype(F32) * 3, rng.standard_normal((1, 2, 7, 7)).astype(F32)
    gate, sums = np.zeros((h, w), F32), np.zeros(c + 2)
    _run(spatial_gate(t, wt, gate, sums[1:-1]))  # sums may be a slice of the bridge's vector
    _close(gate, spatial_gate_ref(t.astype(np.float64), wt.astype(np.float64))[0])
    _close(sums[1:-1], t.astype(np.float64).sum((1, 2)), 1e-6)
    assert sums[0] == sums[-1] == 0.0


@SETTINGS
@given(c=st.integers(1, 9), h=st.integers(1, 20), w=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_dilated_spatial_gate_and_gated_sums_match_reference(c, h, w, seed):
    """MALUNet's gate: 7x7, dilation 3, zero padding 9, bias (maps smaller than the taps' reach too)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    t, wt = rng.standard_normal((c, h, w)).astype(F32) * 3, rng.standard_normal((1, 2, 7, 7)).astype(F32)
    gate, sums = np.zeros((h, w), F32), np.zeros(c)
    _run(spatial_gate(t, wt, gate, bias=0.4, dilation=3, reflect=False))
    ref = spatial_gate_ref(t.astype(np.float64), wt.astype(np.float64), np.array([0.4]), 3, reflect=False)[0]
    _close(gate, ref)
    _run(gated_sums(t, gate, sums))
    _close(sums, (t * (1.0 + ref)).sum((1, 2)), 1e-5)


@SETTINGS
@given(widths=st.lists(st.integers(1, 12), min_size=1, max_size=5), seed=st.integers(0, 2**31))
def test_channel_gates_kernel_matches_reference(widths, seed):
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    skips = [rng.standard_normal((c, 3, 5)) * 4 for c in widths]
    n = sum(widths)
    taps, wt, b = rng.standard_normal(3).astype(F32), rng.standard_normal((n, n)).astype(F32) * 0.2, \
        rng.standard_normal(n).astype(F32)
    sums = np.concatenate([t.sum((1, 2)) for t in skips])
    gates = np.zeros(n, F32)
    _run(channel_gates(sums, np.full(n, 15.0), taps, wt, b, gates))
    _close(gates, channel_gates_ref(skips, *(a.astype(np.float64) for a in (taps, wt, b))))


@SETTINGS
@given(c=st.integers(1, 9), h=st.integers(1, 20), w=st.integers(1, 40), with_stats=st.booleans(),
       seed=st.integers(0, 2**31))
def test_bridge_add_kernel_matches_reference(c, h, w, with_stats, seed):
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    acc, t = (rng.standard_normal((c, h, w)).astype(F32) for _ in range(2))
    a, s = rng.random(c).astype(F32), rng.random((h, w)).astype(F32)
    t64, a64, s64 = t.astype(np.float64), a.astype(np.float64), s.astype(np.float64)
    sequential = acc.copy()
    _run(bridge_add(sequential, t, a, s, (0.0, 1.0, 1.0, 1.0)))  # MALUNet's: a u + s t
    _close(sequential, acc + sequential_bridge_ref(t64, a64, s64))
    expected = acc + bridge_ref(t64, a64, s64, 0.3, 0.6)
    stats = np.zeros((c, 2)) if with_stats else None
    _run(bridge_add(acc, t, a, s, (1.0, 0.3, 0.6, 0.0), stats))
    _close(acc, expected)
    if with_stats:
        _close(stats, np.stack([expected.sum((1, 2)), (expected ** 2).sum((1, 2))], 1), 1e-5)


def test_references_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    t, wt = rng.standard_normal((5, 6, 9)), rng.standard_normal((1, 2, 7, 7))
    tt = torch.from_numpy(t)[None]
    _close(reflect_pad_ref(t, 3), F.pad(tt, (3, 3, 3, 3), mode="reflect")[0].numpy(), 0)
    maps = torch.cat([tt.mean(1, keepdim=True), tt.amax(1, keepdim=True)], 1)
    conv = torch.nn.Conv2d(2, 1, 7, padding=3, padding_mode="reflect", bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(wt))
        _close(spatial_gate_ref(t, wt), torch.sigmoid(conv(maps))[0].numpy(), 1e-12)
    z, taps = rng.standard_normal(11), rng.standard_normal(3)
    expected = F.conv1d(torch.from_numpy(z)[None, None], torch.from_numpy(taps)[None, None], padding=1)[0, 0]
    _close(channel_conv1d_ref(z, taps), expected.numpy(), 1e-12)
