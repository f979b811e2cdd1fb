"""The same frame gives the same mask: run to run, model to model, backend to backend, thread to thread."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

import npseg
from npseg.engines import available

HAS_NUMBA = "numba" in available()
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="the Numba backend is not importable (numba missing)")
BACKENDS = ["numpy"] + (["numba"] if HAS_NUMBA else [])
# float32 Numba vs float64 NumPy: measured max |dp| ~1e-5 on Kvasir frames
PROBABILITY_TOLERANCE = 1e-4


def synthetic_frames() -> list[np.ndarray]:
    """Colonoscopy-like frames of several sizes: a reddish wall, a paler raised blob, noise."""
    rng = np.random.default_rng(6)
    frames = []
    for h, w in ((288, 352), (531, 617), (100, 900)):
        y, x = np.mgrid[:h, :w]
        frame = np.empty((h, w, 3), np.float32)
        frame[:] = (60, 70, 170)  # BGR
        blob = ((y - 0.4 * h) / (0.25 * h)) ** 2 + ((x - 0.55 * w) / (0.2 * w)) ** 2 < 1
        frame[blob] = (110, 140, 210)
        frame += rng.normal(0, 12, frame.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def frames(request) -> list[np.ndarray]:
    """Synthetic frames, plus the first Kvasir-SEG images where the shared data is present."""
    found = synthetic_frames()
    try:
        data = request.getfixturevalue("data_dir")
    except pytest.skip.Exception:
        return found
    for path in sorted((data / "kvasir-seg" / "images").glob("*.jpg"))[:2]:
        found.append(cv2.imread(str(path)))
    return found


_models: dict = {}


def model(backend: str, size: int = 256) -> npseg.Segmenter:
    if (backend, size) not in _models:
        _models[backend, size] = npseg.load("ultraseg-130k", backend=backend, size=size)
    return _models[backend, size]


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_to_run_and_model_to_model(backend, frames):
    # the NumPy reference is slow: run it at a smaller network input
    size = 256 if backend == "numba" else 128
    first, fresh = model(backend, size), npseg.load("ultraseg-130k", backend=backend, size=size)
    for frame in frames:
        mask, proba = first.predict(frame), first.predict_proba(frame)
        np.testing.assert_array_equal(first.predict(frame), mask)
        np.testing.assert_array_equal(first.predict_proba(frame), proba)  # bitwise: no hidden state
        np.testing.assert_array_equal(fresh.predict(frame), mask)
        np.testing.assert_array_equal(fresh.predict_proba(frame), proba)


@pytest.mark.parametrize("backend", BACKENDS)
def test_interleaved_input_sizes_do_not_leak_state(backend, frames):
    """Per-size plans and buffers: a call at another network size must not disturb this one."""
    small, large = model(backend, 128), model(backend)
    frame = frames[0]
    expected = large.predict_proba(frame)
    small.predict(frames[1])
    large.predict(frames[2])
    np.testing.assert_array_equal(large.predict_proba(frame), expected)


@needs_numba
def test_numba_matches_numpy(frames):
    fast, reference = model("numba"), model("numpy")
    for frame in frames:
        np.testing.assert_array_equal(fast.predict(frame), reference.predict(frame))
        np.testing.assert_allclose(fast.predict_proba(frame), reference.predict_proba(frame),
                                   atol=PROBABILITY_TOLERANCE, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_give_the_serial_results(backend, frames):
    """Several threads on one model (the Segmenter serializes the engine): same masks as serial calls."""
    shared = model(backend, 128)
    jobs = [frames[i % len(frames)] for i in range(8)]
    serial = [shared.predict_proba(frame) for frame in jobs]
    start = threading.Barrier(4)

    def work(frame):
        try:
            start.wait(timeout=5)  # the first four calls race each other
        except threading.BrokenBarrierError:
            pass
        return shared.predict_proba(frame)

    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = list(pool.map(work, jobs))
    for got, expected in zip(threaded, serial):
        np.testing.assert_array_equal(got, expected)
