"""The depthwise (3x3 dilated, 5x5) and fused DSConv kernels against their NumPy references (hypothesis over
shapes, dilations and epilogues), and the references against torch.nn.functional."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npseg.ops.activation import gelu_ref
from npseg.ops.dsconv import (EPILOGUE_GELU, EPILOGUE_RELU, EPILOGUE_RESIDUAL_GELU, depthwise, depthwise_ref,
                              dsconv, dsconv_ref)

SETTINGS = settings(max_examples=20, deadline=None)
TOL = 1e-5
F32 = np.float32


def _run(steps):
    for step in steps:
        step()


def _close(ours, ref, tol=TOL):
    err = float(np.abs(np.asarray(ours, np.float64) - ref).max())
    assert err <= tol * max(1.0, float(np.abs(ref).max())), err


def _f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


def _stats_ref(y):
    return np.stack([y.sum((1, 2)), (y.astype(np.float64) ** 2).sum((1, 2))], 1)


@SETTINGS
@given(c=st.integers(1, 6), h=st.integers(1, 21), w=st.integers(1, 300),
       kind=st.sampled_from([(3, 1), (3, 2), (3, 5), (3, 7), (5, 1)]), seed=st.integers(0, 2**31))
def test_depthwise_kernel_matches_reference(c, h, w, kind, seed):
    """Maps smaller than the dilation too (taps that read only zeros)."""
    pytest.importorskip("numba")
    k, dilation = kind
    rng = np.random.default_rng(seed)
    x, wt, b = (rng.standard_normal(s).astype(F32) for s in ((c, h, w), (c, 1, k, k), (c,)))
    out, stats = np.zeros_like(x), np.zeros((c, 2))
    _run(depthwise(x, wt, b, out, dilation, stats))
    ref = depthwise_ref(*_f64(x, wt, b), dilation)
    _close(out, ref)
    _close(stats, _stats_ref(ref), 1e-4)


@SETTINGS
@given(c=st.integers(1, 9), cout=st.sampled_from([4, 8, 12]), h=st.integers(1, 19), w=st.integers(1, 300),
       dilation=st.sampled_from([1, 2]),
       epilogue=st.sampled_from([EPILOGUE_RELU, EPILOGUE_GELU, EPILOGUE_RESIDUAL_GELU]),
       with_stats=st.booleans(), seed=st.integers(0, 2**31))
def test_dsconv_kernel_matches_reference(c, cout, h, w, dilation, epilogue, with_stats, seed):
    """Widths up to 300 columns: tiles of one row and of several; maps narrower than the dilation."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((c, h, w)).astype(F32)
    wd, bd = rng.standard_normal((c, 1, 3, 3)).astype(F32), rng.standard_normal(c).astype(F32)
    wp, bp = rng.standard_normal((cout, c, 1, 1)).astype(F32), rng.standard_normal(cout).astype(F32)
    residual = rng.standard_normal((cout, h, w)).astype(F32) if epilogue == EPILOGUE_RESIDUAL_GELU else None
    out, stats = np.zeros((cout, h, w), F32), (np.zeros((cout, 2)) if with_stats else None)
    _run(dsconv(x, wd, bd, wp, bp, out, dilation, epilogue, residual, stats))
    ref = dsconv_ref(*_f64(x, wd, bd, wp, bp), dilation, epilogue,
                     None if residual is None else residual.astype(np.float64))
    _close(out, ref)
    if with_stats:
        _close(stats, _stats_ref(ref), 1e-4)


def test_references_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x, res = rng.standard_normal((6, 11, 13)), rng.standard_normal((8, 11, 13))
    wd, bd = rng.standard_normal((6, 1, 3, 3)), rng.standard_normal(6)
    wp, bp = rng.standard_normal((8, 6, 1, 1)), rng.standard_normal(8)
    t = [torch.from_numpy(a) for a in (x, wd, bd, wp, bp, res)]
    for d in (1, 2):
        dw = F.conv2d(t[0][None], t[1], t[2], padding=d, dilation=d, groups=6)
        _close(depthwise_ref(x, wd, bd, d), dw[0].numpy(), 1e-12)
        y = F.relu(F.conv2d(F.relu(dw), t[3], t[4]))[0]
        _close(dsconv_ref(x, wd, bd, wp, bp, d), y.numpy(), 1e-12)
        _close(dsconv_ref(x, wd, bd, wp, bp, d, EPILOGUE_GELU), F.gelu(y).numpy(), 1e-12)
        _close(dsconv_ref(x, wd, bd, wp, bp, d, EPILOGUE_RESIDUAL_GELU, res), F.gelu(y + t[5]).numpy(), 1e-12)


@SETTINGS
@given(c=st.integers(1, 5), half_h=st.integers(1, 9), half_w=st.integers(1, 150), epilogue=st.sampled_from(
    [EPILOGUE_RELU, EPILOGUE_GELU]), seed=st.integers(0, 2**31))
def test_pooled_dsconv_and_apply_are_the_affine_max_pool(c, half_h, half_w, epilogue, seed):
    """The pooled output (2x2 windows' max and min, never the whole map) and its apply step give
    act(maxpool(y * scale + shift)), scales of both signs; the statistics are those of y."""
    pytest.importorskip("numba")
    from npseg.ops._jit import ACT_GELU
    from npseg.ops.pool_extremes import pool_extremes_apply
    from npseg.ops.resize import max_pool2x2_ref

    rng = np.random.default_rng(seed)
    h, w = 2 * half_h, 2 * half_w
    x = rng.standard_normal((c, h, w)).astype(F32)
    wd, bd = rng.standard_normal((c, 1, 3, 3)).astype(F32), rng.standard_normal(c).astype(F32)
    wp, bp = rng.standard_normal((8, c, 1, 1)).astype(F32), rng.standard_normal(8).astype(F32)
    top, bottom, out = (np.zeros((8, half_h, half_w), F32) for _ in range(3))
    stats = np.zeros((8, 2))
    _run(dsconv(x, wd, bd, wp, bp, None, 1, epilogue, None, stats, pooled=(top, bottom)))
    scale, shift = rng.standard_normal(8).astype(F32), rng.standard_normal(8).astype(F32)
    _run(pool_extremes_apply(top, bottom, scale, shift, out, ACT_GELU))
    y = dsconv_ref(*_f64(x, wd, bd, wp, bp), 1, epilogue)
    _close(out, gelu_ref(max_pool2x2_ref(y * scale[:, None, None] + shift[:, None, None])))
    _close(stats, _stats_ref(y), 1e-4)
