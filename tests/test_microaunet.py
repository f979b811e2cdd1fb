"""MicroAUNet and its MALUNet teacher: the authors' golden outputs (torch module, NumPy reference,
Numba plan, golden taps), parameter counts, and the Numba plan against the reference with random
weights. Tolerances: shared/upstream/microaunet/README.md (1e-4 on probabilities, 1e-4 * max(1,
max|ref|) on features and taps)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from npseg.models import malunet as npseg_malunet
from npseg.models.microaunet import FAMILY, VARIANTS, build_plan, expected_tensors, fold, reference_forward

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from trainer.models import malunet, microaunet  # noqa: E402

from conftest import UPSTREAM  # noqa: E402

GOLDEN = UPSTREAM / "microaunet"
CFG = VARIANTS["microaunet"]
TEACHER = npseg_malunet.VARIANTS["malunet"]
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _golden(name):
    if not (GOLDEN / f"golden_{name}.npz").is_file():
        pytest.skip(f"golden data not found in {GOLDEN}")
    return dict(np.load(GOLDEN / f"golden_{name}.npz"))


def _key_file(name):
    rows = [line.split("\t") for line in (GOLDEN / f"keys_{name}.txt").read_text().splitlines()]
    return {k: tuple(int(v) for v in shape.strip("[]").split(",") if v) for k, shape in rows}


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _close(ours, ref, scale=True):
    ref = np.asarray(ref, np.float64)
    err = float(np.abs(np.asarray(ours, np.float64) - ref).max())
    assert err <= TOL * (max(1.0, float(np.abs(ref).max())) if scale else 1.0), err
    return err


def _params(name):
    return int(sum(np.prod(s) for k, s in expected_tensors(name).items() if "running_" not in k))


def test_tensor_spec_is_the_authors_and_counts_match_the_spec():
    _golden("microaunet")
    assert list(expected_tensors(CFG).items()) == list(_key_file("microaunet").items())
    assert _params(CFG) == 84_281  # as released
    assert _params(dataclasses.replace(CFG, widths=(4, 8, 12, 16, 24, 32))) == 24_881  # the paper's 0.0249 M
    assert list(npseg_malunet.expected_tensors(TEACHER).items()) == list(_key_file("malunet_teacher").items())
    for model, count in ((microaunet.build(CFG), 84_281), (malunet.build(TEACHER), 177_943)):
        assert sum(p.numel() for p in model.parameters()) == count
    assert FAMILY.config_type.from_dict(CFG.to_dict()) == CFG


def _hooked_torch(model, bridge):
    taps = {}
    for name, module in (("enc6", model.encoder6), ("dec4", model.decoder4), ("final", model.final),
                         ("catt", bridge.catt), ("bridged", bridge)):
        module.register_forward_hook(lambda m, i, o, name=name: taps.__setitem__(name, o))
    return taps


@pytest.mark.parametrize("name, module", [("microaunet", microaunet), ("malunet_teacher", malunet)])
def test_torch_modules_load_the_golden_weights_strictly_and_reproduce_them(name, module):
    g = _golden(name)
    model = module.build(CFG if name == "microaunet" else TEACHER).eval()
    model.load_state_dict(load_file(GOLDEN / f"{name}.safetensors"), strict=True)
    taps = _hooked_torch(model, model.lscab if name == "microaunet" else model.scab)
    with torch.no_grad():
        logits, skips, _ = model.features(torch.from_numpy(g["input"]))
        _close(torch.sigmoid(logits).numpy(), g["output"], scale=False)
        for k, t in enumerate(skips, 1):
            _close(t[:1].numpy(), g[f"feature_t{k}"])
        _close(taps["catt"][:1].numpy(), g["tap_catt"])
        _close(taps["bridged"][1][:1, :, :8, :8].numpy(), g["tap_bridge_t2_corner"])
        _close(taps["enc6"][:1].numpy(), g["tap_enc6"])
        _close(taps["dec4"][:1, :, :8, :8].numpy(), g["tap_dec4_corner"])
        _close(taps["final"][:1, :, :16, :16].numpy(), g["tap_final_corner"])
        _close(torch.sigmoid(model(torch.from_numpy(g["input_nonsquare"]))).numpy(), g["output_nonsquare"], scale=False)


def _golden_params():
    tensors = {k: v.numpy() for k, v in load_file(GOLDEN / "microaunet.safetensors").items()}
    return fold(CFG, tensors)


def _check_taps(taps, g):
    for k in range(1, 6):
        if f"t{k}" in taps:
            _close(taps[f"t{k}"], g[f"feature_t{k}"][0])
    _close(taps["catt"], g["tap_catt"][0])
    _close(taps["dec4"][:, :8, :8], g["tap_dec4_corner"][0])
    _close(taps["final"][:, :16, :16], g["tap_final_corner"][0])


def test_reference_reproduces_the_golden_outputs_and_taps():
    g = _golden("microaunet")
    p = {k: v.astype(np.float64) for k, v in _golden_params().items()}
    taps = {}
    _close(_sigmoid(reference_forward(CFG, p, g["input"][0].astype(np.float64), taps)), g["output"][0], scale=False)
    _check_taps(taps, g)
    _close(taps["bridged_t2"][:, :8, :8], g["tap_bridge_t2_corner"][0])
    _close(taps["enc6"], g["tap_enc6"][0])
    _close(_sigmoid(reference_forward(CFG, p, g["input_nonsquare"][0].astype(np.float64))), g["output_nonsquare"][0],
           scale=False)


def test_numba_plan_reproduces_the_golden_outputs_and_taps():
    pytest.importorskip("numba")
    g = _golden("microaunet")
    p = _golden_params()
    plan = build_plan(CFG, p, 256, 256)
    for i in (1, 0):  # sample 0 last: the taps are of sample 0
        plan.input[:] = g["input"][i]
        _close(_sigmoid(plan.run()), g["output"][i], scale=False)
    _check_taps(plan.taps, g)
    plan = build_plan(CFG, p, 160, 224)
    plan.input[:] = g["input_nonsquare"][0]
    _close(_sigmoid(plan.run()), g["output_nonsquare"][0], scale=False)


def test_teacher_reference_and_numba_plan_reproduce_the_golden_outputs():
    pytest.importorskip("numba")
    g = _golden("malunet_teacher")
    tensors = {k: v.numpy() for k, v in load_file(GOLDEN / "malunet_teacher.safetensors").items()}
    p = npseg_malunet.fold(TEACHER, tensors)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    _close(_sigmoid(npseg_malunet.reference_forward(TEACHER, p64, g["input"][0].astype(np.float64))), g["output"][0],
           scale=False)
    for size, x, expected in (((256, 256), g["input"][1], g["output"][1]),
                              ((160, 224), g["input_nonsquare"][0], g["output_nonsquare"][0])):
        plan = npseg_malunet.build_plan(TEACHER, p, *size)
        plan.input[:] = x
        _close(_sigmoid(plan.run()), expected, scale=False)


def random_model(seed):
    """A torch MicroAUNet whose every tensor is random, as the golden generator draws them: BN
    statistics and affines, GN affines, conv/linear biases, alpha and beta."""
    torch.manual_seed(seed)
    model = microaunet.build(CFG)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            uniform = torch.rand(t.shape, generator=gen)
            normal = torch.randn(t.shape, generator=gen)
            if name.endswith("running_var") or (t.dim() == 1 and name.endswith(".weight")):
                t.copy_(0.5 + uniform)
            elif name.endswith(("running_mean", ".bias")):
                t.copy_(0.1 * normal)
            elif name in ("lscab.alpha", "lscab.beta"):
                t.copy_(0.25 + 0.5 * uniform)
    return model.eval()


@pytest.mark.parametrize("seed, h, w", [(3, 128, 192), (4, 160, 128)])
def test_numba_plan_and_torch_match_the_reference_with_random_weights(seed, h, w):
    pytest.importorskip("numba")
    model = random_model(seed)
    tensors = {k: v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    p = fold(CFG, tensors)
    x = np.random.default_rng(seed).integers(0, 256, (3, h, w)).astype(np.float32)
    ref = reference_forward(CFG, {k: v.astype(np.float64) for k, v in p.items()}, x.astype(np.float64))
    plan = build_plan(CFG, p, h, w)
    plan.input[:] = x
    _close(plan.run(), ref)
    with torch.no_grad():
        _close(model(torch.from_numpy(x[None]))[0].numpy(), ref)


def test_every_plan_step_is_a_numba_kernel_or_a_gemm():
    numba = pytest.importorskip("numba")
    plan = build_plan(CFG, _random_params(), 128, 128)
    for step in plan.steps:
        assert isinstance(step.func, numba.core.registry.CPUDispatcher) or step.func is np.dot, step


def _random_params():
    tensors = {k: v.numpy() for k, v in random_model(5).state_dict().items() if not k.endswith("num_batches_tracked")}
    return fold(CFG, tensors)


def test_plain_loss_is_the_authors_bce_plus_dice():
    torch.manual_seed(0)
    logits, mask = torch.randn(2, 1, 16, 16) * 3, (torch.rand(2, 1, 16, 16) > 0.6).float()
    p = torch.sigmoid(logits)
    authors = torch.nn.BCELoss()(p, mask) + (1 - (2 * (p * mask).flatten(1).sum(1) + 1)
                                             / (p.flatten(1).sum(1) + mask.flatten(1).sum(1) + 1)).mean()
    assert torch.allclose(microaunet.plain_loss(logits, mask), authors, atol=1e-5)


def test_distillation_stages():
    """Stage 1 vanishes where the student equals the teacher; stage 2 prefers embeddings that
    separate the classes; every stage has gradients; stage 1 refuses a teacher without skips."""
    torch.manual_seed(0)
    logits, mask = torch.randn(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 8:20] = 1
    skips = [torch.randn(2, c, 32 >> k, 32 >> k) for k, c in enumerate((8, 16, 24, 32, 48), 1)]
    parts = microaunet.imitation_loss(skips, skips, logits, logits, 0.5)
    assert float(parts["mimic"]) == 0 and abs(float(parts["kl"])) < 1e-6
    separated = torch.cat([mask, 1 - mask], 1).repeat(1, 4, 1, 1)[:, :, ::2, ::2] + 0.01 * torch.randn(2, 8, 16, 16)
    mixed = torch.randn(2, 8, 16, 16)
    assert microaunet.preference_loss(separated, mask) < microaunet.preference_loss(mixed, mask)
    model = microaunet.build(CFG).train()
    x = torch.rand(2, 3, 128, 128) * 255
    mask = torch.zeros(2, 1, 128, 128)
    mask[:, :, 30:90, 40:80] = 1
    teacher = malunet.build(TEACHER).eval()
    with torch.no_grad():
        teacher_out = microaunet.FAMILY.teach(teacher, x)
    for stage in (0, 1, 2):
        model.zero_grad()
        batch = {"options": microaunet.MicroAUNetOptions(stage=stage), "mask": mask, "teacher": teacher_out}
        loss, logged = microaunet.microaunet_loss(model(x), batch)
        loss.backward()
        assert torch.isfinite(loss) and model.encoder1.depthwise.weight.grad.abs().sum() > 0, (stage, logged)
    with pytest.raises(ValueError, match="skips"):
        microaunet.microaunet_loss(model(x), {"options": microaunet.MicroAUNetOptions(stage=1), "mask": mask,
                                              "teacher": teacher_out[0]})


def test_teacher_then_both_distillation_stages_train_and_export(tmp_path):
    """The recipes' chain on a toy dataset, one epoch each: the MALUNet teacher, then MicroAUNet's
    imitation stage (the teacher's skips reach the loss), then its preference stage from that
    export; every export loads in npseg with the min-max record and predicts."""
    import npseg
    from test_trainer import make_dataset
    from trainer.checkpoint import export_checkpoint
    from trainer.recipe import Recipe, TrainOptions
    from trainer.train import train

    data = make_dataset(tmp_path / "toy", n=8, size=(128, 128))

    def run(name, **keys):
        recipe = Recipe(**{"data": (str(data),), "epochs": 1, "batch_size": 2, "lr": 1e-3, "size": 128, **keys})
        train(TrainOptions(recipe=recipe, out=str(tmp_path / name), cache_dir=str(tmp_path / "cache"), threads=1))
        return export_checkpoint(tmp_path / name / "best.pt", tmp_path / f"{name}.safetensors")

    teacher = run("teacher", model="malunet")
    stage1 = run("stage1", model="microaunet", teacher=str(teacher), options={"stage": 1})
    stage2 = run("stage2", model="microaunet", teacher=str(teacher), init=str(stage1), options={"stage": 2})
    frame = np.full((100, 140, 3), 90, np.uint8)
    frame[30:70, 40:90] = (60, 60, 170)
    for path in (teacher, stage2):
        seg = npseg.load(str(path))
        assert seg.weights.preprocessing["normalize"]["kind"] == "minmax"
        assert seg.predict_proba(frame).shape == (100, 140)
