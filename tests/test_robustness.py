"""Bad inputs give a specific, typed error; the documented conversions give the same mask.

The table below holds one row per distinct bad input (frames handed to
predict, and weights files handed to load): each row asserts the exception
type and a fragment of its message.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile

import cv2
import numpy as np
import pytest

import npseg
from npseg import WeightsError
from npseg.cli import main as cli_main  # imported at collection: its default streams stay open
from npseg.frames import MAX_SIDE, MIN_SIDE
from npseg.segmenter import BUNDLED_DIR
from npseg.weights import _metadata_checksum, load, save, tensors_checksum

BUNDLED = BUNDLED_DIR / "ultraseg-130k.safetensors"


@pytest.fixture(scope="module")
def model():
    # a small network input keeps the NumPy reference fast; the frame checks do not depend on it
    return npseg.load("ultraseg-130k", size=64)


@pytest.fixture(scope="module")
def base_weights():
    return load(BUNDLED)


def frame(h=48, w=64, c=3, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, 256, shape).astype(dtype)


def with_value(a, value):
    a = a.copy()
    a[3, 5, 1] = value
    return a


# ---- frames ------------------------------------------------------------------------------------

BAD_FRAMES = {
    "python list": (lambda: frame().tolist(), TypeError, "must be a numpy array"),
    "None": (lambda: None, TypeError, "got NoneType"),
    "file name instead of image": (lambda: "frame.jpg", TypeError, "got str"),
    "0-d array": (lambda: np.array(7, np.uint8), ValueError, "0 dimension(s)"),
    "1-d array": (lambda: np.zeros(100, np.uint8), ValueError, "1 dimension(s)"),
    "batch of frames (4-d)": (lambda: np.zeros((2, 48, 64, 3), np.uint8), ValueError, "loop over a batch"),
    "2 channels": (lambda: frame(c=2), ValueError, "frame has 2 channels"),
    "5 channels": (lambda: frame(c=5), ValueError, "frame has 5 channels"),
    "channels-first CHW": (lambda: frame().transpose(2, 0, 1), ValueError, "channels-first"),
    "uint16 (16-bit PNG)": (lambda: frame(dtype=np.uint16), TypeError, "(frame >> 8).astype(np.uint8)"),
    "int64 0..255": (lambda: frame(dtype=np.int64), TypeError, "dtype int64 is not supported"),
    "bool": (lambda: frame() > 128, TypeError, "dtype bool is not supported"),
    "complex": (lambda: frame().astype(np.complex64), TypeError, "dtype complex64"),
    "object": (lambda: frame().astype(object), TypeError, "dtype object"),
    "float with NaN": (lambda: with_value(frame(dtype=np.float32), np.nan), ValueError, "1 NaN/inf value(s)"),
    "float with +inf": (lambda: with_value(frame(dtype=np.float64), np.inf), ValueError, "NaN/inf"),
    "float with -inf": (lambda: with_value(frame(dtype=np.float16), -np.inf), ValueError, "NaN/inf"),
    "float in 0..255": (lambda: frame().astype(np.float32), ValueError, "for 0..255 values use"),
    "float below 0": (lambda: frame(dtype=np.float32) - 0.5, ValueError, "expected [0, 1]"),
    "empty 0x0x3": (lambda: np.zeros((0, 0, 3), np.uint8), ValueError, "frame is empty: 0x0"),
    "empty width": (lambda: np.zeros((48, 0, 3), np.uint8), ValueError, "frame is empty: 48x0"),
    "tiny 8x8": (lambda: frame(8, 8), ValueError, f"expected at least {MIN_SIDE}x{MIN_SIDE}"),
    "one-pixel-high strip": (lambda: frame(1, 640), ValueError, "too small: 1x640"),
    "huge height": (lambda: np.zeros((MAX_SIDE + 1, 16, 3), np.uint8), ValueError,
                    f"the longest side accepted is {MAX_SIDE}"),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_bad_frame_is_refused(model, name):
    make, error, fragment = BAD_FRAMES[name]
    bad = make()
    for method in (model.predict, model.predict_proba, model.logits):
        with pytest.raises(error) as info:
            method(bad)
        assert fragment in str(info.value)


# ---- weights files -----------------------------------------------------------------------------

def split(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def signed(meta: dict) -> dict:
    """Metadata with its checksum recomputed, as a (buggy or malicious) writer would produce."""
    meta = dict(meta)
    meta["metadata_sha256"] = _metadata_checksum(meta)
    return meta


def write_tensors(tensors: dict, meta: dict) -> bytes:
    """A safetensors file with consistent checksums but whatever tensors it is given."""
    from safetensors.numpy import save

    meta = dict(meta, tensors_sha256=tensors_checksum(tensors))
    return save(tensors, metadata=signed(meta))


def edit_meta(raw: bytes, resign: bool = False, **changes) -> bytes:
    header, data = split(raw)
    meta = {k: v for k, v in {**header["__metadata__"], **changes}.items() if v is not None}
    header["__metadata__"] = signed(meta) if resign else meta
    return join(header, data)


def edit_entry(raw: bytes, name: str, **changes) -> bytes:
    header, data = split(raw)
    header[name].update(changes)
    return join(header, data)


def header_len(raw: bytes) -> int:
    return struct.unpack("<Q", raw[:8])[0]


def flip(raw: bytes, position: int) -> bytes:
    return raw[:position] + bytes([raw[position] ^ 0x5A]) + raw[position + 1:]


def duplicate_key(raw: bytes, name: str) -> bytes:
    n = header_len(raw)
    text = raw[8:8 + n].rstrip()[:-1] + f',"{name}":1}}'.encode()  # json.dumps cannot write one
    return struct.pack("<Q", len(text)) + text + raw[8 + n:]


def torch_zip_checkpoint(path) -> bytes:
    with zipfile.ZipFile(path, "w") as z:  # the container torch.save has written since 1.6
        z.writestr("archive/data.pkl", pickle.dumps({"state_dict": {}}))
    return path.read_bytes()


def tensors_with(base, **changes):
    tensors = dict(base.tensors)
    for name, value in changes.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    return tensors


# each builder gets (raw bytes of a valid, freshly saved file, its Weights, tmp_path) -> bytes
BAD_FILES = {
    "empty file": (lambda raw, w, tmp: b"", "too short to be a safetensors file"),
    "truncated inside the length field": (lambda raw, w, tmp: raw[:5], "too short"),
    "truncated inside the header": (lambda raw, w, tmp: raw[:200], "the file is truncated or corrupt"),
    "truncated inside the data": (lambda raw, w, tmp: raw[:-1000], "claims bytes"),
    "flipped byte in the data": (lambda raw, w, tmp: flip(raw, len(raw) - 777), "does not match its SHA-256"),
    "flipped byte in the header JSON": (lambda raw, w, tmp: flip(raw, 8), "header is not valid JSON"),
    "flipped byte in the length field": (lambda raw, w, tmp: flip(raw, 6), "header length field says"),
    "flipped metadata value": (lambda raw, w, tmp: edit_meta(raw, provenance='{"source": "tampered"}'),
                               "metadata does not match its SHA-256"),
    "header is a JSON list": (lambda raw, w, tmp: join([1, 2], b""), "expected an object"),
    "duplicate key in the header": (lambda raw, w, tmp: duplicate_key(raw, "final.0.bias"),
                                    "duplicate key(s) ['final.0.bias']"),
    "torch zip checkpoint (.pth)": (lambda raw, w, tmp: torch_zip_checkpoint(tmp / "ck.zip"), "never unpickles"),
    "legacy torch pickle (.pth)": (lambda raw, w, tmp: pickle.dumps({"model": 1}, protocol=2), "never unpickles"),
    "plain safetensors, no metadata": (
        lambda raw, w, tmp: join({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
        "no string-to-string '__metadata__'"),
    "another program's safetensors": (lambda raw, w, tmp: edit_meta(raw, format="pt"), "not an npseg weights file"),
    "unknown format version": (lambda raw, w, tmp: edit_meta(raw, format_version="99"), "unknown format_version '99'"),
    "unknown architecture": (lambda raw, w, tmp: edit_meta(raw, architecture="unet"), "unknown architecture 'unet'"),
    "unknown metadata field": (lambda raw, w, tmp: edit_meta(raw, quantized="int8"),
                               "unknown metadata field(s) ['quantized']"),
    "missing tensor checksum": (lambda raw, w, tmp: edit_meta(raw, resign=True, tensors_sha256=None),
                                "lacks ['tensors_sha256']"),
    "config is not JSON": (lambda raw, w, tmp: edit_meta(raw, resign=True, config="{widths"),
                           "'config' is not valid JSON"),
    "config with zero widths": (
        lambda raw, w, tmp: edit_meta(raw, resign=True, config=json.dumps(
            dict(w.config.to_dict(), widths=[0, 0, 0, 0, 0]))),
        "'config' is invalid"),
    "config with 3 classes": (
        lambda raw, w, tmp: edit_meta(raw, resign=True, config=json.dumps(dict(w.config.to_dict(), out_ch=3))),
        "out_ch is 3"),
    "config widths GroupNorm cannot split": (
        lambda raw, w, tmp: edit_meta(raw, resign=True, config=json.dumps(
            dict(w.config.to_dict(), widths=[6, 16, 48, 64, 96]))),
        "c0..c3 must be multiples of 4"),
    "input_size not a multiple of 16": (lambda raw, w, tmp: edit_meta(raw, resign=True, input_size="[250, 256]"),
                                        "'input_size' [250, 256] is invalid"),
    "float16 tensor": (
        lambda raw, w, tmp: write_tensors(tensors_with(w, **{"final.0.bias": w.tensors["final.0.bias"]
                                                             .astype(np.float16)}), split(raw)[0]["__metadata__"]),
        "'final.0.bias' has dtype F16, expected F32"),
    "missing tensor": (lambda raw, w, tmp: write_tensors(tensors_with(w, **{"ebn1.bias": None}),
                                                         split(raw)[0]["__metadata__"]),
                       "missing tensor 'ebn1.bias' (expected shape (8,))"),
    "extra tensor": (lambda raw, w, tmp: write_tensors(tensors_with(w, extra=np.zeros(3, np.float32)),
                                                       split(raw)[0]["__metadata__"]),
                     "unexpected tensor 'extra' (shape (3,))"),
    "shape mismatch": (lambda raw, w, tmp: write_tensors(tensors_with(w, **{"final.0.bias": np.zeros(3, np.float32)}),
                                                         split(raw)[0]["__metadata__"]),
                       "'final.0.bias' has shape (3,), expected (2,)"),
    "NaN in a tensor": (lambda raw, w, tmp: write_tensors(tensors_with(w, **{"ebn2.weight": np.full(16, np.nan, np.float32)}),
                                                          split(raw)[0]["__metadata__"]),
                        "'ebn2.weight' holds 16 non-finite value(s)"),
    "negative shape in an entry": (lambda raw, w, tmp: edit_entry(raw, "final.0.bias", shape=[-1, -2]),
                                   "invalid shape [-1, -2]"),
    "string data_offsets": (lambda raw, w, tmp: edit_entry(raw, "final.0.bias", data_offsets=["0", "8"]),
                            "invalid data_offsets"),
    "overlapping tensors": (
        lambda raw, w, tmp: edit_entry(raw, "final.0.bias", data_offsets=split(raw)[0]["ebn1.bias"]["data_offsets"][:1]
                                       + [split(raw)[0]["ebn1.bias"]["data_offsets"][0] + 8]),
        "gap or overlap"),
    "trailing bytes": (lambda raw, w, tmp: raw + b"\0" * 8, "8 trailing bytes"),
}


@pytest.fixture(scope="module")
def valid_file(base_weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("valid") / "valid.safetensors"
    save(path, base_weights)
    return path.read_bytes()


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_weights_file_is_refused(valid_file, base_weights, tmp_path, name):
    make, fragment = BAD_FILES[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(make(valid_file, base_weights, tmp_path))
    with pytest.raises(WeightsError) as info:
        load(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)  # every message names the file
    with pytest.raises(WeightsError):  # and the public entry point refuses it the same way
        npseg.load(path, backend="numpy")


BAD_PATHS = {
    "no such file": (lambda tmp: tmp / "absent.safetensors", "no such weights file"),
    "a directory": (lambda tmp: tmp, "is a directory"),
    "unknown bundled model name": (lambda tmp: "ultraseg-9m", "unknown weights name 'ultraseg-9m'"),
}


@pytest.mark.parametrize("name", list(BAD_PATHS))
def test_bad_weights_path_is_refused(tmp_path, name):
    make, fragment = BAD_PATHS[name]
    with pytest.raises(WeightsError) as info:
        npseg.load(make(tmp_path), backend="numpy")
    assert fragment in str(info.value)


def test_the_published_pth_checkpoint_is_refused_unread(upstream_dir):
    with pytest.raises(WeightsError, match="never unpickles"):
        load(upstream_dir / "best-ultraseg-130K.pth")


def test_the_table_is_big_enough():
    assert len(BAD_FRAMES) + len(BAD_FILES) + len(BAD_PATHS) >= 25


def test_a_valid_file_loads_back_equal(valid_file, base_weights, tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(valid_file)
    back = load(path)
    assert back.config == base_weights.config and back.provenance == base_weights.provenance
    for name, tensor in base_weights.tensors.items():
        np.testing.assert_array_equal(back.tensors[name], tensor)


def test_save_refuses_non_finite_weights(base_weights, tmp_path):
    bad = npseg.weights.Weights(config=base_weights.config,
                                tensors=tensors_with(base_weights, **{"final.0.bias": np.array([0, np.inf], np.float32)}))
    with pytest.raises(WeightsError, match="non-finite"):
        save(tmp_path / "w.safetensors", bad)


# ---- accepted frames: the documented conversions -----------------------------------------------

def test_conversions_give_the_mask_of_the_equivalent_bgr_frame(model):
    bgr = frame(96, 128)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    bgra[..., 3] = 17  # alpha is ignored whatever it holds
    expected_gray = model.predict(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    np.testing.assert_array_equal(model.predict(gray), expected_gray)
    np.testing.assert_array_equal(model.predict(gray[:, :, None]), expected_gray)
    expected = model.predict(bgr)
    np.testing.assert_array_equal(model.predict(bgra), expected)
    for dtype in (np.float32, np.float64):  # floats in [0, 1] are quantized to 8 bits
        np.testing.assert_array_equal(model.predict(bgr.astype(dtype) / 255), expected)


def test_any_memory_layout_works_and_the_frame_is_not_modified(model):
    big = frame(200, 260, seed=1)
    views = {
        "upside-down view": big[::-1],
        "strided view": big[::2, ::2],
        "channel-reversed view": big[:, :, ::-1],
        "fortran order": np.asfortranarray(big),
        "crop": big[10:150, 20:230],
    }
    for name, view in views.items():
        before = view.copy()
        mask = model.predict(view)
        assert mask.shape == view.shape[:2] and mask.dtype == np.uint8, name
        np.testing.assert_array_equal(mask, model.predict(np.ascontiguousarray(view)), err_msg=name)
        np.testing.assert_array_equal(view, before, err_msg=name)
    read_only = big.copy()
    read_only.flags.writeable = False
    np.testing.assert_array_equal(model.predict(read_only), model.predict(big))


def test_size_limits_are_inclusive(model):
    for h, w in ((MIN_SIDE, MIN_SIDE), (MAX_SIDE, MIN_SIDE)):
        assert model.predict(np.zeros((h, w, 3), np.uint8)).shape == (h, w)


# ---- the CLI: every bad input above ends in a one-line message and an exit code, no traceback ----

def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli_main(list(argv))  # an uncaught exception here is what a user would see as a traceback
    return code, capsys.readouterr().err


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_cli_reports_a_bad_weights_file_in_one_line(valid_file, base_weights, tmp_path, capsys, name):
    make, fragment = BAD_FILES[name]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(make(valid_file, base_weights, tmp_path))
    code, err = run_cli(capsys, "info", str(path))
    assert code == 2 and err.startswith("npseg: error: ") and fragment in err


@pytest.mark.parametrize("shape, expected_code, fragment", [
    pytest.param((8, 8, 3), 1, "frame is too small: 8x8", id="tiny image"),
    pytest.param((MAX_SIDE + 8, 16, 3), 1, "frame is too large", id="huge image"),
    pytest.param((64, 64), 0, "", id="grayscale image"),
    pytest.param((64, 64, 4), 0, "", id="BGRA image"),
])
def test_cli_segment_never_shows_a_traceback(tmp_path, capsys, shape, expected_code, fragment):
    image = tmp_path / "in" / "frame.png"
    image.parent.mkdir()
    cv2.imwrite(str(image), np.zeros(shape, np.uint8))
    code, err = run_cli(capsys, "segment", str(image), "--out", str(tmp_path / "out"),
                        "--backend", "numpy", "--size", "32")
    assert code == expected_code and "Traceback" not in err
    assert fragment in err and (code == 0 or err.startswith("npseg: warning: "))  # the frame is skipped, with why


def test_cli_video_with_tiny_frames_never_shows_a_traceback(tmp_path, capsys):
    clip = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (8, 8))
    for _ in range(3):
        writer.write(np.zeros((8, 8, 3), np.uint8))
    writer.release()
    code, err = run_cli(capsys, "video", str(clip), "-o", str(tmp_path / "out.avi"),
                        "--backend", "numpy", "--size", "32")
    assert code == 2 and err.startswith("npseg: error: ") and "frame is too small: 8x8" in err


@pytest.mark.parametrize("threshold", [float("nan"), -0.1, 1.5])
def test_threshold_outside_0_1_is_refused(threshold):
    seg = npseg.load("ultraseg-130k")
    with pytest.raises(ValueError, match=r"threshold must be a probability in \[0, 1\]"):
        seg.predict(np.zeros((64, 64, 3), np.uint8), threshold=threshold)
