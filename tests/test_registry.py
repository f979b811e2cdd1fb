"""Parity on three levels for every registered family and variant, written once.

For each family of npseg.models.FAMILIES (and its trainer side in trainer.models):
the tensor spec equals the torch module's state_dict; the NumPy reference equals
torch, and the Numba plan equals the reference, at random sizes with random
weights and BatchNorm statistics (and every plan step is compiled code); the
golden outputs of the authors' code are reproduced by torch and both engines.
A family registered without its trainer side or its golden data fails here.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from conftest import UPSTREAM  # noqa: E402
from npseg.engines import NumbaEngine, NumpyEngine, available  # noqa: E402
from npseg.models import FAMILIES  # noqa: E402
from npseg.preprocessing import polyp_probability  # noqa: E402
from trainer.models import TORCH_FAMILIES  # noqa: E402

VARIANTS = [(fam, name) for fam in FAMILIES for name in FAMILIES[fam].variants]
# the parity runs take the two smallest variants of each family (the widest only change widths)
PARITY = [(fam, name) for fam in FAMILIES for name in list(FAMILIES[fam].variants)[:2]]
GOLDEN = [(fam, case) for fam in TORCH_FAMILIES for case in TORCH_FAMILIES[fam].golden]
TOL = 1e-4  # relative to the reference's largest logit


def random_module(family: str, variant: str, seed: int):
    """The torch module in eval mode with every tensor random: weights N(0, 1/fan_in), BN statistics
    and affines away from their neutral values, scalars perturbed."""
    fam = FAMILIES[family]
    torch.manual_seed(seed)
    model = TORCH_FAMILIES[family].build(fam.variants[variant])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=gen)
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("running_mean") or (t.dim() == 1 and name.endswith("bias")):
                t.copy_(0.1 * noise)
            elif t.dim() == 1:
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.dim() == 0:
                t.copy_(t + 0.2 * noise)
            else:
                t.copy_(noise / np.sqrt(t[0].numel()))
    return model.eval()


def numpy_tensors(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def input_sizes(family: str):
    fam = FAMILIES[family]
    m = fam.input_multiple
    low = max(1, -(-max(fam.min_input, m) // m))
    return st.integers(low, max(low, 160 // m)).map(lambda k: k * m)


def relative_error(ours, ref) -> float:
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def test_every_family_has_its_trainer_side_and_golden_data():
    assert set(TORCH_FAMILIES) == set(FAMILIES), "each npseg family needs a trainer family and vice versa"
    for name in FAMILIES:
        if (UPSTREAM / name).is_dir():
            assert TORCH_FAMILIES[name].golden, f"{name}: shared/upstream/{name}/ exists but no golden case uses it"


@pytest.mark.parametrize("family,variant", VARIANTS)
def test_tensor_spec_is_the_torch_state_dict(family, variant):
    cfg = FAMILIES[family].variants[variant]
    model = TORCH_FAMILIES[family].build(cfg)
    found = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert found == FAMILIES[family].expected_tensors(cfg)
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


@pytest.fixture(scope="module", params=PARITY, ids=[v for _, v in PARITY])
def engines(request):
    """(family, torch module, NumPy engine, Numba engine) on the same random weights."""
    family, variant = request.param
    fam = FAMILIES[family]
    model = random_module(family, variant, seed=11)
    cfg = fam.variants[variant]
    params = fam.fold(cfg, numpy_tensors(model))
    fast = NumbaEngine(fam, cfg, params) if "numba" in available() else None
    return family, model, NumpyEngine(fam, cfg, params), fast


@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_engines_match_torch_at_random_sizes(engines, data):
    family, model, reference, fast = engines
    h, w = data.draw(input_sizes(family)), data.draw(input_sizes(family))
    x = np.random.default_rng(data.draw(st.integers(0, 2**31))).standard_normal((3, h, w)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)[None])[0].numpy()
    ours = reference.forward(x)
    assert ours.shape == expected.shape == (FAMILIES[family].out_channels(reference.cfg), h, w)
    assert np.abs(expected).max() > 1e-3 and expected.std() > 1e-4, "flat logits would make this vacuous"
    assert relative_error(ours, expected) <= TOL
    if fast is not None:
        assert relative_error(fast.forward(x), ours) <= TOL


def test_the_fast_path_is_compiled_code(engines):
    """Every step of a plan calls a Numba kernel (compiled by now) or OpenBLAS through np.dot."""
    import numba

    family, _, _, fast = engines
    if fast is None:
        pytest.skip("Numba is not installed")
    m = FAMILIES[family].input_multiple
    side = max(m, FAMILIES[family].min_input, 64)
    plan = fast.plan(side, side)
    plan.run()
    for step in plan.steps:
        fn = getattr(step, "func", step)
        assert fn is np.dot or (isinstance(fn, numba.core.registry.CPUDispatcher) and fn.signatures), step


def golden_tensors(family: str, case) -> dict:
    path = UPSTREAM / case.weights
    if path.suffix == ".pth":
        return numpy_tensors(TORCH_FAMILIES[family].import_upstream(path))
    from safetensors.numpy import load_file

    return {k: v for k, v in load_file(str(path)).items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("family,case", GOLDEN, ids=[f"{f}-{c.variant}" for f, c in GOLDEN])
def test_golden_outputs_of_the_authors_code(family, case, upstream_dir):
    fam = FAMILIES[family]
    cfg = fam.variants[case.variant]
    tensors = golden_tensors(family, case)
    model = TORCH_FAMILIES[family].build(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
    model.eval()
    params = fam.fold(cfg, tensors)
    golden = np.load(upstream_dir / case.npz)
    engines = [NumpyEngine(fam, cfg, params)] + [NumbaEngine(fam, cfg, params)] * ("numba" in available())
    for input_key, output_key in case.pairs:
        x, expected = golden[input_key][:2], golden[output_key][:2]  # two images keep the float64 runs short
        with torch.no_grad():
            outputs = [model(torch.from_numpy(x)).numpy()]
        outputs += [np.stack([e.forward(image) for image in x]) for e in engines]
        for logits in outputs:
            got = np.stack([polyp_probability(lo, fam.output)[None] for lo in logits]) if case.probability else logits
            assert np.abs(got - expected).max() <= case.tolerance, (input_key, output_key)
