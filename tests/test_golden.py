"""Level 3 of parity: the authors' published checkpoint and their golden outputs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import npseg  # noqa: E402

GOLDEN_TOL = 1e-4  # max abs on logits that reach about +-23


@pytest.fixture(scope="module")
def golden(upstream_dir):
    return dict(np.load(upstream_dir / "golden_ultraseg130k.npz"))


@pytest.fixture(scope="module")
def upstream_model(upstream_dir):
    from trainer.models import torch_family

    return torch_family("ultraseg").import_upstream(upstream_dir / "best-ultraseg-130K.pth")


def test_torch_model_reproduces_golden_logits(upstream_model, golden, one_torch_thread):
    with torch.no_grad():
        for key in ("256", "320x384"):
            for x, ref in zip(golden[f"inputs_{key}"], golden[f"logits_{key}"]):
                out = upstream_model(torch.from_numpy(x)[None])[0].numpy()
                assert np.abs(out - ref).max() <= GOLDEN_TOL, key


def test_torch_model_in_float64_reproduces_golden_logits(upstream_model, golden):
    """Rounding-free check: the golden file's own float32 error is about 8e-5."""
    model = upstream_model.double()
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(golden["inputs_256"]).double()).numpy()
    finally:
        upstream_model.float()
    assert np.abs(out - golden["logits_256"]).max() <= GOLDEN_TOL


def test_torch_side_heads_reproduce_golden(upstream_model, golden):
    """Region heads: sigmoid of the upsampled region logits; boundary heads: the
    upsampled boundary probabilities (the upstream model upsamples after its sigmoid)."""
    x = torch.from_numpy(golden["inputs_256"])
    boundary_probs = []
    hooks = [getattr(upstream_model, f"gate{i}").conv1.register_forward_hook(
        lambda _m, _i, out: boundary_probs.append(torch.sigmoid(out))) for i in (1, 2, 3)]
    try:
        with torch.no_grad():
            _, regions, _ = upstream_model(x, side_outputs=True)
    finally:
        for h in hooks:
            h.remove()
    region = torch.sigmoid(torch.stack(regions, 1)).numpy()
    boundary = torch.stack([F.interpolate(b, size=x.shape[2:], mode="bilinear", align_corners=True)
                            for b in boundary_probs], 1).numpy()
    assert region.shape == golden["region_heads_256"].shape
    assert boundary.shape == golden["boundary_heads_256"].shape
    assert np.abs(region - golden["region_heads_256"]).max() <= GOLDEN_TOL
    assert np.abs(boundary - golden["boundary_heads_256"]).max() <= GOLDEN_TOL


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_npseg_reproduces_golden_logits(upstream_weights, golden, backend):
    try:
        seg = npseg.load(upstream_weights, backend=backend)
    except ValueError as e:
        if backend == "numba" and "unknown backend" in str(e):
            pytest.skip("the numba backend is not available in this build")
        raise
    for key in ("256", "320x384"):
        inputs, refs = golden[f"inputs_{key}"], golden[f"logits_{key}"]
        outs = np.stack([seg._engine.forward(x) for x in inputs])
        assert np.abs(outs - refs).max() <= GOLDEN_TOL, key
        agree = ((outs[:, 1] > outs[:, 0]) == (refs[:, 1] > refs[:, 0])).mean()
        assert agree >= 0.9999, key


def test_converted_file_describes_itself(upstream_weights):
    from npseg.weights import load

    w = load(upstream_weights)
    assert w.config.name == "ultraseg-130k" and w.config.out_ch == 2
    assert w.input_size == (256, 256)
    assert w.preprocessing["color_order"] == "RGB"
    assert "best-ultraseg-130K.pth" in w.provenance["file"]
