"""What a start of the `npseg` command skips: families it does not load, Numba's SciPy and cffi
parts, the garbage collector during start-up, the interpreter's teardown; and what it keeps."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _python(script: str, env: dict = ENV) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_npseg_loads_nothing_heavy_and_a_file_loads_only_its_family():
    out = _python("""
        import sys
        import npseg
        assert not {"numpy", "numba", "cv2"} & set(sys.modules), "npseg's import is not lazy"
        seg = npseg.load("ultraseg-130k")
        families = sorted(m.rsplit(".", 1)[1] for m in sys.modules
                          if m.startswith("npseg.models.") and m != "npseg.models.config")
        print(type(seg).__name__, npseg.WeightsError.__name__, families)
    """)
    assert out == "Segmenter WeightsError ['ultraseg']"


def test_registry_imports_a_family_on_first_use():
    out = _python("""
        import sys
        from npseg.models import FAMILIES, family
        assert "malunet" in FAMILIES and "npseg.models.malunet" not in sys.modules
        print(family("malunet").name, "npseg.models.malunet" in sys.modules, len(FAMILIES), sorted(FAMILIES)[0])
    """)
    assert out == "malunet True 5 aulunet"


def test_numba_target_loads_without_scipy_linalg_and_cffi_which_stay_importable():
    pytest.importorskip("scipy")
    out = _python("""
        import sys
        import numba
        import numpy as np
        from npseg.ops._jit import load_target_for_kernels
        load_target_for_kernels()
        print("scipy.linalg" in sys.modules, "cffi" in sys.modules)

        @numba.njit
        def dot(a, b):
            return np.dot(a, b)

        print(dot(np.ones(3), np.ones(3)))  # imports SciPy's BLAS bindings on use
        import scipy.linalg
        print(scipy.linalg.norm(np.ones(4)))
    """)
    assert out.split("\n") == ["False False", "3.0", "2.0"]


def test_kernels_get_wide_vectors_on_avx512_unless_the_user_chose_a_target():
    script = """
        import llvmlite.binding as llvm
        from npseg.ops._jit import WIDE_VECTORS, numba
        from numba.core.registry import cpu_target
        features = cpu_target.target_context.codegen().magic_tuple()[2]  # what the kernels and the cache use
        print("+avx512f" in llvm.get_host_cpu_features().flatten().split(","), features.endswith(WIDE_VECTORS))
    """
    clean = {k: v for k, v in ENV.items() if k not in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
    has_avx512, wide = _python(script, clean).split()
    assert wide == has_avx512
    chosen = {**clean, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}
    assert _python(script, chosen).split()[1] == "False"


def test_end_of_start_up_turns_the_collector_on_with_the_start_up_frozen():
    out = _python("""
        import gc
        gc.disable()
        from npseg.cli import end_of_start_up
        end_of_start_up()
        print(gc.isenabled(), gc.get_freeze_count() > 0)
    """)
    assert out == "True True"


def test_the_command_exits_with_its_code_and_flushed_output(tmp_path):
    done = subprocess.run([sys.executable, "-m", "npseg", "info", "ultraseg-130k", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("}"), done.stderr
    missing = subprocess.run([sys.executable, "-m", "npseg", "info", str(tmp_path / "none.safetensors")], cwd=REPO,
                             capture_output=True, text=True, timeout=300, env=ENV)
    assert missing.returncode == 2 and missing.stderr.startswith("npseg: error:")
