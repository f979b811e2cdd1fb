"""`npseg segment --jobs N` gives what --jobs 1 gives (outputs, warnings, exit code), and
`npseg warmup` compiles a model's kernels; run as a user runs them (a subprocess)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO
from npseg.engines import available

pytestmark = pytest.mark.skipif("numba" not in available(), reason="the Numba backend is not importable")


def _npseg(*argv, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "npseg", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Four images of different sizes in a nested folder, and one file that is not an image."""
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(5)
    for i, (h, w) in enumerate(((120, 160), (97, 203), (300, 240), (64, 64))):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        frame = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
        cv2.imwrite(str(sub / f"f{i}.png"), frame)
    (root / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


def _outputs(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_jobs_gives_what_one_process_gives(folder, tmp_path):
    one = _npseg("segment", str(folder), "--out", "one", "--jobs", "1", "--size", "64", cwd=tmp_path)
    two = _npseg("segment", str(folder), "--out", "two", "--jobs", "2", "--size", "64", cwd=tmp_path)
    assert one.returncode == two.returncode == 1, (one.stderr, two.stderr)  # the broken file: skipped
    assert one.stderr == two.stderr and "broken.jpg: cannot read or decode this image" in two.stderr
    assert "in 2 processes" in two.stdout and "segmented 4 image(s)" in two.stdout
    outputs = _outputs(tmp_path / "one")
    assert len(outputs) == 8 and outputs == _outputs(tmp_path / "two")


_POOL_AFTER_OPENCV = ("import cv2, numpy as np\n"
                      "from npseg.jobs import worker_pool\n"
                      "cv2.resize(np.zeros((1024, 1280, 3), np.uint8), (320, 320))  # starts OpenCV's pool\n"
                      "with worker_pool(2, int) as pool:\n"
                      "    print(list(pool.map(abs, [-1, -2])))\n")


def test_workers_fork_after_the_parents_opencv_pool_started():
    """The parent's warm-up frame starts OpenCV's thread pool before the workers fork; its threads
    do not exist in a forked worker, which must not wait for them (it hung in cv2.setNumThreads)."""
    proc = subprocess.run([sys.executable, "-c", _POOL_AFTER_OPENCV], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and proc.stdout.strip() == "[1, 2]", proc.stderr


def test_warmup_compiles_the_named_model(tmp_path):
    result = _npseg("warmup", "ultraseg-108k", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ultraseg-108k (ultraseg-108k): kernels ready in ")
