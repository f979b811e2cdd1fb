"""The depthwise (3x3 dilated, 5x5) and fused DSConv kernels against their NumPy references (hypothesis over
shapes, dilations and epilogues), and the references against torch.nn.functional."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
@given(c=st.integers(1, 6), h=st.integers(1, 21), w=st.integers(1, 40),
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
       dilation=st.sampled_from([1, 2]), epilogue=st.sampled_from([EPILOGUE_RELU, EPILOGUE_GELU, EPILOGUE_RESIDUAL_GELU]),
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
    ref = dsconv_ref(*_f64(x, wd, bd, wp, bp), dilation, epilogue, None if residual is None else residual.astype(np.float64))
    _close(out, ref)
    if with_stats:
        _close(stats, _stats_ref(ref), 1e-4)


def test_references_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x, res = rng.standard_normal((6, 11, 13)), rng.standard_normal((8, 11, 13))
    wd, bd, wp, bp = rng.standard_normal((6, 1, 3, 3)), rng.standard_normal(6), rng.standard_normal((8, 6, 1, 1)), rng.standard_normal(8)
    t = [torch.from_numpy(a) for a in (x, wd, bd, wp, bp, res)]
    for d in (1, 2):
        dw = F.conv2d(t[0][None], t[1], t[2], padding=d, dilation=d, groups=6)
        _close(depthwise_ref(x, wd, bd, d), dw[0].numpy(), 1e-12)
        y = F.relu(F.conv2d(F.relu(dw), t[3], t[4]))[0]
        _close(dsconv_ref(x, wd, bd, wp, bp, d), y.numpy(), 1e-12)
        _close(dsconv_ref(x, wd, bd, wp, bp, d, EPILOGUE_GELU), F.gelu(y).numpy(), 1e-12)
        _close(dsconv_ref(x, wd, bd, wp, bp, d, EPILOGUE_RESIDUAL_GELU, res), F.gelu(y + t[5]).numpy(), 1e-12)
