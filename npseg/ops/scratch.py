"""Scratch rows for the kernels' accumulators and staged inputs, laid out against 4K aliasing.

A load whose address equals a pending store's modulo 4 KB waits for that store to finish (the
CPU compares only the low 12 bits first). Four accumulator rows 4 KB apart, updated in one loop,
made each row's update wait for the previous row's; where the allocator happened to put a
kernel's buffers changed its time by up to 1.5x from one process to the next (the Winograd 3x3
conv: 0.53-0.80 ms, laid out 0.50-0.54). Rows here start a 4 KB page plus an offset and lie
1 KB apart modulo 4 KB, so the rows of one pass never share their low 12 bits.
"""
from __future__ import annotations

import numpy as np

from ._jit import inline

ACCUMULATORS, INPUTS = 0, 128  # float32 offsets from a page: inputs 512 B from every accumulator row


@inline
def page_start(buffer):
    """Index of the first float32 of `buffer` that begins a 4 KB page."""
    return (-(buffer.ctypes.data // 4)) % 1024


@inline
def kb_staggered(n):
    """A row length of at least n float32 (whole KBs) whose consecutive rows lie 1 KB apart
    modulo 4 KB."""
    return 256 * (4 * (((n + 255) // 256 + 2) // 4) + 1)


@inline
def staggered_rows(rows, n, offset):
    """A C-contiguous [rows, >= n] float32 scratch array whose rows lie 1 KB apart modulo 4 KB,
    row 0 `offset` floats after the start of a page (ACCUMULATORS or INPUTS)."""
    length = kb_staggered(n)
    work = np.empty(1024 + offset + rows * length, dtype=np.float32)
    at = page_start(work) + offset
    return work[at:at + rows * length].reshape(rows, length)
