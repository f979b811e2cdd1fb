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

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where Numba is missing
    numba = None

ACT_NONE, ACT_RELU, ACT_GELU, ACT_RELU6 = 0, 1, 2, 3


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
