"""The dense sigmoid skip gate (AULUNet's LSG): y = d + sigmoid(W @ [d; e] + b) * e, per pixel and
channel, d the decoder feature, e the encoder skip. NumPy reference, Numba kernel, validated step.

The concatenation is never built: W splits into its decoder columns W_d and encoder
columns W_e, and the kernel sums both per row into one row of scratch.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from .activation import sigmoid_ref


def skip_gate_ref(d, e, w, b):
    """d, e [C, H, W]; w [C, 2C] or [C, 2C, 1, 1] (columns: decoder first), b [C] -> [C, H, W]."""
    c = d.shape[0]
    z = w.reshape(c, 2 * c) @ np.concatenate([d, e]).reshape(2 * c, -1) + b[:, None]  # [C, H*W]
    return d + sigmoid_ref(z).reshape(d.shape) * e


# ---- Numba kernels -------------------------------------------------------------------------
from ._jit import kernel  # noqa: E402
from .activation import sigmoid_fast  # noqa: E402
from .pool import padded_size  # noqa: E402
from .steps import _arrays, _need  # noqa: E402


@kernel
def skip_gate_nb(d, e, w_d, w_e, b, out, pad):
    """Interior of `out` (flat, border `pad`, untouched) = d + sigmoid(w_d @ d + w_e @ e + b) * e."""
    c_n, h, width = d.shape
    wp = width + 2 * pad
    z = np.empty(width, dtype=np.float32)
    for y in range(h):
        start = (y + pad) * wp + pad
        for o in range(c_n):
            bias = b[o]
            for x in range(width):
                z[x] = bias
            for c in range(c_n):
                wd, we, dr, er = w_d[o, c], w_e[o, c], d[c, y], e[c, y]
                for x in range(width):
                    z[x] += wd * dr[x] + we * er[x]
            dst, dr, er = out[o, start:start + width], d[o, y], e[o, y]
            for x in range(width):
                dst[x] = dr[x] + sigmoid_fast(z[x]) * er[x]


def skip_gate(d, e, w, b, out, pad=0):
    """The skip gate of d and e [C, H, W] into the interior of `out`, a flat buffer with border `pad`."""
    _arrays(d, e, out)
    _need(d.ndim == 3 and d.shape == e.shape, f"skip_gate: d {d.shape}, e {e.shape}")
    c, h, width = d.shape
    w2 = np.asarray(w, np.float32).reshape(w.shape[0], -1)
    _need(w2.shape == (c, 2 * c) and np.shape(b) == (c,), f"skip_gate: weight {w.shape}, bias {np.shape(b)}")
    _need(isinstance(pad, int) and pad >= 0 and out.shape == (c, padded_size(h, width, pad)),
          f"skip_gate: out {out.shape} does not fit {d.shape} with border {pad}")
    _need(not (np.shares_memory(out, d) or np.shares_memory(out, e)), "skip_gate: operands overlap")
    w_d, w_e = np.ascontiguousarray(w2[:, :c]), np.ascontiguousarray(w2[:, c:])
    return [partial(skip_gate_nb, d, e, w_d, w_e, np.ascontiguousarray(b, np.float32), out, int(pad))]
