"""AULUNet: the tensor spec, the torch module, the NumPy reference and the Numba plan against the
authors' golden outputs and taps (specs/AULUNET.md, upstream/aulunet/), and plan vs reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import UPSTREAM
from npseg.models.aulunet import VARIANTS, AULUNetConfig, build_plan, expected_tensors, fold, reference_features
from npseg.ops._jit import numba
from trainer.models.aulunet import AULUNet, aulunet_loss

GOLDEN_DIR = UPSTREAM / "aulunet"
GOLDEN_TOL = 1e-5  # upstream/aulunet/README.md: on the output probability and on every tap
PARAMS = {"aulunet": 28_636}  # the spec's count
CFG = VARIANTS["aulunet"]
TAPS = {"tap_e2_corner": ("e2", np.s_[:, :8, :8]), "tap_b": ("b", np.s_[:]), "tap_d2_corner": ("d2", np.s_[:, :8, :8])}


@pytest.fixture(scope="module")
def golden():
    if not (GOLDEN_DIR / "golden_aulunet.npz").is_file():
        pytest.skip(f"AULUNet golden data not found in {GOLDEN_DIR}")
    return load_file(str(GOLDEN_DIR / "aulunet.safetensors")), dict(np.load(GOLDEN_DIR / "golden_aulunet.npz"))


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def test_tensor_spec_is_the_authors_list(golden):
    lines = (GOLDEN_DIR / "keys_aulunet.txt").read_text().splitlines()
    pairs = (line.split("\t") for line in lines)
    listed = {name: tuple(int(v) for v in shape.strip("[]").split(", ")) for name, shape in pairs}
    assert list(expected_tensors(CFG).items()) == list(listed.items())
    assert {k: v.shape for k, v in golden[0].items()} == listed


@pytest.mark.parametrize("variant", sorted(PARAMS))
def test_parameter_count(variant):
    assert sum(p.numel() for p in AULUNet(VARIANTS[variant]).parameters()) == PARAMS[variant]


def test_torch_module_loads_the_golden_strictly_and_reproduces_it(golden):
    tensors, g = golden
    model = AULUNet(CFG).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    with torch.no_grad():  # sample 0, which the taps are of (test_registry checks both outputs)
        f = model.features(torch.from_numpy(g["input"][:1]))
    assert np.abs(_sigmoid(f["logits"].numpy()) - g["output"][:1]).max() <= GOLDEN_TOL
    for tap, (name, corner) in TAPS.items():
        assert np.abs(f[name][0].numpy()[corner] - g[tap][0]).max() <= GOLDEN_TOL, tap


def test_reference_reproduces_the_golden(golden):
    tensors, g = golden
    p = {k: v.astype(np.float64) for k, v in fold(CFG, tensors).items()}
    f = reference_features(CFG, p, g["input"][0].astype(np.float64))
    assert np.abs(_sigmoid(f["logits"]) - g["output"][0]).max() <= GOLDEN_TOL
    for tap, (name, corner) in TAPS.items():
        assert np.abs(f[name][corner] - g[tap][0]).max() <= GOLDEN_TOL, tap


@pytest.mark.skipif(numba is None, reason="needs numba")
def test_plan_reproduces_the_golden(golden):
    tensors, g = golden
    plan = build_plan(CFG, fold(CFG, tensors), 256, 256)
    for i, x in enumerate(g["input"]):
        plan.input[:] = x
        assert np.abs(_sigmoid(plan.run()) - g["output"][i]).max() <= GOLDEN_TOL
        if i == 0:  # the taps the plan stores (d2 is fused into the next projection)
            assert np.abs(plan.features["e2"][:, :8, :8] - g["tap_e2_corner"][0]).max() <= GOLDEN_TOL
            assert np.abs(plan.features["b"] - g["tap_b"][0]).max() <= GOLDEN_TOL


def random_tensors(seed: int, cfg=CFG) -> dict:
    """The torch init plus random BatchNorm statistics and affines (so every fold matters)."""
    torch.manual_seed(seed)
    model = AULUNet(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
    return {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


ODD = AULUNetConfig(name="aulunet-odd-widths", channels=(3, 7, 9, 11, 13, 17))  # no width a multiple of 2 or 4


@pytest.mark.skipif(numba is None, reason="needs numba")
@pytest.mark.parametrize("seed, h, w, cfg", [(3, 64, 96, CFG), (4, 160, 32, CFG), (5, 32, 64, ODD)])
def test_plan_matches_reference_at_random_sizes(seed, h, w, cfg):
    tensors = random_tensors(seed, cfg)
    x = np.random.default_rng(seed).uniform(0.0, 255.0, (3, h, w))
    expected = reference_features(cfg, {k: v.astype(np.float64) for k, v in fold(cfg, tensors).items()}, x)["logits"]
    plan = build_plan(cfg, fold(cfg, tensors), h, w)
    plan.input[:] = x
    assert np.abs(plan.run() - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


@pytest.mark.skipif(numba is None, reason="needs numba")
def test_every_plan_step_is_a_numba_kernel_or_a_gemm():
    plan = build_plan(CFG, fold(CFG, random_tensors(0)), 64, 64)
    for step in plan.steps:
        assert isinstance(step.func, numba.core.registry.CPUDispatcher) or step.func is np.dot, step


def test_loss_is_bce_plus_soft_dice_on_the_probability():
    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    p = torch.sigmoid(logits)
    dice = (2 * (p * mask).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + mask.sum((1, 2, 3)) + 1)
    expected = torch.nn.functional.binary_cross_entropy(p, mask) + 1 - dice.mean()
    total, parts = aulunet_loss(logits, {"mask": mask})
    assert torch.allclose(total, expected, atol=1e-6) and set(parts) == {"bce", "dice"}
