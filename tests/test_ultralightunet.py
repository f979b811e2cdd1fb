"""UltraLightUNet: the tensor spec, the torch module, the NumPy reference and the Numba plan against
the authors' golden outputs and taps (specs/ULTRALIGHTUNET.md, upstream/ultralightunet/), and plan
vs reference at random sizes with random weights and BatchNorm statistics."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import UPSTREAM
from npseg.models.ultralightunet import VARIANTS, build_plan, expected_tensors, fold, reference_features
from npseg.ops._jit import numba
from trainer.models.ultralightunet import build, structure_loss, ultralightunet_loss

GOLDEN_DIR = UPSTREAM / "ultralightunet"
OUTPUT_TOL, TAP_TOL = 1e-4, 2e-4  # upstream/ultralightunet/README.md: logits; aux heads and taps (values reach 30)
PARAMS = {"t": 27_384, "s": 93_050, "b": 315_566, "m": 1_150_166, "l": 3_758_118}  # the spec's table
TAPS = {"tap_t1_corner": ("t1", np.s_[:, :8, :8]), "tap_t3_corner": ("t3", np.s_[:, :8, :8]),
        "tap_b": ("b", np.s_[:]), "tap_d1_corner": ("d1", np.s_[:, :8, :8]), "tap_d4_corner": ("d4", np.s_[:, :8, :8])}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params="tsb")
def golden(request):
    v = request.param
    if not (GOLDEN_DIR / f"golden_ultralightunet_{v}.npz").is_file():
        pytest.skip(f"UltraLightUNet golden data not found in {GOLDEN_DIR}")
    tensors = load_file(str(GOLDEN_DIR / f"ultralightunet_{v}.safetensors"))
    return v, VARIANTS[f"ultralightunet-{v}"], tensors, dict(np.load(GOLDEN_DIR / f"golden_ultralightunet_{v}.npz"))


def test_tensor_spec_is_the_authors_list(golden):
    v, cfg, tensors, _ = golden
    lines = (GOLDEN_DIR / f"keys_ultralightunet_{v}.txt").read_text().splitlines()
    listed = {name: tuple(int(d) for d in shape.strip("[]").split(", "))
              for name, shape in (ln.split("\t") for ln in lines)}
    assert list(expected_tensors(cfg).items()) == list(listed.items())
    assert {k: v.shape for k, v in tensors.items()} == listed


@pytest.mark.parametrize("variant", sorted(PARAMS))
def test_parameter_count(variant):
    cfg = VARIANTS[f"ultralightunet-{variant}"]
    assert sum(p.numel() for p in build(cfg).parameters()) == PARAMS[variant]
    spec = expected_tensors(cfg)
    assert sum(int(np.prod(s)) for k, s in spec.items() if "running_" not in k) == PARAMS[variant]


def test_torch_module_loads_the_golden_strictly_and_reproduces_it(golden):
    _, cfg, tensors, g = golden
    model = build(cfg).eval()
    model.load_state_dict({k: torch.from_numpy(a) for k, a in tensors.items()}, strict=True)
    taps = {}

    def tap(name):
        def hook(module, inputs, out):  # d_i = the gate's input g plus its gated skip
            taps.setdefault(name, inputs[0] + out)
        return hook

    hooks = [model.AG1.register_forward_hook(tap("d1")), model.AG4.register_forward_hook(tap("d4"))]
    with torch.no_grad():
        logits, aux = model.forward_with_aux(torch.from_numpy(g["input"]))
        rect = model(torch.from_numpy(g["input_rect"]))
    for hook in hooks:
        hook.remove()
    assert np.abs(logits.numpy() - g["output"]).max() <= OUTPUT_TOL
    assert np.abs(rect.numpy() - g["output_rect"]).max() <= OUTPUT_TOL
    for i, a in enumerate(aux):
        assert np.abs(a.numpy() - g[f"aux_out{i + 1}_lowres"]).max() <= TAP_TOL
    for name, tap in (("d1", "tap_d1_corner"), ("d4", "tap_d4_corner")):
        assert np.abs(taps[name][0:1, :, :8, :8].numpy() - g[tap]).max() <= TAP_TOL, tap


def test_reference_reproduces_the_golden_and_its_taps(golden):
    """Sample 0 and the taps (tests/test_registry.py runs every golden pair through both engines)."""
    _, cfg, tensors, g = golden
    p = {k: a.astype(np.float64) for k, a in fold(cfg, tensors).items()}
    f = reference_features(cfg, p, g["input"][0].astype(np.float64))
    assert np.abs(f["logits"] - g["output"][0]).max() <= OUTPUT_TOL
    for tap, (name, corner) in TAPS.items():
        assert np.abs(f[name][corner] - g[tap][0]).max() <= TAP_TOL, tap


@pytest.mark.skipif(numba is None, reason="needs numba")
def test_plan_reproduces_the_golden(golden):
    _, cfg, tensors, g = golden
    for key in ("input", "input_rect"):
        plan = build_plan(cfg, fold(cfg, tensors), *g[key].shape[2:])
        for x, expected in zip(g[key], g[key.replace("input", "output")]):
            plan.input[:] = x
            assert np.abs(plan.run() - expected).max() <= OUTPUT_TOL, key


def random_tensors(cfg, seed: int) -> dict:
    """Conv weights N(0, 1/fan_in) and random BatchNorm statistics and affines (every fold matters;
    the authors' N(0, 0.02^2) init would make the maps nearly flat)."""
    torch.manual_seed(seed)
    model = build(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, (m.weight[0].numel()) ** -0.5)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
    return {k: a.numpy() for k, a in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.skipif(numba is None, reason="needs numba")
@pytest.mark.parametrize("variant, seed, h, w", [("t", 3, 64, 96), ("s", 4, 160, 32)])
def test_plan_matches_reference_at_random_sizes(variant, seed, h, w):
    cfg = VARIANTS[f"ultralightunet-{variant}"]
    tensors = random_tensors(cfg, seed)
    x = np.random.default_rng(seed).standard_normal((3, h, w)).astype(np.float32)
    p64 = {k: a.astype(np.float64) for k, a in fold(cfg, tensors).items()}
    expected = reference_features(cfg, p64, x.astype(np.float64))["logits"]
    plan = build_plan(cfg, fold(cfg, tensors), h, w)
    plan.input[:] = x
    assert np.abs(expected).max() > 1e-2
    assert np.abs(plan.run() - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.skipif(numba is None, reason="needs numba")
def test_every_plan_step_is_a_numba_kernel_or_a_gemm():
    cfg = VARIANTS["ultralightunet-t"]
    plan = build_plan(cfg, fold(cfg, random_tensors(cfg, 0)), 64, 64)
    plan.run()
    for step in plan.steps:
        assert step.func is np.dot or (isinstance(step.func, numba.core.registry.CPUDispatcher)
                                       and step.func.signatures), step


def test_train_mode_returns_the_deep_supervision_outputs_and_the_loss_covers_them():
    model = build(VARIANTS["ultralightunet-t"]).train()
    outputs = model(torch.randn(2, 3, 32, 64))
    assert len(outputs) == 4 and all(o.shape == (2, 1, 32, 64) for o in outputs)
    mask = (torch.rand(2, 1, 32, 64, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    total, parts = ultralightunet_loss(outputs, {"mask": mask})
    assert set(parts) == {"main", "aux1", "aux2", "aux3"}
    assert torch.allclose(total, sum(structure_loss(o, mask) for o in outputs))
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_structure_loss_is_small_for_a_confident_right_answer_and_large_for_a_wrong_one():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    right, wrong = structure_loss(20 * (2 * mask - 1), mask), structure_loss(-20 * (2 * mask - 1), mask)
    assert right < 1e-3 and wrong > 10


def test_output_prior_starts_the_output_layer_neutral_and_changes_nothing_else():
    """recipes/ultralightunet-t.toml: T's four full-resolution channels are ReLU outputs (>= 0), so
    with every out4 weight drawn negative (seed 42) no logit can exceed the bias, and the masks
    stayed empty. output_prior starts every pixel's logit at the prior (weights 0, bias logit(p)):
    the data, not the draw, then sets the weights' signs."""
    import math

    from trainer.models import torch_family
    from trainer.recipe import Recipe, RecipeError, TrainOptions
    from trainer.train import _check_recipe, _model_and_init

    fam, cfg = torch_family("ultralightunet"), VARIANTS["ultralightunet-t"]
    drawn, _ = _model_and_init(TrainOptions(recipe=Recipe(seed=42)), fam, cfg, None, 0)
    neutral, _ = _model_and_init(TrainOptions(recipe=Recipe(seed=42, output_prior=0.125)), fam, cfg, None, 0)
    assert (drawn.out4.weight < 0).all()  # why T needs it at this seed
    assert (neutral.out4.weight == 0).all() and neutral.out4.bias.item() == pytest.approx(math.log(0.125 / 0.875))
    changed = [k for k, v in drawn.state_dict().items() if not torch.equal(v, neutral.state_dict()[k])]
    assert changed == ["out4.weight", "out4.bias"]
    logits = neutral.eval()(torch.randn(1, 3, 32, 32))
    assert torch.allclose(logits, torch.full_like(logits, math.log(0.125 / 0.875)))
    with pytest.raises(RecipeError, match="drop it or 'init'"):
        _check_recipe(Recipe(output_prior=0.1, init="ultralightunet-s"), fam)
    with pytest.raises(RecipeError, match="names no output layer"):
        _check_recipe(Recipe(output_prior=0.1), torch_family("ultraseg"))
