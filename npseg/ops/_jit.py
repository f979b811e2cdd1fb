"""The Numba decorators kernels use, and the activation codes kernels take.

`error_model="numpy"` keeps divisions vectorisable (no ZeroDivisionError check);
`fastmath` lets reductions vectorise; `cache=True` makes a warm start load the
compiled code instead of compiling it. `kernel_ordered` drops reassociation, for
kernels whose float32 sums must keep their written order; `inline` helpers are
pasted into the calling kernel and compiled with its flags. Without Numba the
references stay importable and `npseg.engine_numba` refuses to import (the
NumPy engine runs).
"""
from __future__ import annotations

import sys

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where Numba is missing
    numba = None

ACT_NONE, ACT_RELU, ACT_GELU, ACT_RELU6 = 0, 1, 2, 3

# LLVM tunes recent Intel CPUs to "prefer-256-bit": loops stay at 8 float32 lanes although the CPU has
# 16 (AVX-512). Lifting it made UltraSeg-130K's forward at 256x256 about 12 % faster here (steps.py).
WIDE_VECTORS = "-prefer-256-bit"


def allow_wide_vectors() -> None:
    """Lets Numba's code use 512-bit vectors on an AVX-512 CPU: the host's features plus WIDE_VECTORS,
    set before Numba's code generator starts (it reads them once per process, for every kernel and
    for its cache's key). A target the user chose (NUMBA_CPU_NAME or NUMBA_CPU_FEATURES) stays as it
    is."""
    if numba is None or numba.config.CPU_NAME is not None or numba.config.CPU_FEATURES is not None:
        return
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    if "+avx512f" in features.split(","):
        numba.config.CPU_FEATURES = f"{features},{WIDE_VECTORS}"


allow_wide_vectors()


# fastmath without "reassoc": sums keep the written order (FMA contraction stays allowed)
ORDERED_FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}


def _compiled(fn, fastmath):
    if numba is None:
        return fn
    return numba.njit(cache=True, fastmath=fastmath, error_model="numpy", nogil=True)(fn)


def kernel(fn):
    return _compiled(fn, True)


def kernel_ordered(fn):
    return _compiled(fn, ORDERED_FASTMATH)


def inline(fn):
    if numba is None:
        return fn
    return numba.njit(inline="always")(fn)


# what Numba's CPU target imports only for features npseg's kernels do not use: SciPy's BLAS
# bindings (np.dot-like calls in jitted code, ~0.2 s) and cffi (calling C through cffi, ~0.02 s)
NOT_FOR_KERNELS = ("scipy.linalg", "cffi")


def load_target_for_kernels() -> None:
    """Loads Numba's CPU target (a process's first compiled call does otherwise, about half of a
    warm start) with NOT_FOR_KERNELS hidden, for the `npseg` command's own process.

    Numba then notes for the rest of the process that BLAS is missing for np.convolve and
    np.correlate (np.dot and np.linalg still import SciPy when they compile) and that cffi
    functions are not supported; a library user's process keeps Numba's full target. Call it
    where no other thread imports (the modules are hidden from the whole process meanwhile).
    """
    if numba is None:
        return
    from numba.core.registry import cpu_target

    hidden = [name for name in NOT_FOR_KERNELS if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # None: `import name...` raises ImportError
    try:
        cpu_target.target_context.refresh()
    finally:
        for name in hidden:
            del sys.modules[name]
