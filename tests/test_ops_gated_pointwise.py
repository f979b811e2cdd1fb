"""The LDGA kernels (GroupNorm as a per-frame affine from float64 sums, the gated pointwise conv,
the two-input pointwise conv) against their NumPy references, and the references against
torch.nn.functional."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops._jit import ACT_GELU, ACT_NONE
from npseg.ops.activation import gelu_ref
from npseg.ops.gated_pointwise import (dual_pointwise, gate_pointwise, gn_affine, gn_pointwise, gn_pointwise_ref,
                                       sigmoid_gelu_product, sigmoid_gelu_product_ref, spatial_gate_pointwise_ref)
from npseg.ops.norm import group_norm_ref

SETTINGS = settings(max_examples=20, deadline=None)
F32 = np.float32
GROUPS = 4


def _run(steps):
    for step in steps:
        step()


def _close(ours, ref, tol=1e-5):
    err = float(np.abs(np.asarray(ours, np.float64) - ref).max())
    assert err <= tol * max(1.0, float(np.abs(ref).max())), err


def _sums(x):
    x = x.astype(np.float64)
    return np.ascontiguousarray(np.stack([x.sum((1, 2)), (x * x).sum((1, 2))], 1))


def _gn_affine(rng, x, pre_scale=None, pre_shift=None, affine=False):
    """(scale, shift) of the kernel, and the float64 GroupNorm it stands for."""
    c = x.shape[0]
    pre_scale = np.ones(c, F32) if pre_scale is None else pre_scale
    pre_shift = np.zeros(c, F32) if pre_shift is None else pre_shift
    gamma = (0.5 + rng.random(c)).astype(F32) if affine else np.ones(c, F32)
    beta = rng.standard_normal(c).astype(F32) if affine else np.zeros(c, F32)
    scale, shift = np.zeros(c, F32), np.zeros(c, F32)
    _run(gn_affine(_sums(x), x.shape[1] * x.shape[2], GROUPS, pre_scale, pre_shift, gamma, beta, scale, shift))
    z = x.astype(np.float64) * pre_scale[:, None, None] + pre_shift[:, None, None]
    return scale, shift, group_norm_ref(z, GROUPS, gamma.astype(np.float64), beta.astype(np.float64))


@SETTINGS
@given(g=st.integers(1, 4), h=st.integers(2, 17), w=st.integers(1, 33), offset=st.floats(-50, 50),
       affine=st.booleans(), seed=st.integers(0, 2**31))
def test_gn_affine_is_the_group_norm_of_the_pre_affine(g, h, w, offset, affine, seed):
    """Offsets far from zero: the float64 sums keep E[x^2] - E[x]^2 accurate. (Groups of one value
    are left out: their variance is 0 and 1/sqrt(eps) = 316 scales float32 rounding.)"""
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((GROUPS * g, h, w)) * 3 + offset).astype(F32)
    pre = rng.standard_normal(GROUPS * g).astype(F32), rng.standard_normal(GROUPS * g).astype(F32)
    scale, shift, ref = _gn_affine(rng, x, *pre, affine=affine)
    _close(x * scale[:, None, None] + shift[:, None, None], ref, 1e-4)


@SETTINGS
@given(g=st.integers(1, 4), h=st.integers(2, 40), w=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_gate_pointwise_kernel_matches_reference(g, h, w, seed):
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    c = GROUPS * g
    v = rng.standard_normal((c, h, w)).astype(F32) * 4
    wt, b, wg = rng.standard_normal((c, c, 1, 1)).astype(F32), rng.standard_normal(c).astype(F32), \
        rng.standard_normal((1, c, 1, 1)).astype(F32)
    scale, shift, _ = _gn_affine(rng, v)
    y, stats = np.zeros_like(v), np.zeros((c, 2))
    _run(gate_pointwise(v, scale, shift, wt, b, wg, y, stats))
    ref = spatial_gate_pointwise_ref(gn_pointwise_ref(v.astype(np.float64), GROUPS, wt.astype(np.float64), b), wg)
    _close(y, ref, 2e-5)
    _close(stats, _sums(ref), 1e-4)


@SETTINGS
@given(g=st.integers(1, 3), cout=st.integers(1, 12), h=st.integers(2, 40), w=st.integers(1, 40),
       act=st.sampled_from([ACT_NONE, ACT_GELU]), with_stats=st.booleans(), seed=st.integers(0, 2**31))
def test_dual_pointwise_kernel_matches_reference(g, cout, h, w, act, with_stats, seed):
    """out = act(wy GN(ay y + cy) + wx GN(ax x + cx) + b): LDGA's output and residual convs."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    c = GROUPS * g
    y, x = (rng.standard_normal((c, h, w)).astype(F32) for _ in range(2))
    ay, cy, ax, cx = (rng.standard_normal(c).astype(F32) for _ in range(4))
    wy, wx = (rng.standard_normal((cout, c, 1, 1)).astype(F32) for _ in range(2))
    b = rng.standard_normal(cout).astype(F32)
    sy, ty, _ = _gn_affine(rng, y, ay, cy)
    sx, tx, _ = _gn_affine(rng, x, ax, cx)
    out, stats = np.zeros((cout, h, w), F32), (np.zeros((cout, 2)) if with_stats else None)
    _run(dual_pointwise(y, x, sy, ty, sx, tx, wy, wx, b, out, act, stats))
    f64 = [a.astype(np.float64) for a in (y, x, ay, cy, ax, cx, wy, wx, b)]
    ref = (gn_pointwise_ref(f64[0], GROUPS, f64[6], f64[8], f64[2], f64[3])
           + gn_pointwise_ref(f64[1], GROUPS, f64[7], np.zeros(cout), f64[4], f64[5]))
    ref = gelu_ref(ref) if act == ACT_GELU else ref
    _close(out, ref, 2e-5)
    if with_stats:
        _close(stats, _sums(ref), 1e-4)


@SETTINGS
@given(cout=st.integers(1, 9), half_h=st.integers(1, 12), half_w=st.integers(1, 40), seed=st.integers(0, 2**31))
def test_pooled_dual_pointwise_gives_the_windows_extremes(cout, half_h, half_w, seed):
    """With pooled maps the output is not stored: its 2x2 windows' max and min are, and its statistics."""
    pytest.importorskip("numba")
    from npseg.ops.pool_extremes import pool_extremes_ref

    rng = np.random.default_rng(seed)
    y, x = (rng.standard_normal((GROUPS, 2 * half_h, 2 * half_w)).astype(F32) for _ in range(2))
    vec = [rng.standard_normal(GROUPS).astype(F32) for _ in range(4)]
    wy, wx = (rng.standard_normal((cout, GROUPS, 1, 1)).astype(F32) for _ in range(2))
    b = rng.standard_normal(cout).astype(F32)
    full, stats = np.zeros((cout, 2 * half_h, 2 * half_w), F32), np.zeros((cout, 2))
    _run(dual_pointwise(y, x, *vec, wy, wx, b, full))
    top, bottom = (np.zeros((cout, half_h, half_w), F32) for _ in range(2))
    _run(dual_pointwise(y, x, *vec, wy, wx, b, None, stats=stats, pooled=(top, bottom)))
    expected_top, expected_bottom = pool_extremes_ref(full)
    assert np.array_equal(top, expected_top) and np.array_equal(bottom, expected_bottom)
    _close(stats, _sums(full), 1e-5)


@SETTINGS
@given(g=st.integers(1, 3), cout=st.integers(1, 12), h=st.integers(2, 30), w=st.integers(1, 30),
       act=st.sampled_from([ACT_NONE, ACT_GELU]), seed=st.integers(0, 2**31))
def test_gn_pointwise_and_gated_product_match_reference(g, cout, h, w, act, seed):
    """The single-input pointwise conv behind a GroupNorm, and sigmoid(a) * GELU(b) (MALUNet's GAU)."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((GROUPS * g, h, w)).astype(F32) * 3
    wy, b = rng.standard_normal((cout, GROUPS * g, 1, 1)).astype(F32), rng.standard_normal(cout).astype(F32)
    sy, ty, _ = _gn_affine(rng, y)
    out = np.zeros((cout, h, w), F32)
    _run(gn_pointwise(y, sy, ty, wy, b, out, act))
    ref = gn_pointwise_ref(y.astype(np.float64), GROUPS, wy.astype(np.float64), b.astype(np.float64))
    _close(out, gelu_ref(ref) if act == ACT_GELU else ref, 2e-5)
    prod = np.zeros_like(y)
    _run(sigmoid_gelu_product(y, y[::-1].copy(), prod))
    _close(prod, sigmoid_gelu_product_ref(y.astype(np.float64), y[::-1].astype(np.float64)))


def test_references_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x, w, b, wg = rng.standard_normal((8, 9, 7)), rng.standard_normal((5, 8, 1, 1)), rng.standard_normal(5), \
        rng.standard_normal((1, 8, 1, 1))
    a, c = rng.standard_normal(8), rng.standard_normal(8)
    t = {k: torch.from_numpy(v) for k, v in dict(x=x, w=w, b=b, wg=wg, a=a, c=c).items()}
    z = t["x"][None] * t["a"][:, None, None] + t["c"][:, None, None]
    expected = F.conv2d(F.group_norm(z, GROUPS, eps=1e-5), t["w"], t["b"])[0]
    _close(gn_pointwise_ref(x, GROUPS, w, b, a, c), expected.numpy(), 1e-12)
    gated = t["x"][None] * torch.sigmoid(F.conv2d(t["x"][None], t["wg"]))
    _close(spatial_gate_pointwise_ref(x, wg), gated[0].numpy(), 1e-12)
    _close(sigmoid_gelu_product_ref(x, x[::-1]), (torch.sigmoid(t["x"]) * F.gelu(t["x"].flip(0))).numpy(), 1e-12)
