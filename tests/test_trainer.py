"""Trainer: data, loss, metrics, a 2-epoch smoke run with export, resume, --init, sizes, packs, bad data."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trainer import data as D  # noqa: E402
from trainer.evaluate import dice_iou, evaluate, hd95  # noqa: E402
from trainer.checkpoint import export_checkpoint, load_checkpoint  # noqa: E402
from trainer.models.ultraseg import (  # noqa: E402
    UltraSegOptions, boundary_target, distillation_loss, main_loss, side_loss, soft_dice_loss, ultraseg_loss)
from trainer.recipe import Recipe, TrainOptions  # noqa: E402
from trainer.train import cosine_lr, train  # noqa: E402


def make_dataset(root: Path, n: int = 12, seed: int = 0, size=(96, 128)) -> Path:
    """A toy polyp dataset: a reddish ellipse (the polyp) on a textured pinkish background."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    for i in range(n):
        img = np.clip(rng.normal((150, 140, 200), 20, (h, w, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        center = (int(rng.integers(30, w - 30)), int(rng.integers(25, h - 25)))
        axes = (int(rng.integers(10, 25)), int(rng.integers(10, 20)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        img[mask > 0] = (60, 60, 170)
        cv2.imwrite(str(root / "images" / f"img{i:02d}.jpg"), img)
        cv2.imwrite(str(root / "masks" / f"img{i:02d}.png"), mask)
    return root


def options(tmp: Path, folder: Path, run: str, **recipe_keys) -> TrainOptions:
    """A small run of the 108K on `folder` into tmp/run; keyword arguments replace recipe keys."""
    recipe = dict(model="ultraseg-108k", data=(str(folder),), epochs=2, batch_size=2, lr=1e-3)
    recipe.update(recipe_keys)
    return TrainOptions(recipe=Recipe(**recipe), out=str(tmp / run), cache_dir=str(tmp / "cache"), threads=1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainer")
    return tmp, make_dataset(tmp / "toy")


@pytest.fixture(scope="module")
def two_epoch_run(toy):
    tmp, data = toy
    opts = options(tmp, data, "full")
    summary = train(opts)
    return opts, summary


# ---------------------------------------------------------------- metrics and loss

def square(size, y0, x0, side):
    m = np.zeros((size, size), np.uint8)
    m[y0:y0 + side, x0:x0 + side] = 1
    return m


def test_dice_iou_hand_made():
    a = square(20, 0, 0, 10)  # 100 px
    b = square(20, 0, 5, 10)  # overlap 50 px
    d, j = dice_iou(a, b)
    assert d == pytest.approx(0.5) and j == pytest.approx(50 / 150)
    assert dice_iou(a, a) == (1.0, 1.0)
    empty = np.zeros_like(a)
    assert dice_iou(empty, empty) == (1.0, 1.0)
    assert dice_iou(a, empty) == (0.0, 0.0)


def test_hd95_hand_made():
    a = square(40, 10, 10, 10)
    assert hd95(a, a) == 0.0
    assert hd95(a, square(40, 10, 13, 10)) == pytest.approx(3.0)  # a 3-pixel shift
    empty = np.zeros_like(a)
    assert hd95(empty, empty) == 0.0
    assert hd95(a, empty) == pytest.approx(np.hypot(40, 40))  # one empty mask: the image diagonal
    assert hd95(empty, a) == pytest.approx(np.hypot(40, 40))


def test_soft_dice_and_losses():
    t = torch.from_numpy(square(16, 4, 4, 8)).float()[None, None]
    assert float(soft_dice_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    good = torch.cat([-10 * (2 * t - 1), 10 * (2 * t - 1)], 1)  # logits that agree with the mask
    assert float(main_loss(good, t)) < 0.01
    assert float(main_loss(-good, t)) > 2.0
    assert float(side_loss(10 * (2 * t - 1), t)) < 0.01
    logits = torch.zeros(1, 2, 16, 16, requires_grad=True)
    sides = [torch.zeros(1, 1, 16, 16, requires_grad=True) for _ in range(7)]
    total, parts = ultraseg_loss((logits, sides[:4], sides[4:]), {"mask": t, "boundary": t})
    total.backward()
    assert set(parts) == {"main", "region", "boundary"}
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in sides)
    assert total.item() == pytest.approx(parts["main"] + parts["region"] + parts["boundary"], rel=1e-5)


def test_distillation_loss_is_the_scaled_kl_to_the_teacher():
    """T^2 x KL(teacher || student) per pixel: 0 where they agree, the closed form elsewhere; a one-logit
    teacher z counts as the two logits (0, z); teacher and distillation weight come together."""
    torch.manual_seed(0)
    student = torch.randn(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    assert distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-12)
    for t in (1.0, 3.0):
        pt, ps = torch.softmax(teacher / t, 1), torch.softmax(student / t, 1)
        expected = t * t * (pt * (pt.log() - ps.log())).sum(1).mean()
        assert distillation_loss(student, teacher, t).item() == pytest.approx(expected.item(), rel=1e-9)
    one_logit = teacher[:, 1:] - teacher[:, :1]
    assert distillation_loss(student, one_logit, 2.0).item() == pytest.approx(
        distillation_loss(student, teacher, 2.0).item(), rel=1e-9)
    distillation_loss(student, teacher, 1.0).backward()
    assert student.grad.abs().sum() > 0
    t = torch.ones(2, 1, 8, 8, dtype=torch.float64)
    sides = [torch.zeros(2, 1, 8, 8, dtype=torch.float64) for _ in range(7)]
    outputs = (student.detach(), sides[:4], sides[4:])
    _, parts = ultraseg_loss(outputs, {"mask": t, "boundary": t, "teacher": teacher,
                                       "options": UltraSegOptions(distillation=0.5, temperature=2.0)})
    assert parts["distillation"] == pytest.approx(0.5 * distillation_loss(student, teacher, 2.0).item(), rel=1e-9)
    for batch in ({"teacher": teacher}, {"options": UltraSegOptions(distillation=1.0)}):
        with pytest.raises(ValueError, match="go together"):
            ultraseg_loss(outputs, {"mask": t, "boundary": t, **batch})
    with pytest.raises(ValueError, match="temperature > 0"):
        UltraSegOptions(distillation=1.0, temperature=0.0)


def test_normalise_applies_the_preprocessing_record_per_image():
    """The loop's normalisation is npseg's: affine with one scale, minmax over each image, BGR planes,
    each channel standardised over each image."""
    from npseg.preprocessing import affine, minmax, standardize
    from trainer.train import normalise

    pixels = torch.from_numpy(np.random.default_rng(0).uniform(20, 200, (2, 3, 4, 5)).astype(np.float32))
    pixels[1] *= 0.5
    out = normalise(pixels, affine(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)))
    mean, std = torch.tensor([0.5, 0.4, 0.3])[:, None, None], torch.tensor([0.2, 0.25, 0.3])[:, None, None]
    torch.testing.assert_close(out, (pixels / 255 - mean) / std)
    out = normalise(pixels, minmax(low=-1.0, high=1.0))
    for image, x in zip(pixels, out):
        torch.testing.assert_close(x, -1 + 2 * (image - image.min()) / (image.max() - image.min()))
    torch.testing.assert_close(normalise(pixels, affine(color_order="BGR")), pixels.flip(1) / 255)
    out = normalise(pixels, standardize(epsilon=1.0))
    for image, x in zip(pixels.double(), out):
        mean, std = image.mean((1, 2), keepdim=True), image.std((1, 2), correction=0, keepdim=True)
        torch.testing.assert_close(x, ((image - mean) / (std + 1.0)).float())


def test_cosine_lr():
    assert cosine_lr(3e-4, 1, 10) == pytest.approx(3e-4)
    assert cosine_lr(3e-4, 6, 10) == pytest.approx(1.5e-4)
    assert cosine_lr(3e-4, 10, 10) < 1e-5


# ---------------------------------------------------------------- data

def test_boundary_target_is_a_dilated_ring():
    m = square(64, 16, 16, 32)
    b = boundary_target(m)
    assert set(np.unique(b)) == {0, 1}
    assert b[32, 32] == 0 and b[0, 0] == 0  # deep inside and far outside
    assert b[16, 32] == 1 and b[32, 15] == 1  # on the edge
    assert 0 < b.sum() < 64 * 64 / 4


def test_split_is_deterministic_disjoint_and_80_20():
    stems = [f"s{i:03d}" for i in range(100)]
    s1, s2 = D.make_split(stems, 0), D.make_split(list(reversed(stems)), 0)
    assert s1 == s2
    assert len(s1["test"]) == 20 and len(s1["val"]) == 8 and len(s1["train"]) == 72
    assert not (set(s1["train"]) & set(s1["test"])) and not (set(s1["val"]) & set(s1["test"]))
    assert sorted(s1["train"] + s1["val"] + s1["test"]) == stems
    assert D.make_split(stems, 1)["test"] != s1["test"]


def test_mask_threshold_any_channels(tmp_path):
    m = np.zeros((8, 8, 3), np.uint8)
    m[2:6, 2:6] = 200
    m[0, 0] = 100  # compression noise below the threshold
    cv2.imwrite(str(tmp_path / "m.png"), m)
    cv2.imwrite(str(tmp_path / "g.png"), m[:, :, 0])
    for name in ("m.png", "g.png"):
        r = D.read_mask(tmp_path / name)
        assert r.shape == (8, 8) and r.sum() == 16 and r[0, 0] == 0


@pytest.mark.parametrize("mode", ["recipe", "strong"])
def test_augment_is_seeded_and_keeps_masks_binary(mode):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    m = square(64, 10, 10, 30)
    out1 = D.augment(img, m, np.random.default_rng(5), mode)
    out2 = D.augment(img, m, np.random.default_rng(5), mode)
    for a1, a2 in zip(out1, out2):
        np.testing.assert_array_equal(a1, a2)
    assert set(np.unique(out1[1])) <= {0, 1}
    assert out1[0].shape == img.shape


def test_unknown_augmentation_is_refused():
    with pytest.raises(ValueError, match="recipe"):
        D.PolypDataset([], seed=0, augmentation="heavy")


def test_loader_workers_see_each_epoch(toy, tmp_path):
    """A worker process must augment with the current epoch (a persistent worker kept epoch 1's)."""
    from trainer.train import train_loader

    _, data = toy
    part = D.cached_arrays(data, ["img00"], tmp_path, progress=False)
    ds = D.PolypDataset([part], seed=3, augmentation="strong")
    loader, sampler = train_loader(ds, TrainOptions(recipe=Recipe(batch_size=1), workers=1))
    seen = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        batch, = list(loader)
        x = batch["image"]
        np.testing.assert_array_equal(x[0].numpy(), ds[0]["image"].numpy())  # the worker used this epoch
        seen.append(x)
    assert not torch.equal(seen[0], seen[1])


def test_cached_sample_matches_npseg_preprocessing(toy, tmp_path):
    import npseg
    from npseg.models import family
    from trainer.train import normalise

    _, data = toy
    stems, images, masks = D.cached_arrays(data, ["img00", "img01"], tmp_path, progress=False)
    frame = cv2.imread(str(data / "images" / "img00.jpg"))
    ds = D.PolypDataset([(stems, images, masks)])
    x = normalise(ds[0]["image"][None], family("ultraseg").preprocessing)[0].numpy()  # as the loop does
    size = images.shape[1]  # the cache's (the recipe's 256); the default file may predict at another
    ref = npseg.load("ultraseg-130k", backend="numpy", size=size).preprocess(frame)  # the deployed preprocessing
    np.testing.assert_array_equal(x, ref)


# ---------------------------------------------------------------- bad data

def test_missing_mask_names_the_file(tmp_path):
    data = make_dataset(tmp_path / "d", n=4)
    (data / "masks" / "img02.png").unlink()
    with pytest.raises(D.DataError, match="img02"):
        D.list_pairs(data)
    with pytest.warns(UserWarning, match="img02"):
        assert [p.stem for p in D.list_pairs(data, skip_bad=True)] == ["img00", "img01", "img03"]


def test_corrupt_image_and_mask_size_name_the_file(tmp_path):
    data = make_dataset(tmp_path / "d", n=4)
    (data / "images" / "img01.jpg").write_bytes(b"not a jpeg")
    cv2.imwrite(str(data / "masks" / "img03.png"), np.zeros((10, 10), np.uint8))
    stems = ["img00", "img01", "img02", "img03"]
    with pytest.raises(D.DataError, match=r"img01\.jpg.*cannot decode.*--skip-bad"):
        D.cached_arrays(data, stems, tmp_path / "c", progress=False)
    with pytest.raises(D.DataError, match=r"img03\.png.*mask is 10x10"):
        D.cached_arrays(data, ["img03"], tmp_path / "c", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept, images, _ = D.cached_arrays(data, stems, tmp_path / "c", skip_bad=True, progress=False)
    assert kept == ["img00", "img02"] and images.shape == (2, 256, 256, 3)
    assert any("img01" in str(w.message) for w in caught) and any("img03" in str(w.message) for w in caught)


def test_cli_stops_on_bad_data_with_message(tmp_path, capsys):
    from trainer.__main__ import main

    data = make_dataset(tmp_path / "d", n=6)
    (data / "masks" / "img04.png").unlink()
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1",
               "--cache-dir", str(tmp_path / "c")])
    assert rc == 2
    assert "img04" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


# ---------------------------------------------------------------- training

def test_two_epoch_smoke_run_decreases_loss_and_exports(two_epoch_run, toy, tmp_path):
    import npseg

    opts, summary = two_epoch_run
    run = Path(opts.out)
    log = json.loads((run / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    assert (run / "log.csv").read_text().count("\n") == 3
    assert json.loads((run / "splits" / "toy.json").read_text())["test"]
    ckpt = load_checkpoint(run / "best.pt")  # weights_only loading
    assert ckpt["epoch"] in (1, 2) and summary["epochs_run"] == 2

    out = export_checkpoint(run / "best.pt", tmp_path / "toy.safetensors")
    seg = npseg.load(out)
    prov = seg.weights.provenance
    assert prov["epochs_run"] == 2 and prov["splits"]["toy"]["test"] and prov["seed"] == 0
    frame = cv2.imread(str(toy[1] / "images" / "img00.jpg"))
    mask = seg.predict(frame)
    assert mask.shape == frame.shape[:2] and set(np.unique(mask)) <= {0, 1}
    res = evaluate(out, [toy[1]], limit=1, progress=False)["datasets"]["toy"]
    assert res["n"] == 1 and res["npseg_torch_dice_diff"] < 1e-3


def test_cli_export_evaluate_stores_metrics_of_the_exported_tensors(two_epoch_run, toy, tmp_path, capsys):
    import npseg
    from trainer.__main__ import main

    opts, _ = two_epoch_run
    out = tmp_path / "evaluated.safetensors"
    assert main(["export", str(Path(opts.out) / "best.pt"), "-o", str(out), "--evaluate",
                 "--note", "toy data"]) == 0
    w = npseg.load(out).weights
    assert w.metrics["datasets"]["toy"]["n"] >= 1 and w.provenance["best_epoch"] in (1, 2)
    assert w.provenance["note"] == "toy data"
    plain = npseg.load(export_checkpoint(Path(opts.out) / "best.pt", tmp_path / "plain.safetensors")).weights
    for k, v in plain.tensors.items():
        np.testing.assert_array_equal(w.tensors[k], v, err_msg=k)


def test_resume_continues_a_stopped_run_exactly(two_epoch_run, toy):
    tmp, data = toy
    full_opts, _ = two_epoch_run
    opts = options(tmp, data, "resumed", max_minutes=0.0)  # a zero budget stops after the first epoch
    assert train(opts)["epochs_run"] == 1
    # the time budget given again on the command line (a resume may change it)
    summary = train(options(tmp, data, "resumed", max_minutes=60.0), resume=True, resume_overrides=("max_minutes",))
    assert summary["epochs_run"] == 2
    full = json.loads((Path(full_opts.out) / "log.json").read_text())
    resumed = json.loads((tmp / "resumed" / "log.json").read_text())
    # same seed, same splits, restored optimizer and RNG: the resumed run retraces the uninterrupted one
    assert [r["train_loss"] for r in resumed] == pytest.approx([r["train_loss"] for r in full], rel=1e-4)


def test_init_from_weights_file_starts_from_its_tensors(two_epoch_run, toy, tmp_path):
    """--init: fine-tuning starts from an exported file's tensors and records where it came from."""
    tmp, data = toy
    opts, _ = two_epoch_run
    start = export_checkpoint(Path(opts.out) / "best.pt", tmp_path / "start.safetensors")
    summary = train(options(tmp, data, "finetune", epochs=1, lr=0.0, init=str(start)))  # lr 0: weights unchanged
    assert summary["epochs_run"] == 1
    out = export_checkpoint(tmp / "finetune" / "best.pt", tmp_path / "finetuned.safetensors")
    import npseg

    before, after = npseg.load(start).weights, npseg.load(out).weights
    for k, v in before.tensors.items():
        if "running" not in k:  # BN statistics keep updating in train mode even at lr 0
            np.testing.assert_array_equal(after.tensors[k], v, err_msg=k)
    assert after.provenance["init"]["file"] == "start.safetensors"
    assert after.provenance["init"]["epochs_run"] == 2
    with pytest.raises(ValueError, match="pass --model ultraseg-108k"):
        train(options(tmp, data, "wrong-variant", model="ultraseg-500k", init=str(start)))


def test_a_108k_file_grows_into_a_130k_model_that_computes_the_same(two_epoch_run, toy, tmp_path):
    """--init a 108K file for a 130K run: shared tensors load as they are and AGF + SSA start as a
    pass-through, so the 130K starts from the 108K's function; provenance says it was grown."""
    import torch

    from npseg.models import variant
    from trainer.models import init_from_weights, torch_family

    def build(name):
        family, cfg = variant(name)
        return torch_family(family.name).build(cfg)

    tmp, data = toy
    opts, _ = two_epoch_run
    start = export_checkpoint(Path(opts.out) / "best.pt", tmp_path / "start.safetensors")
    small, grown = build("ultraseg-108k").eval(), build("ultraseg-130k").eval()
    init_from_weights(small, str(start))
    info = init_from_weights(grown, str(start))
    assert info["grown_from"].startswith("ultraseg-108k")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = small(x), grown(x)
    # AGF keeps a 0.25 % share of f3 so that its weights get a gradient: near, not bit-equal
    assert (out - ref).abs().max().item() < 2e-2 * max(1.0, ref.abs().max().item())

    summary = train(options(tmp, data, "grown", model="ultraseg-130k", epochs=1, init=str(start)))
    assert summary["epochs_run"] == 1
    import npseg

    after = npseg.load(export_checkpoint(tmp / "grown" / "best.pt", tmp_path / "grown.safetensors")).weights
    assert after.config.name == "ultraseg-130k"
    assert after.provenance["init"]["grown_from"].startswith("ultraseg-108k")


def test_init_reuses_the_init_files_split_whatever_the_seed(two_epoch_run, toy, tmp_path):
    """A fine-tune with another --seed keeps the split its --init file recorded, so the starting
    model's test images never enter training; a folder of other images gets a new split, with a warning."""
    tmp, data = toy
    opts, _ = two_epoch_run
    start = export_checkpoint(Path(opts.out) / "best.pt", tmp_path / "start.safetensors")
    recorded = json.loads((Path(opts.out) / "splits" / "toy.json").read_text())
    assert D.make_split(sorted(s for part in recorded.values() for s in part), 7) != recorded  # seed 7 would differ
    run = options(tmp, data, "reseeded", epochs=1, seed=7, init=str(start))
    train(run)
    assert json.loads((tmp / "reseeded" / "splits" / "toy.json").read_text()) == recorded

    other = make_dataset(tmp_path / "elsewhere" / "toy", n=8, seed=3)  # same folder name, other images
    with pytest.warns(UserWarning, match="does not list exactly this folder's images"):
        train(options(tmp, other, "foreign", epochs=1, seed=7, init=str(start)))


def test_resume_can_extend_epochs_and_patience_only(two_epoch_run, toy):
    tmp, data = toy
    opts, _ = two_epoch_run
    import shutil

    shutil.copytree(opts.out, tmp / "extended")
    summary = train(options(tmp, data, "extended", epochs=3, patience=7, lr=0.5), resume=True,
                    resume_overrides=("epochs", "patience"))
    saved = json.loads((tmp / "extended" / "options.json").read_text())["recipe"]
    assert summary["epochs_run"] == 3 and saved["epochs"] == 3 and saved["patience"] == 7
    assert saved["lr"] == opts.recipe.lr  # not overridable: the run's own recipe
    with pytest.raises(ValueError, match="only"):
        train(options(tmp, data, "extended"), resume=True, resume_overrides=("lr",))


def test_resume_without_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(options(tmp_path, tmp_path, "none"), resume=True)


def test_torchrun_two_processes_train(toy):
    """DistributedDataParallel on CPU (gloo): 2 processes train, rank 0 logs and checkpoints."""
    import os
    import shutil
    import subprocess

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    tmp, data = toy
    run = tmp / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "trainer", "train", "--model",
           "ultraseg-108k", "--data", str(data), "--out", str(run), "--epochs", "2", "--batch-size", "2",
           "--lr", "1e-3", "--cache-dir", str(tmp / "cache")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "2 process(es)" in out.stdout
    log = json.loads((run / "log.json").read_text())
    assert [r["epoch"] for r in log] == [1, 2] and log[1]["train_loss"] < log[0]["train_loss"]
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_input_size_is_trained_cached_and_exported(toy, tmp_path):
    """--size: samples are cached at that size, and the exported file makes npseg predict at it."""
    import npseg

    tmp, data = toy
    summary = train(options(tmp, data, "size96", epochs=1, size=96))
    assert summary["epochs_run"] == 1
    out = export_checkpoint(tmp / "size96" / "best.pt", tmp_path / "size96.safetensors")
    seg = npseg.load(out)
    assert seg.input_size == (96, 96)
    assert "96x96" in seg.weights.provenance["recipe"]["summary"]
    stems, images, masks = D.cached_arrays(data, ["img00"], tmp / "cache", progress=False, size=96)
    assert images.shape == (1, 96, 96, 3) and masks.shape == (1, 96, 96)
    frame = cv2.imread(str(data / "images" / "img00.jpg"))
    assert seg.predict(frame).shape == frame.shape[:2]


def test_a_non_square_input_size_is_trained_cached_and_exported(toy, tmp_path):
    """--size HxW: wide frames keep more of their aspect; the cache, the file and npseg's input follow it,
    and npseg still matches torch at that size."""
    import npseg
    from trainer.models import torch_model_from_weights

    tmp, data = toy
    summary = train(options(tmp, data, "size48x80", epochs=1, size=(48, 80)))
    assert summary["epochs_run"] == 1
    out = export_checkpoint(tmp / "size48x80" / "best.pt", tmp_path / "wide.safetensors")
    seg = npseg.load(out, backend="numpy")
    assert seg.input_size == (48, 80) and "48x80" in seg.weights.provenance["recipe"]["summary"]
    stems, images, masks = D.cached_arrays(data, ["img00"], tmp / "cache", progress=False, size=[48, 80])
    assert images.shape == (1, 48, 80, 3) and masks.shape == (1, 48, 80)
    frame = cv2.imread(str(data / "images" / "img00.jpg"))
    with torch.no_grad():
        ref = torch_model_from_weights(out)[0](torch.from_numpy(seg.preprocess(frame))[None])[0].numpy()
    np.testing.assert_allclose(seg.logits(frame), ref, atol=1e-4)
    assert seg.predict(frame).shape == frame.shape[:2]


@pytest.mark.parametrize("text, size", [("320", 320), ("288x448", (288, 448)), ("256X256", 256)])
def test_size_option_takes_a_side_or_h_by_w(text, size):
    from trainer.__main__ import _input_size

    assert _input_size(text) == size


def test_a_bad_size_option_names_the_forms(capsys):
    from trainer.__main__ import main

    with pytest.raises(SystemExit):
        main(["train", "--size", "288by448", "--data", "x"])
    assert "'288by448': give N or HxW, multiples of 16" in capsys.readouterr().err
    with pytest.raises(D.DataError, match="multiple of 16"):
        D.check_size([288, 450])


def test_input_size_must_be_a_multiple_of_16(toy):
    tmp, data = toy
    with pytest.raises(D.DataError, match="multiple of 16"):
        train(options(tmp, data, "size100", epochs=1, size=100))


def test_select_on_one_dataset_of_a_mixed_run(toy, tmp_path):
    """--select-on: a mixed run keeps the checkpoint that is best on that dataset's validation Dice alone."""
    import npseg

    tmp, data = toy
    other = make_dataset(tmp_path / "other", n=12, seed=5)
    opts = options(tmp, data, "select-on", select_on="other", data=(str(data), str(other)))
    summary = train(opts)
    log = json.loads((tmp / "select-on" / "log.json").read_text())
    assert [r["val_dice"] for r in log] == [r["val_dice_per_dataset"]["other"] for r in log]
    assert summary["best_val_dice"] == max(r["val_dice_per_dataset"]["other"] for r in log)
    out = export_checkpoint(tmp / "select-on" / "best.pt", tmp_path / "select-on.safetensors")
    assert "other's validation Dice alone" in npseg.load(out).weights.provenance["recipe"]["summary"]
    with pytest.raises(D.DataError, match="--select-on polypgen: not a dataset of this run"):
        train(dataclasses.replace(opts, out=str(tmp_path / "wrong"),
                                  recipe=dataclasses.replace(opts.recipe, select_on="polypgen")))


def test_a_dataset_of_the_init_chain_without_a_recorded_split_is_refused(two_epoch_run, toy, tmp_path):
    """An --init file whose ancestor trained on a dataset but which records no split for it would let a
    new split put the ancestor's training images into the test part: the run stops and names
    --splits-from, which takes the split from a weights file or a split file."""
    tmp, data = toy
    opts, _ = two_epoch_run
    start = export_checkpoint(Path(opts.out) / "best.pt", tmp_path / "start.safetensors")  # records toy
    recorded = json.loads((Path(opts.out) / "splits" / "toy.json").read_text())
    other = make_dataset(tmp_path / "other", n=12, seed=5)
    train(options(tmp, other, "other-from-start", epochs=1, init=str(start)))
    mid = export_checkpoint(tmp / "other-from-start" / "best.pt", tmp_path / "mid.safetensors")  # records other only
    with pytest.raises(D.DataError, match=r"toy: --init .*descends from start\.safetensors.*--splits-from"):
        train(options(tmp, data, "toy-from-mid", epochs=1, seed=7, init=str(mid)))
    for i, source in enumerate((start, Path(opts.out) / "splits" / "toy.json")):
        train(options(tmp, data, f"toy-from-mid-{i}", epochs=1, seed=7, init=str(mid), splits_from=(str(source),)))
        assert json.loads((tmp / f"toy-from-mid-{i}" / "splits" / "toy.json").read_text()) == recorded
    with pytest.raises(D.DataError, match="none of this run's"):
        train(options(tmp, data, "no-overlap", epochs=1, init=str(mid), splits_from=(str(mid),)))
    stray = tmp_path / "other.json"  # a split file named for a dataset the run does not train on
    stray.write_text(json.dumps(recorded))
    with pytest.raises(D.DataError, match="none of this run's"):
        train(options(tmp, data, "no-overlap-json", epochs=1, init=str(mid), splits_from=(str(stray),)))
    other_split = tmp_path / "toy.json"
    other_split.write_text(json.dumps(D.make_split(sorted(s for part in recorded.values() for s in part), 7)))
    with pytest.raises(D.DataError, match="toy: --init and --splits-from .* record different test parts"):
        train(options(tmp, data, "disagree", epochs=1, init=str(start), splits_from=(str(other_split),)))
    with pytest.raises(D.DataError, match="--splits-from no-such-model: unknown weights name"):
        train(options(tmp, data, "missing", epochs=1, init=str(mid), splits_from=("no-such-model",)))


def _mucosa_with_polyp(center, radius, size=(64, 96)):
    """A grey mucosa inside a black surround (the scope's border) with one disc-shaped polyp."""
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:, 8:w - 8] = (150, 120, 110)
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, center, radius, 1, -1)
    img[mask > 0] = (200, 60, 60)
    return img, mask


def test_paste_small_adds_one_small_polyp_on_the_mucosa():
    img, mask = _mucosa_with_polyp((20, 20), 10)
    src_img, src_mask = _mucosa_with_polyp((48, 32), 14)
    img0, mask0 = img.copy(), mask.copy()
    added_areas = []
    for seed in range(20):
        pasted = D.paste_small_polyp(img, mask, src_img, src_mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(img, img0)  # the (memory-mapped) cache is never written
        np.testing.assert_array_equal(mask, mask0)
        if pasted is None:  # no place on the mucosa clear of the polyp: the sample stays as it is
            continue
        out, new_mask = pasted
        added = (new_mask > 0) & (mask0 == 0)
        assert new_mask.dtype == np.uint8 and set(np.unique(new_mask)) <= {0, 1}
        assert not ((mask0 > 0) & (new_mask == 0)).any()  # the sample's own polyp stays
        if added.any():
            assert img0[added].max(axis=1).min() > 40  # on the mucosa, not the black surround
            assert (out[added].astype(int) != img0[added]).any()
            added_areas.append(added.mean())
    assert len(added_areas) >= 15
    lo, hi = D.PASTE_AREA
    assert lo / 2 <= min(added_areas) and max(added_areas) <= hi * 2  # shrunk to a small polyp


def test_paste_small_is_seeded_per_sample_and_off_by_default():
    images, masks = zip(*(_mucosa_with_polyp((30 + 5 * i, 30), 12) for i in range(4)))
    masks = np.stack(masks)
    part = ([f"s{i}" for i in range(4)], np.stack(images), masks)
    pasted = D.PolypDataset([part], seed=3, augmentation="strong", paste_small=1.0)
    again = D.PolypDataset([part], seed=3, augmentation="strong", paste_small=1.0)
    plain = D.PolypDataset([part], seed=3, augmentation="strong")
    grew = 0
    for k in range(4):
        a, b, c = pasted[k], again[k], plain[k]
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
        grew += cv2.connectedComponents(a["mask"][0].numpy().astype(np.uint8))[0] - 1 == 2  # its polyp and one pasted
        # without --paste-small the sample is what augment alone gives, as before the option existed
        _, mask = D.augment(part[1][k], part[2][k], np.random.default_rng((3, 0, k)), "strong")
        np.testing.assert_array_equal(c["mask"][0].numpy(), mask)
    assert grew >= 3


def test_paste_small_is_checked_and_recorded(capsys):
    from trainer.__main__ import main
    from trainer.checkpoint import CHECKPOINT_FORMAT, checkpoint_provenance
    from trainer.train import _options_record

    assert main(["train", "--paste-small", "2", "--data", "x"]) == 2
    assert "recipe key 'paste_small' is 2.0, expected a probability in [0, 1]" in capsys.readouterr().err
    opts = _options_record(TrainOptions(recipe=Recipe(data=("k",), paste_small=0.5)))
    ckpt = {"format": CHECKPOINT_FORMAT, "options": opts, "datasets": ["k"], "splits": {}, "epoch": 1,
            "best_epoch": 1, "best_val_dice": 0.5, "train_seconds": 60}
    recipe = checkpoint_provenance(ckpt, "b.pt")["recipe"]
    assert "a polyp shrunk to 0.1%-1% of the image pasted into 0.5 of samples" in recipe["summary"]
    assert recipe["settings"]["paste_small"] == 0.5


def test_pack_copies_train_and_val_frames_and_trains_and_evaluates_on_the_source(two_epoch_run, toy, tmp_path,
                                                                                capsys):
    """`pack` writes the recorded split's train and validation frames, resized, without the test frames;
    a run on the copy keeps that split, records where it came from, and is evaluated on the source."""
    import npseg
    from trainer.__main__ import main

    tmp, data = toy
    opts, _ = two_epoch_run
    start = export_checkpoint(Path(opts.out) / "best.pt", tmp_path / "start.safetensors")
    recorded = json.loads((Path(opts.out) / "splits" / "toy.json").read_text())
    assert main(["pack", "--data", str(data), "--size", "64", "--init", str(start), "-o", str(tmp_path / "packed"),
                 "--seed", "7"]) == 0
    packed = tmp_path / "packed" / "toy"
    assert f"its {len(recorded['test'])} test frames stay behind" in capsys.readouterr().out
    assert sorted(p.stem for p in (packed / "images").iterdir()) == sorted(recorded["train"] + recorded["val"])
    assert D.pack_info(packed)["split"] == recorded and D.pack_info(packed)["size"] == [64, 64]
    stems = recorded["val"]
    _, img_src, mask_src = D.cached_arrays(data, stems, tmp_path / "cache", progress=False, size=64)
    _, img_pk, mask_pk = D.cached_arrays(packed, stems, tmp_path / "cache", progress=False, size=64)
    np.testing.assert_array_equal(mask_pk, mask_src)
    jpeg_95_444 = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    for frame_pk, frame_src in zip(img_pk, img_src):  # the source's cached frame through JPEG, chroma not halved
        jpeg = cv2.imencode(".jpg", np.ascontiguousarray(frame_src[:, :, ::-1]), jpeg_95_444)[1]
        np.testing.assert_array_equal(frame_pk, cv2.imdecode(jpeg, cv2.IMREAD_COLOR)[:, :, ::-1])

    train(options(tmp, packed, "from-pack", epochs=1, size=64, seed=5))
    assert json.loads((tmp / "from-pack" / "splits" / "toy.json").read_text()) == recorded
    out = tmp_path / "from-pack.safetensors"
    assert main(["export", str(tmp / "from-pack" / "best.pt"), "-o", str(out), "--evaluate"]) == 0
    w = npseg.load(out).weights
    assert w.provenance["packed_copies"]["toy"] == {"source": str(data.resolve()), "size": [64, 64],
                                                    "jpeg_quality": 95}
    assert w.metrics["datasets"]["toy"]["n"] == len(recorded["test"])  # evaluated on the source's test frames

    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(packed), "--no-torch"]) == 2
    assert "a packed copy" in capsys.readouterr().err
    with pytest.raises(D.DataError, match="packed at 64x64; train it with --size 64"):
        train(options(tmp, packed, "pack-other-size", epochs=1, size=96))
    other = tmp_path / "toy.json"
    other.write_text(json.dumps(D.make_split(sorted(recorded["train"] + recorded["val"] + recorded["test"]), 7)))
    with pytest.raises(D.DataError, match="packed with another split"):
        train(options(tmp, packed, "pack-other-split", epochs=1, size=64, splits_from=(str(other),)))
    assert main(["pack", "--data", str(data), "--size", "64", "-o", str(tmp_path / "packed")]) == 2
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pack", "--data", str(data), "--size", "64", "-o", str(tmp_path / "q"), "--quality", "40"])
    assert "a whole JPEG quality in 50-100" in capsys.readouterr().err
    next((packed / "images").iterdir()).unlink()
    with pytest.raises(D.DataError, match="not the train and validation parts"):
        train(options(tmp, packed, "pack-tampered", epochs=1, size=64))


def test_pack_stops_on_a_corrupt_image_or_skips_it_with_skip_bad(tmp_path, capsys):
    """A bad frame stops `pack` with its name and leaves no half-written copy; with --skip-bad it is
    left out of the copy, whose record lists only the frames it holds, and a run on it trains."""
    from trainer.__main__ import main

    data = make_dataset(tmp_path / "d", n=12)
    split = D.make_split([f"img{i:02d}" for i in range(12)], 0)
    bad = split["train"][0]
    (data / "images" / f"{bad}.jpg").write_bytes(b"not a jpeg")
    assert main(["pack", "--data", str(data), "--size", "64", "-o", str(tmp_path / "packed")]) == 2
    assert f"{bad}.jpg" in capsys.readouterr().err
    assert not (tmp_path / "packed").exists() or not any((tmp_path / "packed").iterdir())
    with pytest.warns(UserWarning, match=bad):
        assert main(["pack", "--data", str(data), "--size", "64", "-o", str(tmp_path / "packed"), "--skip-bad"]) == 0
    assert f"{len(split['train']) - 1} train + {len(split['val'])} validation frames" in capsys.readouterr().out
    record = D.pack_info(tmp_path / "packed" / "d")
    assert record["split"]["train"] == [s for s in split["train"] if s != bad]
    assert record["split"]["test"] == split["test"]
    train(options(tmp_path, tmp_path / "packed" / "d", "run", epochs=1, size=64))


def test_a_teacher_and_the_family_options_reach_the_loss(two_epoch_run, toy, tmp_path, monkeypatch):
    """recipe `teacher`: a weights file whose outputs (TorchFamily.teach, default its logits, on the
    image normalised as its own file says) the family's loss receives as batch["teacher"]."""
    from trainer.models import TORCH_FAMILIES

    tmp, data = toy
    opts, _ = two_epoch_run
    teacher = export_checkpoint(Path(opts.out) / "best.pt", tmp_path / "teacher.safetensors")
    family = TORCH_FAMILIES["ultraseg"]
    seen = []

    def loss(outputs, batch):
        seen.append((batch["teacher"].shape, batch["image"].shape, batch["options"]))
        return family.loss(outputs, batch)

    monkeypatch.setitem(TORCH_FAMILIES, "ultraseg", dataclasses.replace(family, loss=loss))
    train(options(tmp, data, "taught", epochs=1, size=64, teacher=str(teacher), options={"distillation": 0.5}))
    assert seen
    for teacher_shape, image_shape, family_options in seen:
        assert teacher_shape == (image_shape[0], 2, 64, 64) and image_shape[1:] == (3, 64, 64)
        assert family_options == family.options(distillation=0.5)
    prov = json.loads((tmp / "taught" / "options.json").read_text())["recipe"]
    assert prov["teacher"] == str(teacher) and prov["options"] == {"distillation": 0.5}
    assert json.loads((tmp / "taught" / "log.json").read_text())[0]["train_distillation"] > 0
    with pytest.raises(ValueError, match="a teacher and options.distillation > 0 go together"):
        train(options(tmp, data, "untaught", epochs=1, size=64, teacher=str(teacher)))


def test_a_per_image_run_trains_exports_and_deploys_with_that_normalisation(toy, tmp_path):
    """recipe normalize = "per-image": the loop standardises each channel over each image, and the
    weights file records it, so npseg deploys the same input (npseg equals torch on it)."""
    import npseg

    tmp, data = toy
    train(options(tmp_path, data, "per-image", epochs=1, size=64, normalize="per-image"))
    out = export_checkpoint(tmp_path / "per-image" / "best.pt", tmp_path / "per-image.safetensors")
    w = npseg.load(out).weights
    assert w.preprocessing["normalize"] == {"kind": "standardize", "epsilon": 1.0}
    assert "each channel standardised over the frame" in w.provenance["recipe"]["summary"]
    res = evaluate(out, [data], limit=2, progress=False)["datasets"]["toy"]
    assert res["n"] >= 1 and res["npseg_torch_dice_diff"] < 1e-3
