"""Level 1 of parity: each NumPy reference op against torch.nn.functional.

Hypothesis picks shapes, widths, groups, dilations and strides; every op is
compared on float64 so that a mismatch means a wrong formula, not rounding.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

from npseg.ops.activation import gelu_ref, relu_ref, sigmoid_ref, softmax_channels_ref  # noqa: E402
from npseg.ops.conv import conv2d_ref  # noqa: E402
from npseg.ops.conv1x1 import conv1x1_ref  # noqa: E402
from npseg.ops.norm import (  # noqa: E402
    batchnorm_scale_shift,
    fold_affine_into_unpadded_conv,
    fold_scale_shift_after_conv,
    group_norm_ref,
    layer_norm_cf_ref,
)
from npseg.ops.resize import max_pool2x2_ref, resize_bilinear_ac_ref  # noqa: E402

OPS = settings(max_examples=30, deadline=None)
TOL = dict(rtol=1e-9, atol=1e-9)


def rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))[None]


@OPS
@given(groups=st.integers(1, 6), cin_g=st.integers(1, 4), cout_g=st.integers(1, 4), k=st.sampled_from([1, 2, 3]),
       dilation=st.integers(1, 3), pad=st.integers(0, 3), stride=st.integers(1, 2),
       h=st.integers(1, 20), w=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_conv2d_matches_torch(groups, cin_g, cout_g, k, dilation, pad, stride, h, w, seed):
    span = dilation * (k - 1) + 1
    if h + 2 * pad < span or w + 2 * pad < span:
        return  # torch rejects an output of size 0 too; nothing to compare
    x = rand(seed, groups * cin_g, h, w)
    wt = rand(seed + 1, groups * cout_g, cin_g, k, k)
    b = rand(seed + 2, groups * cout_g)
    ours = conv2d_ref(x, wt, b, padding=pad, dilation=dilation, stride=stride, groups=groups)
    ref = F.conv2d(t(x), torch.from_numpy(wt), torch.from_numpy(b), stride=stride, padding=pad,
                   dilation=dilation, groups=groups)[0].numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, **TOL)


@OPS
@given(c=st.sampled_from([3, 6, 12, 24, 48]), d=st.integers(1, 3), h=st.integers(4, 24), w=st.integers(4, 24),
       seed=st.integers(0, 2**31))
def test_edb_branch_grouped_dilated_conv(c, d, h, w, seed):
    """EDB's branch: groups C/3, C -> C/3, dilation d, padding d (shape preserving)."""
    x, wt, b = rand(seed, c, h, w), rand(seed + 1, c // 3, 3, 3, 3), rand(seed + 2, c // 3)
    ours = conv2d_ref(x, wt, b, padding=d, dilation=d, groups=c // 3)
    ref = F.conv2d(t(x), torch.from_numpy(wt), torch.from_numpy(b), padding=d, dilation=d, groups=c // 3)[0]
    assert ours.shape == (c // 3, h, w)
    np.testing.assert_allclose(ours, ref.numpy(), **TOL)


@OPS
@given(cin=st.integers(1, 64), cout=st.integers(1, 64), h=st.integers(1, 12), w=st.integers(1, 12),
       seed=st.integers(0, 2**31))
def test_conv1x1_matches_torch(cin, cout, h, w, seed):
    x, wt, b = rand(seed, cin, h, w), rand(seed + 1, cout, cin, 1, 1), rand(seed + 2, cout)
    ref = F.conv2d(t(x), torch.from_numpy(wt), torch.from_numpy(b))[0].numpy()
    np.testing.assert_allclose(conv1x1_ref(x, wt, b), ref, **TOL)


@OPS
@given(c=st.integers(1, 32), h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_conv2x2_stride2_matches_torch(c, h, w, seed):
    h, w = 2 * h, 2 * w
    x, wt, b = rand(seed, c, h, w), rand(seed + 1, c, c, 2, 2), rand(seed + 2, c)
    ref = F.conv2d(t(x), torch.from_numpy(wt), torch.from_numpy(b), stride=2)[0].numpy()
    np.testing.assert_allclose(conv2d_ref(x, wt, b, stride=2), ref, **TOL)


@OPS
@given(cg=st.integers(1, 24), h=st.integers(2, 16), w=st.integers(1, 16), affine=st.booleans(),
       seed=st.integers(0, 2**31))
def test_group_norm_matches_torch(cg, h, w, affine, seed):
    c = 4 * cg
    x = rand(seed, c, h, w) * 3 + 1
    g, b = (rand(seed + 1, c), rand(seed + 2, c)) if affine else (None, None)
    ref = F.group_norm(t(x), 4, None if g is None else torch.from_numpy(g), None if b is None else torch.from_numpy(b),
                       eps=1e-5)[0].numpy()
    np.testing.assert_allclose(group_norm_ref(x, 4, g, b), ref, rtol=1e-7, atol=1e-7)


@OPS
@given(c=st.integers(1, 96), h=st.integers(1, 16), w=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_channels_first_layer_norm_matches_torch(c, h, w, seed):
    x, g, b = rand(seed, c, h, w) * 2 - 1, rand(seed + 1, c), rand(seed + 2, c)
    ref = F.layer_norm(t(x).permute(0, 2, 3, 1), (c,), torch.from_numpy(g), torch.from_numpy(b), eps=1e-6)
    np.testing.assert_allclose(layer_norm_cf_ref(x, g, b), ref.permute(0, 3, 1, 2)[0].numpy(), rtol=1e-7, atol=1e-7)


@OPS
@given(n=st.integers(1, 500), scale=st.floats(0.1, 20), seed=st.integers(0, 2**31))
def test_pointwise_activations_match_torch(n, scale, seed):
    x = rand(seed, n) * scale
    tx = torch.from_numpy(x)
    np.testing.assert_allclose(gelu_ref(x), F.gelu(tx).numpy(), **TOL)
    np.testing.assert_allclose(sigmoid_ref(x), torch.sigmoid(tx).numpy(), **TOL)
    np.testing.assert_allclose(relu_ref(x), F.relu(tx).numpy(), **TOL)


@OPS
@given(c=st.integers(1, 8), h=st.integers(1, 12), w=st.integers(1, 12), seed=st.integers(0, 2**31))
def test_softmax_over_channels_matches_torch(c, h, w, seed):
    x = rand(seed, c, h, w) * 10
    np.testing.assert_allclose(softmax_channels_ref(x), torch.softmax(t(x), 1)[0].numpy(), **TOL)


@OPS
@given(c=st.integers(1, 6), h=st.integers(1, 24), w=st.integers(1, 24), oh=st.integers(1, 48), ow=st.integers(1, 48),
       seed=st.integers(0, 2**31))
def test_bilinear_align_corners_up_and_down_matches_torch(c, h, w, oh, ow, seed):
    x = rand(seed, c, h, w)
    ref = F.interpolate(t(x), size=(oh, ow), mode="bilinear", align_corners=True)[0].numpy()
    np.testing.assert_allclose(resize_bilinear_ac_ref(x, oh, ow), ref, **TOL)


@OPS
@given(c=st.integers(1, 16), h=st.integers(1, 16), w=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_max_pool_matches_torch(c, h, w, seed):
    x = rand(seed, c, 2 * h, 2 * w)
    np.testing.assert_array_equal(max_pool2x2_ref(x), F.max_pool2d(t(x), 2)[0].numpy())


def _random_bn(seed, c):
    r = np.random.default_rng(seed)
    return r.standard_normal(c), r.standard_normal(c), r.standard_normal(c), r.uniform(0.2, 3.0, c)


@OPS
@given(cg=st.integers(1, 12), h=st.integers(1, 10), w=st.integers(1, 10), seed=st.integers(0, 2**31))
def test_folded_down_block_matches_gn_bn_conv(cg, h, w, seed):
    """GN affine -> BN -> unpadded 2x2/2 conv == non-affine GN -> one folded conv."""
    c = 4 * cg
    x = rand(seed, c, 2 * h, 2 * w)
    gamma, beta = rand(seed + 1, c), rand(seed + 2, c)
    bn_w, bn_b, mean, var = _random_bn(seed + 3, c)
    wt, b = rand(seed + 4, c, c, 2, 2), rand(seed + 5, c)
    y = F.group_norm(t(x), 4, torch.from_numpy(gamma), torch.from_numpy(beta), eps=1e-5)
    y = F.batch_norm(y, torch.from_numpy(mean), torch.from_numpy(var), torch.from_numpy(bn_w),
                     torch.from_numpy(bn_b), training=False, eps=1e-5)
    ref = F.conv2d(y, torch.from_numpy(wt), torch.from_numpy(b), stride=2)[0].numpy()
    s, sh = batchnorm_scale_shift(bn_w, bn_b, mean, var)
    wf, bf = fold_affine_into_unpadded_conv(wt, b, gamma * s, beta * s + sh)
    np.testing.assert_allclose(conv2d_ref(group_norm_ref(x, 4), wf, bf, stride=2), ref, rtol=1e-7, atol=1e-7)


@OPS
@given(cin=st.integers(1, 16), cout=st.integers(1, 16), h=st.integers(1, 10), w=st.integers(1, 10),
       seed=st.integers(0, 2**31))
def test_folded_conv_then_batchnorm_matches_torch(cin, cout, h, w, seed):
    """AGF's Conv3x3(pad 1) -> BN folds exactly into the conv."""
    x, wt, b = rand(seed, cin, h, w), rand(seed + 1, cout, cin, 3, 3), rand(seed + 2, cout)
    bn_w, bn_b, mean, var = _random_bn(seed + 3, cout)
    y = F.conv2d(t(x), torch.from_numpy(wt), torch.from_numpy(b), padding=1)
    ref = F.batch_norm(y, torch.from_numpy(mean), torch.from_numpy(var), torch.from_numpy(bn_w),
                       torch.from_numpy(bn_b), training=False, eps=1e-5)[0].numpy()
    wf, bf = fold_scale_shift_after_conv(wt, b, *batchnorm_scale_shift(bn_w, bn_b, mean, var))
    np.testing.assert_allclose(conv2d_ref(x, wf, bf, padding=1), ref, rtol=1e-7, atol=1e-7)


def test_norm_before_padded_conv_does_not_fold():
    """Why norms in front of padded convs stay unfolded: folding changes the border band."""
    x, wt, b = rand(0, 4, 8, 8), rand(1, 4, 4, 3, 3), rand(2, 4)
    scale, shift = rand(3, 4), rand(4, 4)
    exact = conv2d_ref(x * scale[:, None, None] + shift[:, None, None], wt, b, padding=1)
    wf, bf = fold_affine_into_unpadded_conv(wt, b, scale, shift)
    folded = conv2d_ref(x, wf, bf, padding=1)
    np.testing.assert_allclose(folded[:, 1:-1, 1:-1], exact[:, 1:-1, 1:-1], rtol=1e-9, atol=1e-9)
    assert np.abs(folded[:, 0] - exact[:, 0]).max() > 1e-3
