"""Property-based fuzzing: whatever predict or load is handed, it answers or raises a typed error.

predict: a mask of the frame's size, or TypeError/ValueError. load: the
original weights exactly, or WeightsError; never another exception, never a
silently different model. The engines: any input size either runs or is
refused before a kernel loop starts (a crash here would kill the test process).
Example counts are bounded so the whole file runs in well under a minute in CI;
NPSEG_FUZZ_SCALE=20 multiplies them for a long campaign.
"""
from __future__ import annotations

import functools
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import npseg
from npseg import WeightsError
from npseg.engines import available
from npseg.models.ultraseg import UltraSegConfig, expected_tensors
from npseg.segmenter import BUNDLED_DIR
from npseg.weights import Weights, load, save

BACKENDS = sorted(available())
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCALE = float(os.environ.get("NPSEG_FUZZ_SCALE", "1"))  # e.g. 20 for a long campaign outside CI


def examples(n: int) -> int:
    return max(1, int(n * SCALE))

FRAME_DTYPES = [np.uint8, np.float16, np.float32, np.float64, np.uint16, np.int8, np.int64, np.bool_, np.complex64]


@pytest.fixture(scope="module", params=BACKENDS)
def model(request):
    # a 32x32 network input: the fuzzing is about the frame handling, not the network
    return npseg.load("ultraseg-130k", backend=request.param, size=32)


@st.composite
def frames(draw):
    dtype = np.dtype(draw(st.sampled_from(FRAME_DTYPES)))
    shape = draw(st.one_of(
        hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),  # mostly wrong shapes
        st.tuples(st.integers(0, 80), st.integers(0, 80), st.sampled_from([1, 2, 3, 4, 5])),
        st.tuples(st.integers(0, 80), st.integers(0, 80)),
    ))
    if dtype.kind == "f" and draw(st.booleans()):
        # mostly in [0, 1], sometimes with NaN/inf or out-of-range values mixed in
        elements = st.floats(0, 1, width=dtype.itemsize * 8)
        array = draw(hnp.arrays(dtype, shape, elements=elements,
                                fill=st.sampled_from([0.5, 1.5, -0.1, np.nan, np.inf]).map(dtype.type)))
    else:
        array = draw(hnp.arrays(dtype, shape))
    layout = draw(st.sampled_from(["plain", "reversed", "read-only", "fortran"]))
    if layout == "reversed" and array.ndim:
        array = array[::-1]
    elif layout == "read-only":
        array.flags.writeable = False
    elif layout == "fortran":
        array = np.asfortranarray(array)
    return array


@settings(FUZZ, max_examples=examples(120))
@given(frame=frames())
def test_predict_answers_or_refuses_clearly(model, frame):
    before = frame.copy()
    try:
        mask = model.predict(frame)
    except (TypeError, ValueError) as e:
        assert str(frame.dtype) in str(e)  # the message says what was given
        return
    finally:
        np.testing.assert_array_equal(frame, before)  # the caller's frame is never modified
    assert mask.shape == frame.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}


@pytest.mark.parametrize("backend", BACKENDS)
@settings(FUZZ, max_examples=examples(15))
@given(h=st.integers(1, 6).map(lambda k: 16 * k), w=st.integers(1, 6).map(lambda k: 16 * k))
def test_engine_runs_at_any_valid_input_size(backend, h, w):
    model = _model(backend, (h, w))
    x = np.random.default_rng(h * w).random((3, h, w), dtype=np.float32)
    out = model._engine.forward(x)
    assert out.shape == (model.config.out_ch, h, w) and np.isfinite(out).all()


@pytest.mark.parametrize("backend", BACKENDS)
@settings(FUZZ, max_examples=examples(15))
@given(shape=st.tuples(st.integers(0, 5), st.integers(0, 40), st.integers(0, 40)))
def test_engine_refuses_or_handles_any_input_shape(backend, shape):
    """The engine called directly (no Segmenter checks in front): a bad shape must raise, not crash."""
    model = _model(backend, (32, 32))
    x = np.zeros(shape, np.float32)
    try:
        out = model._engine.forward(x)
    except (ValueError, TypeError, IndexError, AssertionError):
        return
    assert out.shape == (model.config.out_ch, *shape[1:])


@st.composite
def configs(draw):
    """Any UltraSeg config the loader accepts (multiples of 4 for GroupNorm, 12 where EDB splits in 3)."""
    four = st.integers(1, 6).map(lambda k: 4 * k)
    return UltraSegConfig("fuzz", (draw(four), draw(four), 12 * draw(st.integers(1, 3)), draw(four), draw(four)),
                          fusion=draw(st.booleans()), learned_res_scale=draw(st.booleans()),
                          gsa_grid=draw(st.integers(1, 9)))


@settings(FUZZ, max_examples=examples(6))
@given(cfg=configs(), size=st.integers(1, 4).map(lambda k: 16 * k), seed=st.integers(0, 2**16))
def test_any_loadable_config_runs_on_every_backend(tmp_path_factory, cfg, size, seed):
    """Whatever architecture a weights file may declare and pass validation with, every engine runs it."""
    rng = np.random.default_rng(seed)
    tensors = {k: (0.2 * rng.standard_normal(s)).astype(np.float32) for k, s in expected_tensors(cfg).items()}
    for name in tensors:
        if name.endswith("running_var"):
            tensors[name] = np.abs(tensors[name]) + 0.5
    path = tmp_path_factory.mktemp("cfg") / "w.safetensors"
    save(path, Weights(config=cfg, tensors=tensors))
    frame = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    for backend in BACKENDS:
        mask = npseg.load(path, backend=backend, size=size).predict(frame)
        assert mask.shape == (40, 56) and mask.dtype == np.uint8


_models: dict = {}


def _model(backend, size):
    if (backend, size) not in _models:
        _models[backend, size] = npseg.load("ultraseg-130k", backend=backend, size=size)
    return _models[backend, size]


# ---- the loader --------------------------------------------------------------------------------

@functools.cache
def original() -> tuple[bytes, object]:
    """A freshly saved file (so it carries the metadata checksum) and its Weights.
    Not a fixture: hypothesis would print this 600 kB argument with every failure."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "original.safetensors"
        save(path, load(BUNDLED_DIR / "ultraseg-130k.safetensors"))
        return path.read_bytes(), load(path)


def assert_same_or_refused(raw: bytes, expected, tmp_path):
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(raw)
    try:
        got = load(path)
    except WeightsError:
        return
    # a mutation that still loads must not have changed anything (e.g. a space turned into a tab)
    assert (got.config, got.input_size, got.preprocessing, got.provenance, got.metrics) == \
           (expected.config, expected.input_size, expected.preprocessing, expected.provenance, expected.metrics)
    assert got.tensors.keys() == expected.tensors.keys()
    for name, tensor in expected.tensors.items():
        np.testing.assert_array_equal(got.tensors[name], tensor)


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_flipped_bytes_are_caught(tmp_path_factory, data):
    raw, expected = original()
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    # most flips in the header, where the structure is; some in the data, where the checksum is
    where = data.draw(st.sampled_from(["length", "header", "data"]))
    low, high = {"length": (0, 8), "header": (8, header_end), "data": (header_end, len(raw))}[where]
    mutated = bytearray(raw)
    for position in data.draw(st.lists(st.integers(low, high - 1), min_size=1, max_size=4)):
        mutated[position] ^= data.draw(st.integers(1, 255))
    assert_same_or_refused(bytes(mutated), expected, tmp_path_factory.mktemp("flip"))


@settings(FUZZ, max_examples=examples(60))
@given(data=st.data())
def test_truncated_inserted_or_deleted_bytes_are_caught(tmp_path_factory, data):
    raw, expected = original()
    position = data.draw(st.integers(0, len(raw)))
    edit = data.draw(st.sampled_from(["truncate", "insert", "delete"]))
    if edit == "truncate":
        mutated = raw[:position]
    elif edit == "insert":
        mutated = raw[:position] + data.draw(st.binary(min_size=1, max_size=16)) + raw[position:]
    else:
        mutated = raw[:position] + raw[position + data.draw(st.integers(1, 64)):]
    assert_same_or_refused(mutated, expected, tmp_path_factory.mktemp("edit"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(FUZZ, max_examples=examples(120))
@given(data=st.data())
def test_any_header_value_is_refused_or_harmless(tmp_path_factory, data):
    """Replace one header value (a tensor entry's field, a metadata field, or a whole entry) by any JSON."""
    raw, expected = original()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    names = sorted(k for k in header if k != "__metadata__")
    target = data.draw(st.sampled_from(["entry field", "whole entry", "metadata", "metadata as JSON"]))
    value = data.draw(json_values)
    if target == "entry field":
        header[data.draw(st.sampled_from(names))][data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = value
    elif target == "whole entry":
        header[data.draw(st.sampled_from(names + ["__metadata__"]))] = value
    else:
        key = data.draw(st.sampled_from(sorted(header["__metadata__"])))
        header["__metadata__"][key] = json.dumps(value) if target == "metadata as JSON" else value
    text = json.dumps(header).encode()
    assert_same_or_refused(struct.pack("<Q", len(text)) + text + raw[8 + n:], expected,
                           tmp_path_factory.mktemp("header"))
