"""Dependencies point one way: npseg runs where torch cannot even be imported."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import sys
    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, BlockTorch())
    import numpy as np
    import npseg
    seg = npseg.load("ultraseg-130k")
    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    mask = seg.predict(frame)
    assert mask.shape == (120, 160) and mask.dtype == np.uint8, (mask.shape, mask.dtype)
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
    print("OK", seg.backend)
""")


def test_npseg_works_with_torch_blocked():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK")


def test_npseg_source_never_imports_torch():
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "npseg").rglob("*.py")
                 if any(line.strip().startswith(("import torch", "from torch")) for line in p.read_text().splitlines())]
    assert offenders == []
