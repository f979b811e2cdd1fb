"""Level 2 of parity: the whole engine against the torch model.

Random weights and random BN statistics (conftest.random_torch_model), random
input sizes (multiples of 16 from 32 to 384), both the 108K and 130K graphs.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import npseg  # noqa: E402
from conftest import random_torch_model, write_weights  # noqa: E402

SIZES = st.integers(2, 24).map(lambda k: 16 * k)


@pytest.fixture(scope="module", params=["ultraseg-108k", "ultraseg-130k"])
def variant_pair(request, tmp_path_factory):
    model = random_torch_model(request.param, seed=7)
    path = write_weights(model, tmp_path_factory.mktemp("w") / f"{request.param}.safetensors")
    return model, npseg.load(path, backend="numpy")


def relative_error(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@settings(max_examples=6, deadline=None)
@given(h=SIZES, w=SIZES, seed=st.integers(0, 2**31))
def test_numpy_engine_matches_torch(variant_pair, h, w, seed):
    model, seg = variant_pair
    x = np.random.default_rng(seed).random((3, h, w), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    ours = seg._engine.forward(x)
    assert ours.shape == ref.shape == (2, h, w)
    assert np.abs(ref).max() > 1e-3, "degenerate logits would make the comparison vacuous"
    assert relative_error(ours, ref) <= 1e-4


def test_random_weights_are_not_neutral(variant_pair):
    """Guard against a vacuous parity test: BN statistics and scalars really are random."""
    model, _ = variant_pair
    sd = model.state_dict()
    assert not torch.allclose(sd["Down1.bn.running_var"], torch.ones_like(sd["Down1.bn.running_var"]))
    assert not torch.allclose(sd["ebn1.weight"], torch.ones_like(sd["ebn1.weight"]))
    assert not torch.allclose(sd["merge1.region_weight"], torch.tensor(0.3))
