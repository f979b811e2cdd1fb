"""Kernels compiled in the background: frames run on the reference until the plan is compiled,
then on the plan; a run that ends early exits cleanly and keeps what it compiled."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import npseg
from npseg import engines
from npseg.background_compile import BackgroundCompile

from conftest import REPO

pytestmark = pytest.mark.skipif("numba" not in engines.available(), reason="the Numba backend is not importable")


class _HeldCompile:
    """Stands in for BackgroundCompile: compiling, and finished only when the test says so."""

    def __init__(self, plan, also=(), finish_elsewhere=None):
        self.finished = threading.Event()
        _HeldCompile.last = self

    def wait_while_loading(self):
        pass


def _frame():
    return np.random.default_rng(3).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def test_reference_until_compiled_then_the_plan(monkeypatch):
    monkeypatch.setattr(engines, "BackgroundCompile", _HeldCompile)
    frame = _frame()
    seg = npseg.load("ultraseg-108k", size=64, compile_in_background=True)
    reference = npseg.load("ultraseg-108k", backend="numpy", size=64).logits(frame)
    compiled = npseg.load("ultraseg-108k", size=64).logits(frame)
    np.testing.assert_array_equal(seg.logits(frame), reference)
    _HeldCompile.last.finished.set()
    np.testing.assert_array_equal(seg.logits(frame), compiled)
    np.testing.assert_array_equal(seg.predict(frame), npseg.load("ultraseg-108k", size=64).predict(frame))


def test_frames_on_the_reference_convert_without_kernels(monkeypatch):
    """While the kernels compile, a frame's conversion must not call a kernel either: it would wait
    for Numba's compiler lock (seconds per kernel on a first run)."""
    from npseg import segmenter

    def refuse(*args):
        raise AssertionError("the frame conversion kernel ran while the kernels compiled")

    frame = _frame()
    reference = npseg.load("ultraseg-108k", backend="numpy", size=64).predict(frame)
    monkeypatch.setattr(engines, "BackgroundCompile", _HeldCompile)
    monkeypatch.setattr(segmenter, "to_planar_nb", refuse)
    seg = npseg.load("ultraseg-108k", size=64, compile_in_background=True)
    np.testing.assert_array_equal(seg.predict(frame), reference)


def test_stop_ends_after_the_step_in_hand():
    release, ran = threading.Event(), []

    class Plan:
        steps = [lambda: ran.append(1), lambda: (release.wait(5), ran.append(2)), lambda: ran.append(3)]

    job = BackgroundCompile(Plan())
    job._stop.set()  # as atexit does, while the second step runs
    release.set()
    job.stop()
    assert job.finished.is_set() and ran in ([1, 2], [1])


def test_hand_over_starts_the_command_and_no_longer_waits(tmp_path):
    from npseg import background_compile

    release, marker = threading.Event(), tmp_path / "finished-elsewhere"

    class Plan:
        steps = [lambda: release.wait(30)]

    job = BackgroundCompile(Plan(), finish_elsewhere=[sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
    try:
        assert background_compile.hand_over_unfinished() == 1
        assert background_compile.hand_over_unfinished() == 0  # handed over once, not waited for at exit
        for _ in range(300):
            if marker.exists():
                break
            threading.Event().wait(0.05)
        assert marker.exists()
    finally:
        release.set()
        job.stop()


def test_a_hand_over_that_cannot_start_keeps_waiting_at_exit(tmp_path):
    from npseg import background_compile

    release = threading.Event()

    class Plan:
        steps = [lambda: release.wait(30)]

    job = BackgroundCompile(Plan(), finish_elsewhere=[str(tmp_path / "no-such-program")])
    try:
        assert background_compile.hand_over_unfinished() == 0
        assert job in background_compile._running  # still stopped and joined at exit
    finally:
        release.set()
        job.stop()


def test_one_background_warmup_per_model_size_and_cache():
    from npseg.cli import _background_warmup_lock

    first = _background_warmup_lock(["ultraseg-108k"], (64, 64))
    try:
        assert first is not None
        assert _background_warmup_lock(["ultraseg-108k"], (64, 64)) is None
        other = _background_warmup_lock(["ultraseg-108k"], (96, 96))
        assert other is not None
        other.close()
    finally:
        first.close()


_FIRST_FRAME = ("import numpy as np, npseg\n"
                "seg = npseg.load('ultraseg-108k', size=64, compile_in_background=True)\n"
                "seg.predict(np.zeros((64, 64, 3), np.uint8))\n"
                "print('reference' if seg._engine._compiling else 'plan')\n")


def _first_frame(env) -> str:
    proc = subprocess.run([sys.executable, "-c", _FIRST_FRAME], env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_cold_run_that_ends_early_exits_cleanly(tmp_path):
    """Empty Numba cache: the reference runs the frame, the process exits 0 after the kernel in hand,
    and what was compiled is in the cache."""
    assert _first_frame({**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}) == "reference"
    assert any((tmp_path / "cache").rglob("*.nbi"))


def test_a_warm_cache_keeps_every_frame_on_the_plan():
    npseg.load("ultraseg-108k", size=64)._engine.plan(64, 64).run()  # every kernel in this run's cache
    assert _first_frame(dict(os.environ)) == "plan"
