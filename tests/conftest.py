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


@pytest.fixture
def one_torch_thread():
    """torch on one thread: its kernels' summation order is fixed, and on a busy machine threads only contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def upstream_dir() -> Path:
    if not (UPSTREAM / "best-ultraseg-130K.pth").is_file():
        pytest.skip(f"upstream checkpoint not found in {UPSTREAM} (set NPSEG_SHARED to the shared folder)")
    return UPSTREAM


@pytest.fixture(scope="session")
def upstream_weights(upstream_dir, tmp_path_factory) -> Path:
    """The published 130K checkpoint converted to an npseg weights file."""
    from trainer.export import convert_upstream
    from trainer.models import torch_family

    return convert_upstream(upstream_dir / "best-ultraseg-130K.pth",
                            tmp_path_factory.mktemp("upstream") / "upstream-130k.safetensors", torch_family("ultraseg"))


def random_torch_model(variant: str, seed: int):
    """A torch UltraSeg in eval mode whose every tensor is random: conv weights by the
    init, and norms' affines, BN running statistics, learned scalars and GSA
    share_space tensors perturbed away from their neutral initial values."""
    import torch

    from npseg.models import variant as find_variant
    from trainer.models import torch_family

    torch.manual_seed(seed)
    family, cfg = find_variant(variant)
    model = torch_family(family.name).build(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 2 + 0.2)
            elif name.endswith("running_mean") or ".bias" in name:
                tensor.copy_(0.1 * noise)
            elif tensor.dim() <= 1 or "share_space" in name:  # affines, scalars, gate seeds
                tensor.copy_(tensor + 0.2 * noise)
    return model.eval()


def write_weights(model, path) -> Path:
    """Export a torch model to an npseg weights file."""
    from trainer.export import export_weights

    return export_weights(model, path, provenance={"source": "tests: random weights"})
