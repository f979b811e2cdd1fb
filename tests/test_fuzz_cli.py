"""Fuzzing what the command line is handed: weights files and folders of frames.

Weights: random JSON in the header and metadata (huge integers, NaN, lone
surrogates, wrong types), checksums recomputed so that the deep checks are
reached: `load` gives a WeightsError or a model that predicts, `npseg info`
exits 0 or 2 with one line, never another exception. Folders: random names
(bytes that are not UTF-8 included) holding random bytes or real images:
`npseg segment` exits 0, 1 or 2 with one-line messages, and every file that
was there before is unchanged except the results in OUT/masks and OUT/overlays.
The command runs in process (a crash would still end the test run); the same
cases as a real subprocess are in test_cli.py. NPSEG_FUZZ_SCALE=20 multiplies
the example counts for a long campaign.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import QUICK, digests, forged_weights, png_claiming

import npseg
from npseg import WeightsError
from npseg.cli import main
from npseg.weights import load as load_weights

SCALE = float(os.environ.get("NPSEG_FUZZ_SCALE", "1"))
FUZZ = settings(deadline=None, max_examples=max(1, int(25 * SCALE)),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

numbers = st.sampled_from([0, -1, 16, 320, 2**31, 2**63, 10**30, -10**30]) | st.integers(-2**70, 2**70) | st.floats()
texts = st.text(max_size=6) | st.sampled_from(["\ud800", "\udcff", "\x00\n", "ultraseg", "softmax", "RGB"])
json_values = st.recursive(st.none() | st.booleans() | numbers | texts,
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=4),
                           max_leaves=10)


def run_cli(*argv) -> tuple[int, str]:
    """The command in process, its stderr captured (an uncaught exception fails the test)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([os.fsdecode(a) for a in argv])
    return code, err.getvalue()


@st.composite
def metadata_edits(draw):
    """One change to the metadata: a config field, a record's field, or a whole field, as JSON."""
    value = draw(json_values)
    field = draw(st.sampled_from(["config", "input_size", "preprocessing", "output", "provenance", "metrics"]))
    how = draw(st.sampled_from(["one key", "whole value", "raw text"]))

    def edit(meta):
        if how == "raw text":
            meta[field] = value if isinstance(value, str) else json.dumps(value)[:40]
            return
        old = json.loads(meta[field])
        if how == "one key" and isinstance(old, dict):
            old[draw(st.sampled_from(sorted(old) + ["extra"]))] = value
        elif how == "one key" and isinstance(old, list):
            old[draw(st.integers(0, len(old) - 1))] = value
        else:
            old = value
        meta[field] = json.dumps(old)

    return edit


@st.composite
def header_edits(draw):
    """One change to a tensor's header entry: its shape or data offsets, by any JSON value."""
    name = draw(st.sampled_from(["final.0.bias", "Down2.bn.running_var", "ebn1.weight"]))
    key = draw(st.sampled_from(["shape", "data_offsets", "dtype"]))
    value = draw(json_values | st.lists(numbers, min_size=1, max_size=3))
    return lambda header: header[name].update({key: value})


@settings(FUZZ)
@given(meta_edit=st.none() | metadata_edits(), header_edit=st.none() | header_edits())
def test_any_weights_header_or_config_is_refused_or_runs(meta_edit, header_edit):
    with tempfile.TemporaryDirectory() as tmp:
        path = forged_weights(Path(tmp) / "w.safetensors", edit_meta=meta_edit, edit_header=header_edit)
        try:
            load_weights(path)
            loaded = True
        except WeightsError:
            loaded = False
        code, err = run_cli("info", path)
        assert code == (0 if loaded else 2), err
        assert code == 0 or (err.count("\n") == 1 and err.startswith("npseg: error: ")), err
        if loaded:
            mask = npseg.load(path, backend="numpy", size=32).predict(np.zeros((40, 40, 3), np.uint8))
            assert mask.shape == (40, 40)


names = st.binary(min_size=1, max_size=8).filter(lambda b: b"/" not in b and b"\0" not in b and b.strip(b"."))
image_bytes = st.builds(
    lambda h, w, ext, seed: cv2.imencode(ext, np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8))[1]
    .tobytes(), st.integers(4, 48), st.integers(4, 48), st.sampled_from([".png", ".jpg"]), st.integers(0, 9))
sizes = st.sampled_from([0, 1, 2**16, 40000, 2**31 - 1])
contents = (st.binary(max_size=48) | image_bytes | image_bytes.map(lambda b: b[: len(b) // 2])  # garbage, whole, cut
            | st.builds(png_claiming, sizes, sizes))  # a header over OpenCV's pixel limit, or an empty image
entries = st.tuples(st.sampled_from([b"", b"sub\xff/", b"masks/", b".hidden/"]), names,
                    st.sampled_from([b".png", b".jpg", b".JPEG", b".bmp", b".txt", b""]), contents)


@settings(FUZZ)
@given(files=st.lists(entries, min_size=1, max_size=6), out=st.sampled_from(["beside", "inside", "same"]))
def test_any_frame_folder_is_segmented_without_losing_a_file(files, out):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.fsencode(tmp)
        folder = os.path.join(root, b"in\xfe")
        for sub, name, suffix, data in files:
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
            with open(os.path.join(folder, sub, name + suffix), "wb") as f:
                f.write(data)
        out_dir = {"beside": os.path.join(root, b"out"), "inside": os.path.join(folder, b"res"), "same": folder}[out]
        before = digests(Path(os.fsdecode(root)))
        code, err = run_cli("segment", folder, "--out", out_dir, *QUICK)
        assert code in (0, 1, 2), err
        assert all(line.startswith(("npseg: error: ", "npseg: warning: ")) for line in err.splitlines()), err
        results = [os.path.relpath(os.path.join(out_dir, d), root) + b"/" for d in (b"masks", b"overlays")]
        after = digests(Path(os.fsdecode(root)))
        assert not [k for k in after if b".part" in k], after  # no temporary file left
        for name, digest in before.items():
            if not name.startswith(tuple(results)):  # only the results may be replaced
                assert after.get(name) == digest, name


component = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b
                                                      and b not in (b".", b".."))
relative_paths = (st.lists(component, min_size=1, max_size=3).map(b"/".join)  # stays inside the folder
                  | st.sampled_from([b"frame.png", b"clip.avi", b"a" * 300, b"b" * 300 + b".avi", b"7", b"",
                                     b"loop", b"frame.png/x"]))
option_values = st.text(max_size=12) | st.sampled_from(["100000", "1" + "0" * 40, "nan", "-0", "16x", "0.5"])


@st.composite
def command_lines(draw):
    """A command with random paths (names too long, not UTF-8, links in a loop) or option values."""
    path, other, value = draw(relative_paths), draw(relative_paths), draw(option_values)
    return draw(st.sampled_from([
        ["segment", path, "--out", other, *QUICK],
        ["video", path, "-o", other, *QUICK],
        ["info", path],
        ["segment", "frame.png", "--weights", path, "--backend", "numpy", "--out", other],
        ["segment", "frame.png", draw(st.sampled_from(["--size", "--threshold", "--limit"])), value, *QUICK[:2]],
        ["video", "clip.avi", "-o", "o.avi", draw(st.sampled_from(["--smooth", "--max-frames"])), value, *QUICK],
    ]))


@settings(FUZZ)
@given(argv=command_lines())
def test_any_command_line_ends_in_an_exit_code(argv):
    with tempfile.TemporaryDirectory() as tmp:
        here = os.getcwd()
        os.chdir(tmp)
        try:
            Path("frame.png").write_bytes(cv2.imencode(".png", np.full((40, 48, 3), 90, np.uint8))[1].tobytes())
            writer = cv2.VideoWriter("clip.avi", cv2.VideoWriter_fourcc(*"MJPG"), 25, (48, 40))
            writer.write(np.full((40, 48, 3), 90, np.uint8))
            writer.release()
            os.symlink("loop", "loop")
            try:
                code, err = run_cli(*argv)
            except SystemExit as e:  # argparse's usage errors
                code, err = e.code, ""
        finally:
            os.chdir(here)
    assert code in (0, 1, 2), err
    assert all(line.startswith(("npseg: error: ", "npseg: warning: ")) for line in err.splitlines()), err
