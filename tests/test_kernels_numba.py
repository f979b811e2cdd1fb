"""Every Numba kernel against its NumPy reference (hypothesis over shapes, widths, dilations).

Kernels run through npseg.ops.steps, the validated entry the engine uses; inputs
are float32, references run in float64. Errors are measured relative to the
reference's scale: max|ours - ref| <= TOL * max(1, max|ref|).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

from npseg.ops import steps  # noqa: E402
from npseg.ops._jit import ACT_GELU, ACT_NONE, ACT_RELU, ACT_RELU6  # noqa: E402
from npseg.ops.activation import (  # noqa: E402
    gelu_nb, gelu_ref, relu6_ref, relu_ref, sigmoid_nb, sigmoid_ref)
from npseg.ops.conv import conv2d_ref  # noqa: E402
from npseg.ops.conv1x1 import conv1x1_ref  # noqa: E402
from npseg.ops.gsa import gsa_norm_ref, shuffle_source  # noqa: E402
from npseg.ops.heads import agf_fuse_ref, gate_head_ref, merge_ref, ssa_ref  # noqa: E402
from npseg.ops.image import to_planar_nb, to_planar_ref  # noqa: E402
from npseg.ops.norm import group_norm_ref  # noqa: E402
from npseg.ops.resize import max_pool2x2_ref, resize_bilinear_ac_ref  # noqa: E402

TOL = 1e-5
F32 = np.float32
ACTS = st.sampled_from([ACT_NONE, ACT_RELU, ACT_GELU, ACT_RELU6])
REF_ACT = {ACT_NONE: lambda v: v, ACT_RELU: relu_ref, ACT_GELU: gelu_ref, ACT_RELU6: relu6_ref}
SETTINGS = settings(max_examples=25, deadline=None)


def run(step_list):
    for step in step_list:
        step()


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(F32)


def assert_close(ours, ref, tol=TOL):
    assert ours.shape == ref.shape
    err = float(np.abs(ours.astype(np.float64) - ref).max()) if ref.size else 0.0
    assert err <= tol * max(1.0, float(np.abs(ref).max())), err


def f64(*arrays):
    return [a.astype(np.float64) for a in arrays]


@SETTINGS
@given(groups=st.integers(1, 4), cin_g=st.integers(1, 4), cout_g=st.integers(1, 3), h=st.integers(1, 20),
       w=st.integers(1, 40), dilation=st.integers(1, 3), act=ACTS, seed=st.integers(0, 2**31))
def test_conv3x3_direct(groups, cin_g, cout_g, h, w, dilation, act, seed):
    """Grouped, dilated 3x3 convs, including maps narrower than the dilation (all border columns)."""
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, groups * cin_g, h, w), rand(rng, groups * cout_g, cin_g, 3, 3), rand(rng, groups * cout_g)
    out = np.zeros((groups * cout_g, h, w), F32)
    padded = steps.padded_buffer(x, 3)  # one padded copy of pad 3 serves every dilation
    run(steps.pad(x, 3, padded) + steps.conv3x3(x, wt, b, out, dilation, act, padded, 3, method="direct"))
    ref = conv2d_ref(*f64(x, wt, b), padding=dilation, dilation=dilation, groups=groups)
    assert_close(out, REF_ACT[act](ref))


@SETTINGS
@given(cin=st.integers(1, 20), cout=st.integers(1, 20), h=st.integers(1, 40), w=st.integers(1, 40),
       dilation=st.integers(1, 3), act=ACTS, method=st.sampled_from([None, "direct", "gemm"]),
       out_pad_width=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**31))
def test_conv3x3_dense_both_paths(cin, cout, h, w, dilation, act, method, out_pad_width, seed):
    """Dense convs: im2col + GEMM, the direct kernel, and the size-based choice between them;
    the optional padded copy of the output is exactly what a pad step would write."""
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, cin, h, w), rand(rng, cout, cin, 3, 3), rand(rng, cout)
    out = np.zeros((cout, h, w), F32)
    out_padded = None if out_pad_width is None else steps.padded_buffer(out, out_pad_width)
    run(steps.conv3x3(x, wt, b, out, dilation, act, method=method, out_padded=out_padded,
                      out_pad_width=out_pad_width))
    ref = conv2d_ref(*f64(x, wt, b), padding=dilation, dilation=dilation)
    assert_close(out, REF_ACT[act](ref))
    if out_padded is not None:
        expected = steps.padded_buffer(out, out_pad_width)
        run(steps.pad(out, out_pad_width, expected))
        assert np.array_equal(out_padded, expected)


@SETTINGS
@given(cin=st.integers(1, 20), cout_quads=st.integers(1, 5), h=st.integers(1, 40),
       half=st.one_of(st.integers(1, 20), st.sampled_from([40, 130, 300])),  # 130, 300: rows past one 1 KB block
       act=ACTS, pad_width=st.sampled_from([1, 3]), out_pad_width=st.sampled_from([None, 1, 3]),
       seed=st.integers(0, 2**31))
def test_conv3x3_winograd(cin, cout_quads, h, half, act, pad_width, out_pad_width, seed):
    """Row-wise Winograd F(2, 3) for dense 3x3 convs (even widths, outputs in fours), from a
    padded input of any border >= 1, with the optional padded copy of the output."""
    rng = np.random.default_rng(seed)
    cout, w = 4 * cout_quads, 2 * half
    x, wt, b = rand(rng, cin, h, w), rand(rng, cout, cin, 3, 3), rand(rng, cout)
    padded = steps.padded_buffer(x, pad_width)
    out = np.zeros((cout, h, w), F32)
    out_padded = None if out_pad_width is None else steps.padded_buffer(out, out_pad_width)
    conv = steps.conv3x3(x, wt, b, out, 1, act, padded, pad_width, method="winograd", out_padded=out_padded,
                         out_pad_width=out_pad_width)
    assert [step.func.__name__ for step in conv] == ["conv3x3_winograd_nb"]
    run(steps.pad(x, pad_width, padded) + conv)
    assert_close(out, REF_ACT[act](conv2d_ref(*f64(x, wt, b), padding=1)))
    if out_padded is not None:
        expected = steps.padded_buffer(out, out_pad_width)
        run(steps.pad(out, out_pad_width, expected))
        assert np.array_equal(out_padded, expected)


@pytest.mark.parametrize("rows,n,offset", [(4, 1, 0), (4, 256, 0), (4, 257, 0), (16, 2048, 0), (6, 700, 128)])
def test_scratch_rows_start_a_page_and_lie_1kb_apart_modulo_4kb(rows, n, offset):
    import numba

    from npseg.ops.scratch import staggered_rows

    rows_of = numba.njit(lambda r, k, o: staggered_rows(r, k, o))
    a = rows_of(rows, n, offset)
    assert a.shape[0] == rows and a.shape[1] >= n and a.flags.c_contiguous and a.dtype == F32
    assert a.ctypes.data % 4096 == 4 * offset and a.strides[0] % 4096 == 1024


def test_conv3x3_winograd_only_where_it_fits():
    x = np.zeros((4, 6, 7), F32)  # odd width
    with pytest.raises(steps.ShapeError, match="winograd does not fit"):
        steps.conv3x3(x, np.zeros((4, 4, 3, 3), F32), np.zeros(4, F32), np.zeros((4, 6, 7), F32), method="winograd")
    auto = steps.conv3x3(x, np.zeros((4, 4, 3, 3), F32), np.zeros(4, F32), np.zeros((4, 6, 7), F32))
    assert auto[-1].func.__name__ == "conv3x3_nb"


@SETTINGS
@given(cin=st.sampled_from([1, 3, 8, 16, 47, 48, 64, 96]), cout=st.integers(1, 66), h=st.integers(1, 24),
       w=st.integers(1, 24), act=ACTS, seed=st.integers(0, 2**31))
def test_conv1x1_loops_and_gemm(cin, cout, h, w, act, seed):
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, cin, h, w), rand(rng, cout, cin, 1, 1), rand(rng, cout)
    out = np.zeros((cout, h, w), F32)
    run(steps.conv1x1(x, wt, b, out, act))
    assert_close(out, REF_ACT[act](conv1x1_ref(*f64(x, wt, b))))


@SETTINGS
@given(groups=st.sampled_from([1, 2, 4]), per_group=st.integers(1, 12), h=st.integers(2, 33), w=st.integers(2, 33),
       offset=st.floats(-10, 10), act=ACTS, seed=st.integers(0, 2**31))
def test_group_norm_coeffs_then_affine_act(groups, per_group, h, w, offset, act, seed):
    """GroupNorm as per-channel scale/shift, applied in place with an activation.

    x * scale + shift loses |mean| / std float32 ulps to cancellation (so does any float32
    GroupNorm); groups here have >= 4 values and |mean| <= 10 std."""
    rng = np.random.default_rng(seed)
    c = groups * per_group
    x = rand(rng, c, h, w) + F32(offset)
    gamma, beta = rand(rng, c), rand(rng, c)
    scale, shift, y = np.zeros(c, F32), np.zeros(c, F32), x.copy()
    run(steps.group_norm_coeffs(x, groups, gamma, beta, scale, shift) + steps.affine_act(y, scale, shift, act))
    assert_close(y, REF_ACT[act](group_norm_ref(*f64(x), groups, *f64(gamma, beta))), 2e-5)


@SETTINGS
@given(cin=st.integers(1, 16), cout=st.integers(1, 16), h=st.integers(1, 16), w=st.integers(1, 16),
       act=ACTS, pad_width=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**31))
def test_down2x2_direct(cin, cout, h, w, act, pad_width, seed):
    """Non-affine GroupNorm (one group here) fused into the input of a 2x2 stride-2 conv; the
    optional padded copy is pad_nb's layout exactly (border untouched)."""
    rng = np.random.default_rng(seed)
    x, wt, b = rand(rng, cin, 2 * h, 2 * w), rand(rng, cout, cin, 2, 2), rand(rng, cout)
    ones, zeros = np.ones(cin, F32), np.zeros(cin, F32)
    scale, shift = np.zeros(cin, F32), np.zeros(cin, F32)
    out = np.zeros((cout, h, w), F32)
    padded = None if pad_width is None else steps.padded_buffer(out, pad_width)
    run(steps.group_norm_coeffs(x, 1, ones, zeros, scale, shift)
        + steps.down2x2(x, scale, shift, wt, b, out, act, padded, pad_width))
    ref = conv2d_ref(group_norm_ref(*f64(x), 1), *f64(wt, b), stride=2)
    assert_close(out, REF_ACT[act](ref), 2e-5)
    if padded is not None:
        expected = steps.padded_buffer(out, pad_width)
        run(steps.pad(out, pad_width, expected))
        assert np.array_equal(padded, expected)


@SETTINGS
@given(cin=st.integers(1, 4), c_mid=st.sampled_from([4, 8, 12]), cout=st.sampled_from([4, 8]),
       groups=st.sampled_from([1, 2, 4]), h=st.integers(1, 20), w=st.integers(1, 20), act=ACTS,
       pad_width=st.sampled_from([1, 2]), out_pad_width=st.sampled_from([None, 1, 3]), seed=st.integers(0, 2**31))
def test_conv_gn_down_folded(cin, c_mid, cout, groups, h, w, act, pad_width, out_pad_width, seed):
    """The first layer's chain (3x3 conv, non-affine GroupNorm, 2x2 stride-2 conv) folded per frame
    into a statistics pass and one 4x4 stride-2 conv, against the three reference ops in float64."""
    rng = np.random.default_rng(seed)
    x = rng.random((cin, 2 * h, 2 * w)).astype(F32)  # image-like input in [0, 1]
    w1, b1, w2, b2 = rand(rng, c_mid, cin, 3, 3), rand(rng, c_mid), rand(rng, cout, c_mid, 2, 2), rand(rng, cout)
    padded = steps.padded_buffer(x, pad_width)
    out = np.zeros((cout, h, w), F32)
    out_padded = None if out_pad_width is None else steps.padded_buffer(out, out_pad_width)
    run(steps.pad(x, pad_width, padded)
        + steps.conv_gn_down(x, padded, pad_width, w1, b1, groups, w2, b2, out, act, out_padded, out_pad_width))
    mid = group_norm_ref(conv2d_ref(*f64(x, w1, b1), padding=1), groups)
    assert_close(out, REF_ACT[act](conv2d_ref(mid, *f64(w2, b2), stride=2)), 2e-5)
    if out_padded is not None:
        expected = steps.padded_buffer(out, out_pad_width)
        run(steps.pad(out, out_pad_width, expected))
        assert np.array_equal(out_padded, expected)


def test_conv_gn_down_rejects_bad_widths():
    x = np.zeros((3, 8, 8), F32)
    padded = steps.padded_buffer(x, 1)
    with pytest.raises(steps.ShapeError, match="multiples of 4"):
        steps.conv_gn_down(x, padded, 1, np.zeros((6, 3, 3, 3), F32), np.zeros(6, F32), 2,
                           np.zeros((4, 6, 2, 2), F32), np.zeros(4, F32), np.zeros((4, 4, 4), F32))


@SETTINGS
@given(c=st.integers(1, 8), h=st.integers(1, 20), w=st.integers(1, 20), out_h=st.integers(1, 40),
       out_w=st.integers(1, 40), doubling=st.booleans(), act=ACTS, seed=st.integers(0, 2**31))
def test_resize_bilinear_align_corners_with_affine(c, h, w, out_h, out_w, doubling, act, seed):
    """Any sizes, and exact doubling (the decoder's, which takes a gather-free x pass)."""
    if doubling:
        out_h, out_w = 2 * h, 2 * w
    rng = np.random.default_rng(seed)
    x, scale, shift = rand(rng, c, h, w), rand(rng, c), rand(rng, c)
    out = np.zeros((c, out_h, out_w), F32)
    run(steps.resize_bilinear(x, scale, shift, out, act))
    ref = resize_bilinear_ac_ref(*f64(x), out_h, out_w) * scale[:, None, None] + shift[:, None, None]
    assert_close(out, REF_ACT[act](ref))


@SETTINGS
@given(c=st.integers(1, 8), h=st.integers(1, 12), w=st.integers(1, 12), act=ACTS, seed=st.integers(0, 2**31))
def test_max_pool_with_affine_before(c, h, w, act, seed):
    """Negative scales included: the affine must be applied before the max."""
    rng = np.random.default_rng(seed)
    x, scale, shift = rand(rng, c, 2 * h, 2 * w), rand(rng, c), rand(rng, c)
    out = np.zeros((c, h, w), F32)
    run(steps.max_pool2x2(x, scale, shift, out, act))
    ref = max_pool2x2_ref(x.astype(np.float64) * scale[:, None, None] + shift[:, None, None])
    assert_close(out, REF_ACT[act](ref))


@SETTINGS
@given(q=st.integers(1, 24), h=st.integers(1, 20), w=st.integers(1, 20), seed=st.integers(0, 2**31))
def test_gsa_norm_gates_shuffle(q, h, w, seed):
    rng = np.random.default_rng(seed)
    c = 4 * q
    x, gates = rand(rng, c, h, w, scale=3.0), rand(rng, c, h, w)
    g1, b1, g2, b2 = rand(rng, c), rand(rng, c), rand(rng, c), rand(rng, c)
    out = np.zeros_like(x)
    gate_scale = (g1[:, None, None] * gates).astype(F32)
    gate_shift = (b1[:, None, None] * gates).astype(F32)
    run(steps.gsa_norm(x, gate_scale, gate_shift, shuffle_source(c), g2, b2, out))
    assert_close(out, gsa_norm_ref(*f64(x, g1, b1, gates, g2, b2)), 2e-5)


@SETTINGS
@given(c=st.integers(1, 48), h=st.integers(1, 20), w=st.integers(1, 20), boundary=st.booleans(),
       seed=st.integers(0, 2**31))
def test_gate_head_and_merge(c, h, w, boundary, seed):
    rng = np.random.default_rng(seed)
    y, skip, adapted = rand(rng, c, h, w), rand(rng, c, h, w), rand(rng, c, h, w)
    wb, wr = rand(rng, c, scale=0.3), rand(rng, c, scale=0.3)
    bb, br, rw, bw = (float(v) for v in rng.standard_normal(4))
    region, bound, ours = np.zeros((h, w), F32), np.zeros((h, w), F32), y.copy()
    run(steps.gate_head(ours, wb, bb, wr, br, region, bound, boundary))
    ref_y, ref_r, ref_b = gate_head_ref(*f64(y, wb), bb, *f64(wr), br, boundary)
    assert_close(ours, ref_y)
    assert_close(region, ref_r[0] if ref_r.ndim == 3 else ref_r)
    assert_close(bound, ref_b[0] if ref_b.ndim == 3 else ref_b)
    out = np.zeros_like(skip)
    run(steps.merge(adapted, skip, region, bound, rw, bw, out))
    assert_close(out, merge_ref(*f64(adapted, skip, region, bound), rw, bw))


@SETTINGS
@given(c=st.integers(1, 64), h=st.integers(1, 16), w=st.integers(1, 16), alpha=st.floats(-1, 1),
       seed=st.integers(0, 2**31))
def test_agf_fuse_and_ssa(c, h, w, alpha, seed):
    rng = np.random.default_rng(seed)
    logits2, f3, t4 = rand(rng, 2, h, w, scale=4.0), rand(rng, c, h, w), rand(rng, c, h, w)
    out = np.zeros_like(f3)
    run(steps.agf_fuse(logits2, f3, t4, out))
    assert_close(out, agf_fuse_ref(*f64(logits2, f3, t4)))
    z = np.zeros_like(f3)
    run(steps.ssa(f3, alpha, z))
    assert_close(z, ssa_ref(f3.astype(np.float64), alpha))


@SETTINGS
@given(c=st.integers(1, 8), h=st.integers(1, 20), w=st.integers(1, 30), pad=st.integers(1, 3),
       seed=st.integers(0, 2**31))
def test_add_in_place(c, h, w, pad, seed):
    """acc += other (+ bias), and with a pad buffer the sums also fill its interior (border stays 0)."""
    rng = np.random.default_rng(seed)
    a, b, bias = rand(rng, c, h, w), rand(rng, c, h, w), rand(rng, c)
    ours, with_bias, padded_sum = a.copy(), a.copy(), a.copy()
    padded = steps.padded_buffer(a, pad)
    run(steps.add(ours, b) + steps.add(with_bias, b, bias) + steps.add(padded_sum, b, bias, padded, pad))
    assert_close(ours, a.astype(np.float64) + b)
    assert_close(with_bias, a.astype(np.float64) + b + bias[:, None, None])
    np.testing.assert_array_equal(padded_sum, with_bias)
    expected = np.zeros_like(padded)
    run(steps.pad(with_bias, pad, expected))
    np.testing.assert_array_equal(padded, expected)


@SETTINGS
@given(cin=st.sampled_from([3, 16, 48, 64]), cout=st.integers(1, 50), h=st.integers(1, 20), w=st.integers(1, 20),
       seed=st.integers(0, 2**31))
def test_residual_conv1x1(cin, cout, h, w, seed):
    """x += conv1x1(src) + b (the EDB's fusion and residual), narrow (loops) and wide (GEMM)."""
    rng = np.random.default_rng(seed)
    x, src, wt, b = rand(rng, cout, h, w), rand(rng, cin, h, w), rand(rng, cout, cin, 1, 1), rand(rng, cout)
    ours = x.copy()
    run(steps.residual_conv1x1(ours, src, wt, b, np.zeros_like(x)))
    assert_close(ours, x + conv1x1_ref(*f64(src, wt, b)))


def test_fast_gelu_and_sigmoid_accuracy():
    """The rational erf/tanh forms over the whole float range that matters (and beyond the clamps)."""
    x = np.concatenate([np.linspace(-12, 12, 400_001), [-1e4, -60, -9.5, 9.5, 60, 1e4, 0.0]]).astype(F32)
    out = np.empty_like(x)
    gelu_nb(x, out)
    gelu_err = np.abs(out - gelu_ref(x.astype(np.float64)))
    assert (gelu_err <= 1e-6 + 3e-7 * np.abs(x)).all(), gelu_err.max()
    sigmoid_nb(x, out)
    assert np.abs(out - sigmoid_ref(x.astype(np.float64))).max() <= 6e-7


@settings(max_examples=10, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 2**31), rgb=st.booleans(),
       affine=st.booleans())
def test_to_planar_matches_reference(h, w, seed, rgb, affine):
    """Exact for a pure scale (UltraSeg's /255); within a rounding for scale + shift (the kernel may fuse them)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    scale = (rng.uniform(0.001, 0.05, 3) if affine else np.full(3, 1 / 255)).astype(F32)
    shift = (rng.uniform(-3, 3, 3) if affine else np.zeros(3)).astype(F32)
    out = np.zeros((3, h, w), F32)
    to_planar_nb(img, rgb, scale, shift, out)
    np.testing.assert_allclose(out, to_planar_ref(img, rgb, scale, shift), rtol=0, atol=0 if not affine else 1e-6)


@pytest.mark.parametrize("make", [
    lambda z: steps.conv3x3(z((4, 8, 8)), z((4, 3, 3, 3)), z(4), z((4, 8, 8))),  # 4 inputs vs groups of 3
    lambda z: steps.conv3x3(z((3, 8, 8)), z((4, 3, 3, 3)), z(4), z((4, 8, 9))),  # wrong output size
    lambda z: steps.conv3x3(z((3, 8, 8)), z((4, 3, 3, 3)), z(4), z((4, 8, 8)), dilation=4),
    lambda z: steps.conv3x3(z((3, 8, 8)), z((4, 3, 3, 3)), z(4), z((4, 8, 8)), 2, 0, z((3, 10)), 2),  # bad pad buffer
    lambda z: steps.conv1x1(z((3, 4, 4)), z((2, 4, 1, 1)), z(2), z((2, 4, 4))),
    lambda z: steps.resize_bilinear(z((2, 4, 4)), z(3), z(3), z((2, 8, 8))),
    lambda z: steps.max_pool2x2(z((2, 5, 4)), z(2), z(2), z((2, 2, 2))),
    lambda z: steps.affine_act(z((2, 4, 4)), z(2), z(2), act=7),
    lambda z: steps.gsa_norm(z((4, 2, 2)), z((4, 2, 2)), z((4, 2, 2)), np.zeros(4, np.int64), z(4), z(4), z((4, 2, 2))),
    lambda z: steps.add(z((2, 3)), z((3, 2))),
])
def test_steps_reject_what_kernels_would_read_out_of_bounds(make):
    with pytest.raises(steps.ShapeError):
        make(lambda shape: np.zeros(shape, F32))


def test_steps_reject_wrong_dtype_and_layout():
    x = np.zeros((3, 8, 8), F32)
    with pytest.raises(steps.ShapeError):
        steps.conv3x3(x.astype(np.float64), np.zeros((4, 3, 3, 3), F32), np.zeros(4, F32), np.zeros((4, 8, 8), F32))
    with pytest.raises(steps.ShapeError):
        steps.affine_act(np.zeros((8, 8, 3), F32).transpose(2, 0, 1), np.zeros(3, F32), np.zeros(3, F32))
