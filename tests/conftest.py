"""Shared fixtures: where the shared data and the upstream checkpoint live."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NPSEG_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
UPSTREAM = SHARED / "upstream"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "kvasir-seg" / "images").is_dir():
        pytest.skip(f"real data not found at {DATA} (set NPSEG_SHARED to the shared folder)")
    return DATA


@pytest.fixture(scope="session")
def upstream_dir() -> Path:
    if not (UPSTREAM / "best-ultraseg-130K.pth").is_file():
        pytest.skip(f"upstream checkpoint not found in {UPSTREAM} (set NPSEG_SHARED to the shared folder)")
    return UPSTREAM


@pytest.fixture(scope="session")
def upstream_weights(upstream_dir, tmp_path_factory) -> Path:
    """The published 130K checkpoint converted to an npseg weights file."""
    from trainer.upstream import convert_upstream

    return convert_upstream(upstream_dir / "best-ultraseg-130K.pth",
                            tmp_path_factory.mktemp("upstream") / "upstream-130k.safetensors")
