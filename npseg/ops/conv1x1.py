"""Pointwise (1x1) convolution: NumPy reference and the Numba kernel for narrow inputs
(wide ones run as np.dot, see npseg.ops.steps.conv1x1)."""
from __future__ import annotations

def conv1x1_ref(x, w, b):
    """Pointwise conv as one matrix product: [Cin,H,W] -> [Cout,H,W]."""
    cin, h, wd = x.shape
    return (w.reshape(w.shape[0], cin) @ x.reshape(cin, h * wd)).reshape(-1, h, wd) + b[:, None, None]


# ---- Numba kernel --------------------------------------------------------------------------
from ._jit import kernel  # noqa: E402
from .activation import activate  # noqa: E402


@kernel
def conv1x1_nb(src, w, b, act, out):
    """Pointwise conv for narrow inputs (np.dot wins from ~48 input channels): w [Cout, Cin]."""
    cin = src.shape[0]
    cout = w.shape[0]
    n = src.size // cin
    s2, o2 = src.reshape(cin, n), out.reshape(cout, n)
    for co in range(cout):
        o = o2[co]
        for i in range(n):
            o[i] = b[co]
        for ci in range(cin):
            wv = w[co, ci]
            s = s2[ci]
            for i in range(n):
                o[i] += wv * s[i]
        if act != 0:
            for i in range(n):
                o[i] = activate(o[i], act)
