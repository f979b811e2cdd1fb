"""Worker processes for `npseg segment --jobs N`: one thread each, results in input order.

The parent loads the model and compiles its kernels before the first worker starts. On Linux
the workers are forked from it then (no other thread runs in it at that point): each starts
in milliseconds with the model and its compiled kernels. Elsewhere they are spawned (a fresh
interpreter) and load the kernels from Numba's cache.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

# read by NumPy's OpenBLAS and by Numba when a worker imports them
ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                     "NUMBA_NUM_THREADS")}


def default_jobs() -> int:
    """The number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API on this platform
        return os.cpu_count() or 1


def _start_worker(initializer, initargs) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops handing out work
    import cv2

    cv2.setNumThreads(1)  # one thread (a forked worker's parent has already stopped its own pool)
    initializer(*initargs)


@contextlib.contextmanager
def worker_pool(jobs: int, initializer, initargs=()):
    """A ProcessPoolExecutor of `jobs` single-thread workers, each running initializer(*initargs)
    first (a forked worker already holds what the parent held). Leaving the block by an exception
    cancels the work not yet started."""
    import multiprocessing  # imported here: a one-process run does without them
    from concurrent.futures import ProcessPoolExecutor

    saved = {name: os.environ.get(name) for name in ONE_THREAD}
    os.environ.update(ONE_THREAD)  # inherited by the workers, which start on demand inside the block
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    if method == "fork":
        # OpenCV's thread pool, started by the parent's warm-up frame, does not exist in a forked
        # child: setNumThreads there would wait for its threads forever. The parent only collects
        # results from here on, so it stops its pool before the workers fork.
        import cv2

        cv2.setNumThreads(1)
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method),
                               initializer=_start_worker, initargs=(initializer, initargs))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
