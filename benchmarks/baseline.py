"""An earlier commit of this repository as a folder, for before/after runs in one benchmark."""
from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def export_commit(ref: str, dest: Path) -> tuple[Path, str]:
    """The files of commit `ref`, extracted into `dest` (git archive), and its short hash."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=REPO, capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    short = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.strip()
    return dest, short
