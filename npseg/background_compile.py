"""A plan's Numba kernels compiled in a background thread while the NumPy reference runs frames.

The first run after an install compiles every kernel a plan uses (about 20 s of one core for
UltraSeg); later runs load them from Numba's cache in well under a second. A BackgroundCompile
runs the plan once, step by step, in a thread (the engine leaves the plan's buffers to it until it
is finished): that compiles (or loads)
exactly the signatures the plan uses, and Numba saves each kernel to its cache as soon as it is
compiled. At interpreter exit the thread stops after the kernel in hand, so a short run leaves
what it compiled in the cache and the next run goes on from there. A process that ends with
os._exit (the `npseg` command) need not wait for that kernel (seconds for the largest ones):
hand_over_unfinished leaves the rest to a detached, low-priority process (`finish_elsewhere`).

Whether the kernels load or compile shows in Numba's cache statistics: a kernel missing from the
cache is counted as a miss before its compilation starts.
"""
from __future__ import annotations

import atexit
import os
import subprocess
import threading
from functools import partial

_running: set[BackgroundCompile] = set()


class BackgroundCompile:
    """Runs `plan` once in a daemon thread, then each of `also` (zero-argument calls of the caller's
    own kernels, e.g. the frame conversion); `finished` is set when it is done (or failed: the
    caller's own run of the plan then raises the error where it can be reported)."""

    def __init__(self, plan, also=(), finish_elsewhere: list[str] | None = None):
        """finish_elsewhere: the command of a process that compiles the same kernels (see
        hand_over_unfinished)."""
        self._steps = [*plan.steps, *also]
        self._finish_elsewhere = finish_elsewhere
        kernels = (step.func if isinstance(step, partial) else step for step in self._steps)
        self._kernels = [k for k in kernels if hasattr(k, "stats")]  # Numba dispatchers, not np.dot
        self._misses_before = self._misses()  # earlier compilations in this process do not count
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="npseg-compile", daemon=True)
        atexit.register(self.stop)
        _running.add(self)
        self._thread.start()

    def _run(self) -> None:
        try:
            for step in self._steps:
                if self._stop.is_set():
                    return
                step()
        except Exception:  # noqa: BLE001 - the engine's own run of the plan raises it again
            pass
        finally:
            self._steps = []
            atexit.unregister(self.stop)
            _running.discard(self)
            self.finished.set()

    def _misses(self) -> int:
        return sum(sum(k.stats.cache_misses.values()) for k in self._kernels)

    def compiling(self) -> bool:
        """True once one of the plan's kernels was missing from Numba's cache (compiling, not loading)."""
        return self._misses() > self._misses_before

    def wait_while_loading(self, poll_s: float = 0.005) -> None:
        """Returns when every kernel is ready, or as soon as one has to be compiled."""
        while not self.finished.wait(poll_s) and not self.compiling():
            pass

    def stop(self) -> None:
        """Stop after the step in hand and wait for it: a thread left inside the compiler while
        the interpreter shuts down could crash the exit."""
        self._stop.set()
        self._thread.join()


def hand_over_unfinished() -> int:
    """For a process about to end with os._exit, which does not tear the interpreter down (a
    thread inside the compiler cannot crash it): every compile still running that has a
    finish_elsewhere command starts it in a process group of its own (terminal signals do not
    reach it; it stays in the caller's session, where the scheduler weighs its low priority
    against the caller's processes) and is no longer waited for at exit. Returns how many."""
    if os.name != "posix":  # process groups and the warm-up's file lock are POSIX's
        return 0
    handed = 0
    for job in [job for job in list(_running) if job._finish_elsewhere]:
        try:
            subprocess.Popen(job._finish_elsewhere, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, process_group=0)
        except OSError:  # no process to hand over to: the exit waits for its kernel in hand, as before
            continue
        atexit.unregister(job.stop)
        _running.discard(job)
        handed += 1
    return handed
