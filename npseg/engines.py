"""The two engines every family runs on: the NumPy reference and the Numba plan.

Both take a family (npseg.models.Family), its config and its folded parameters,
and map a normalised input [3, H, W] to logits [K, H, W]. Neither knows a family.
"""
from __future__ import annotations

import numpy as np

from .background_compile import BackgroundCompile
from .ops._jit import numba

F32 = np.float32
MAX_INPUT_SIDE = 2048  # a network input side; frames of any size are resized to the input


def check_input_size(family, h: int, w: int) -> None:
    """ValueError unless an h x w input fits the family's graph."""
    m, low = family.input_multiple, max(family.input_multiple, family.min_input)
    if not all(isinstance(v, int) and low <= v <= MAX_INPUT_SIDE and v % m == 0 for v in (h, w)):
        raise ValueError(f"input size {h}x{w} does not fit {family.name}: both sides must be multiples of {m} "
                         f"from {low} to {MAX_INPUT_SIDE}")


class NumpyEngine:
    """The family's readable reference forward, in float64 for a precise ground truth."""

    name = "numpy"
    warming_up = False  # see NumbaEngine

    def __init__(self, family, cfg, params):
        self.family, self.cfg = family, cfg
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        self._inputs: dict[tuple[int, int], np.ndarray] = {}

    def input_buffer(self, h: int, w: int) -> np.ndarray:
        """Where the caller may write the next input of this size (then call run_input)."""
        return self._inputs.setdefault((h, w), np.zeros((3, h, w), F32))

    def run_input(self, h: int, w: int) -> np.ndarray:
        return self.forward(self._inputs[(h, w)])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x [3, H, W] normalised -> logits [K, H, W] float32 (a new array)."""
        check_input_size(self.family, x.shape[1], x.shape[2])
        return self.family.reference_forward(self.cfg, self.params, x.astype(np.float64)).astype(F32)


class NumbaEngine:
    """The family's plan of Numba kernels and single-thread GEMMs in float32, one plan per input size.

    With compile_in_background, the first frame starts compiling the plan's kernels in a thread
    (npseg.background_compile) that runs the plan once, then the caller's `compile_also` calls; until
    it is done, frames run on the float64 reference with the reference's own buffers (the thread's
    run of the plan writes the plan's) and `warming_up` is True."""

    name = "numba"

    def __init__(self, family, cfg, params, compile_in_background: bool = False, compile_also=(),
                 finish_elsewhere: list[str] | None = None):
        self.family, self.cfg = family, cfg
        # writable contiguous float32 copies: read-only arrays would compile separate kernel variants
        self.params = {k: np.array(v, dtype=F32, order="C") for k, v in params.items()}
        self._plans: dict = {}
        self._compiling = compile_in_background
        self._compile_also = tuple(compile_also)
        self._finish_elsewhere = finish_elsewhere  # see npseg.background_compile.hand_over_unfinished
        self._compiler: BackgroundCompile | None = None
        self._reference: NumpyEngine | None = None
        self._on_reference = False  # the input handed out last is the reference's

    @property
    def warming_up(self) -> bool:
        """True while the input handed out last is the reference's: the kernels are compiling, so a
        caller's own kernels (which would wait for Numba's compiler lock) had better not run yet."""
        return self._on_reference

    def plan(self, h: int, w: int):
        if (h, w) not in self._plans:
            check_input_size(self.family, h, w)
            self._plans[(h, w)] = self.family.build_plan(self.cfg, self.params, h, w)
        return self._plans[(h, w)]

    def input_buffer(self, h: int, w: int) -> np.ndarray:
        """Where the caller writes the next input of this size; run_input runs the engine that owns it."""
        self._on_reference = self._compiling and not self._kernels_ready(h, w)
        return self._reference.input_buffer(h, w) if self._on_reference else self.plan(h, w).input

    def run_input(self, h: int, w: int) -> np.ndarray:
        """Runs the plan (or while it compiles the reference) on the buffer input_buffer handed out;
        returns the logits buffer (overwritten by the next run)."""
        if self._on_reference:
            return self._reference.run_input(h, w)
        return self.plan(h, w).run()

    def _kernels_ready(self, h: int, w: int) -> bool:
        """Starts the background compile on the plan; the first frame waits while the kernels load
        from Numba's cache (a warm start stays on the compiled plan), not while they compile.
        Once it is finished every later frame runs the compiled plan."""
        if self._compiler is None:
            self._compiler = BackgroundCompile(self.plan(h, w), also=self._compile_also,
                                               finish_elsewhere=self._finish_elsewhere)
            self._reference = NumpyEngine(self.family, self.cfg, self.params)
            self._compiler.wait_while_loading()
        if not self._compiler.finished.is_set():
            return False
        self._compiling, self._compiler, self._reference = False, None, None
        return True

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x [3, H, W] normalised -> logits [K, H, W] float32 (a new array)."""
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"input must be [3, H, W], got {x.shape}")
        np.copyto(self.input_buffer(x.shape[1], x.shape[2]), x)
        return self.run_input(x.shape[1], x.shape[2]).copy()


def available() -> dict[str, type]:
    """Backend name -> engine class; the Numba engine only where Numba imports."""
    engines = {"numpy": NumpyEngine}
    if numba is not None:
        engines["numba"] = NumbaEngine
    return engines


def default_backend() -> str:
    return "numba" if numba is not None else "numpy"
