"""Training data: splits by sequence and with near-duplicates together, odd file names, tiny
datasets, balanced sampling, samples as pixels, and the evaluation's size buckets and parts."""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from trainer import data as D
from trainer import evaluate as E


def _write(path: Path, array: np.ndarray) -> None:
    """Write through the file's bytes (np.tofile), as a file name that is not UTF-8 needs."""
    ok, data = cv2.imencode(Path(path).suffix, array)
    assert ok
    data.tofile(path)


def _dataset(root: Path, stems, size=(48, 64), sequences: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(stems):
        img = np.clip(rng.normal((150, 140, 200), 20, (*size, 3)), 0, 255).astype(np.uint8)
        mask = np.zeros(size, np.uint8)
        cv2.circle(mask, (20 + i % 20, 24), 4 + i % 12, 255, -1)
        _write(root / "images" / f"{stem}.jpg", img)
        _write(root / "masks" / f"{stem}.png", mask)
    if sequences is not None:
        (root / D.SEQUENCES_FILE).write_text(sequences)
    return root


def _sequences(n_frames: int, lengths) -> tuple[list[str], list[list[str]]]:
    stems, seqs, first = [], [], 1
    for length in lengths:
        seqs.append([str(i) for i in range(first, first + length)])
        first += length
    stems = [s for seq in seqs for s in seq]
    assert len(stems) == n_frames
    return stems, seqs


@pytest.mark.parametrize("seed", range(5))
def test_sequence_split_keeps_each_sequence_on_one_side(seed):
    lengths = [25, 25, 17, 11, 25, 30, 8, 22, 19, 14, 40, 12, 9, 21, 16, 33, 27, 18, 20, 24]
    stems, seqs = _sequences(sum(lengths), lengths)
    split = D.make_sequence_split(stems, seqs, seed)
    where = {s: part for part, v in split.items() for s in v}
    assert sorted(where) == sorted(stems)
    assert all(len({where[s] for s in seq}) == 1 for seq in seqs)
    n = len(stems)
    assert abs(len(split["test"]) - 0.2 * n) <= 20 and abs(len(split["val"]) - 0.1 * n) <= 20
    assert split == D.make_sequence_split(list(reversed(stems)), seqs, seed)


def test_sequence_file_is_read_and_used(tmp_path):
    root = _dataset(tmp_path / "video", [str(i) for i in range(1, 13)], sequences="1-4\n5-8\n\n9-10\n11-12\n")
    split = D.load_or_make_split(root, seed=0)
    where = {s: part for part, v in split.items() for s in v}
    for first, last in ((1, 4), (5, 8), (9, 10), (11, 12)):
        assert len({where[str(i)] for i in range(first, last + 1)}) == 1
    assert all(split[k] for k in ("train", "val", "test"))
    (root / D.SEQUENCES_FILE).write_text("1-4\n\nfive-8\n")
    with pytest.raises(D.DataError, match="sequences.txt:3"):
        D.load_or_make_split(root, seed=0)


def test_near_duplicates_stay_together():
    stems = [f"s{i:03d}" for i in range(100)]
    pairs = [(f"s{i:03d}", f"s{i + 1:03d}") for i in range(0, 100, 2)]
    crossed = 0
    for seed in range(10):
        plain = D.make_split(stems, seed)
        split = D.make_split(stems, seed, together=pairs)
        where = {s: part for part, v in split.items() for s in v}
        assert all(where[a] == where[b] for a, b in pairs)
        crossed += plain != split
    assert crossed  # the grouping did move frames that a plain split separates
    assert D.make_split(stems, 3, together=()) == D.make_split(stems, 3)  # no group: the split as before


def test_kvasir_near_duplicates_are_recorded():
    for group in D.NEAR_DUPLICATES["kvasir-seg"]:
        assert len(group) == 2
    assert len(D.NEAR_DUPLICATES["kvasir-seg"]) == 3


def test_too_few_images_is_one_line_naming_the_minimum(tmp_path):
    root = _dataset(tmp_path / "two", ["a", "b"])
    with pytest.raises(D.DataError) as e:
        D.load_or_make_split(root, seed=0)
    assert "at least 3" in str(e.value) and "\n" not in str(e.value)
    split = D.load_or_make_split(_dataset(tmp_path / "three", ["a", "b", "c"]), seed=0)
    assert sorted(len(v) for v in split.values()) == [1, 1, 1]


def test_file_names_that_are_not_utf8(tmp_path):
    odd = os.fsdecode(b"frame\xff")  # a name a camera's file system may hold: not UTF-8
    root = _dataset(tmp_path / "odd", [odd, "plain1", "plain2", "plain3"])
    pairs = {p.stem: p for p in D.list_pairs(root)}
    img, mask = D.read_pair(pairs[odd])
    assert img.shape == (48, 64, 3) and mask.any()
    split = D.load_or_make_split(root, seed=0, split_file=tmp_path / "splits" / "odd.json")
    assert odd in sum(split.values(), [])
    assert D.read_split_file(tmp_path / "splits" / "odd.json") == split
    stems, images, _ = D.cached_arrays(root, sorted(pairs), tmp_path / "cache", progress=False, size=32)
    assert odd in stems and images.shape == (4, 32, 32, 3)
    again = D.cached_arrays(root, sorted(pairs), tmp_path / "cache", progress=False, size=32)
    assert list(again[0]) == list(stems)


def _part(n: int, h: int = 32, w: int = 32):
    masks = np.zeros((n, h, w), np.uint8)
    masks[:, 8:20, 8:20] = 1
    images = np.full((n, h, w, 3), 200, np.uint8)
    return [f"s{i}" for i in range(n)], images, masks


def test_samples_are_pixels_with_the_family_targets():
    seen = []

    def targets(mask01):
        seen.append(mask01.copy())
        return {"edge": 1 - mask01}

    ds = D.PolypDataset([_part(3)], seed=1, augmentation="domain-shift", targets=targets)
    item = ds[0]
    assert set(item) == {"image", "mask", "edge"}
    assert item["image"].shape == (3, 32, 32) and str(item["image"].dtype) == "torch.float32"
    assert float(item["image"].max()) > 1.5  # 0..255, not /255
    assert np.array_equal(item["mask"][0].numpy(), seen[0])  # targets are made from the augmented mask
    assert item["edge"].shape == (1, 32, 32)
    assert set(D.PolypDataset([_part(2)]).__getitem__(1)) == {"image", "mask"}  # no targets: none added


def test_balanced_sampling_draws_every_dataset_equally():
    small, large = _part(3), _part(10)
    ds = D.PolypDataset([small, large], seed=0, balanced=8)
    assert len(ds) == 16
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        drawn = [ds._sample(k) for k in range(len(ds))]
        assert sum(p == 0 for p, _ in drawn) == 8 == sum(p == 1 for p, _ in drawn)
        counts = np.bincount([i for p, i in drawn if p == 0], minlength=3)
        assert counts.max() - counts.min() <= 1  # the small set repeated evenly
        assert len({i for p, i in drawn if p == 1}) == 8  # the large one: a subset without repeats
    assert len(D.PolypDataset([small, large], seed=0)) == 13


def test_multiscale_batches_take_seeded_sides_within_bounds():
    import itertools

    import torch

    from trainer.recipe import Recipe, RecipeError, recipe_from_dict
    from trainer.splits import train_size
    from trainer.train import _family

    def sides(seed, epoch):
        return list(itertools.islice(D.batch_sides((160, 256), seed, epoch), 40))

    assert sides(0, 1) == sides(0, 1) and sides(0, 1) != sides(0, 2) and sides(0, 1) != sides(1, 1)
    assert set(sides(0, 1)) == {160, 192, 224, 256}
    ds = D.PolypDataset([_part(2)], seed=0, targets=lambda m: {"edge": m})
    item = {k: torch.stack([ds[i][k] for i in range(2)]) for k in ("image", "mask", "edge")}
    for side in (160, 256):
        batch = D.resized_batch(item, side, ds.targets)
        assert {k: tuple(v.shape[1:]) for k, v in batch.items()} == \
            {"image": (3, side, side), "mask": (1, side, side), "edge": (1, side, side)}
        assert torch.equal(batch["edge"], batch["mask"])  # targets made again from the resized mask
        assert abs(float(batch["mask"].mean()) - float(item["mask"].mean())) < 0.005
    for bad in ([160, 250], [256, 160], [0, 256], [160]):
        with pytest.raises(RecipeError, match="'multiscale'"):
            recipe_from_dict({"multiscale": bad})
    with pytest.raises(RecipeError, match="square 'size'"):
        _family(Recipe(model="ultraseg-108k", size=(192, 256), multiscale=(160, 256)))
    assert train_size(Recipe(size=320, multiscale=(256, 384))) == 384  # no batch upsampled from a smaller cache
    assert train_size(Recipe(size=192, multiscale=(128, 160))) == 192 and train_size(Recipe(size=192)) == 192


def test_size_buckets():
    assert [E.size_bucket(a) for a in (0.0, 0.004, 0.01, 0.049, 0.05, 0.19, 0.2, 1.0)] == \
        ["polyp-free", "<1%", "1-5%", "1-5%", "5-20%", "5-20%", ">20%", ">20%"]
    rows = [{"dice": d, "size_bucket": b} for d, b in ((0.05, "<1%"), (0.5, "<1%"), (0.9, ">20%"), (1.0, "polyp-free"))]
    table = E._size_table(rows)
    assert table["<1%"] == {"n": 2, "dice": 0.275, "dice_below_0.1": 1}
    assert table["1-5%"]["n"] == 0 and table["1-5%"]["dice"] is None
    assert table["polyp-free"]["n"] == 1


def test_parts_all_and_pranet(tmp_path):
    root = _dataset(tmp_path / "cvc", ["1", "2", "3", "4"])
    pairs = {p.stem: p for p in D.list_pairs(root)}
    assert E._frames_to_score(root, "cvc", None, "all", pairs)[0] == ["1", "2", "3", "4"]
    with pytest.raises(D.DataError, match="pranet_test_ids"):
        E._frames_to_score(root, "cvc", None, "pranet-test", pairs)
    (root / E.PRANET_TEST_FILE).write_text("2\n4\n")
    split = {"train": ["1", "2"], "val": ["3"], "test": ["4"]}
    stems, notes = E._frames_to_score(root, "cvc", {"cvc": split}, "pranet-test", pairs)
    assert stems == ["2", "4"] and notes["in_this_model's_train_or_val"] == 1
    assert E._frames_to_score(root, "cvc", {"kvasir-seg": split}, "pranet-test", pairs)[1][
        "in_this_model's_train_or_val"] == 0  # splits recorded, none for this dataset: never trained on it
    with pytest.raises(D.DataError, match="--part all"):
        E._frames_to_score(root, "cvc", {}, "test", pairs)
    json.dumps(notes)


def test_evaluate_every_frame_of_a_folder_with_odd_names(tmp_path):
    """--part all on a folder the model never saw (no split needed), a file name that is not UTF-8 included:
    every frame scored, size buckets and failures counted, the per-image CSV written."""
    import torch

    from npseg.models import variant
    from trainer.export import export_weights
    from trainer.models import torch_family

    fam, cfg = variant("ultraseg-108k")
    torch.manual_seed(0)
    weights = export_weights(torch_family(fam.name).build(cfg).eval(), tmp_path / "w.safetensors",
                             provenance={"splits": {}}, input_size=(32, 32))
    odd = os.fsdecode(b"frame\xfe")
    root = _dataset(tmp_path / "held-out", [odd, "a", "b"])
    res = E.evaluate(weights, [root], part="all", backend="numpy", per_image_csv=tmp_path / "rows.csv",
                     progress=False)["datasets"]["held-out"]
    assert res["n"] == 3 and sum(b["n"] for b in res["by_polyp_size"].values()) == 3
    assert res["dice_below_0.1"] == sum(b["dice_below_0.1"] for b in res["by_polyp_size"].values())
    assert res["npseg_torch_dice_diff"] < 0.05
    assert len((tmp_path / "rows.csv").read_text(errors="replace").splitlines()) == 4
    json.dumps(res)
