"""The weights file round-trips and refuses the basic mismatches with a named problem."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from npseg import WeightsError
from npseg.models.ultraseg import VARIANTS, expected_tensors
from npseg.weights import Weights, load, save


def random_weights(cfg, seed=0):
    rng = np.random.default_rng(seed)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_tensors(cfg).items()}
    tensors.update({k: np.abs(v) for k, v in tensors.items() if k.endswith("running_var")})
    return Weights(config=cfg, tensors=tensors,
                   provenance={"dataset": "none"}, metrics={"dice": 0.5})


@pytest.mark.parametrize("variant", ["ultraseg-108k", "ultraseg-130k"])
def test_round_trip(tmp_path, variant):
    w = random_weights(VARIANTS[variant])
    save(tmp_path / "w.safetensors", w)
    back = load(tmp_path / "w.safetensors")
    assert back.config == w.config and back.metrics == w.metrics and back.provenance == w.provenance
    assert set(back.tensors) == set(w.tensors)
    for k in w.tensors:
        np.testing.assert_array_equal(back.tensors[k], w.tensors[k])


def test_parameter_counts_match_the_spec():
    count = lambda cfg: sum(int(np.prod(s)) for k, s in expected_tensors(cfg).items() if "running_" not in k)
    assert count(VARIANTS["ultraseg-108k"]) == 126_030
    assert count(VARIANTS["ultraseg-130k"]) == 147_683


def _rewrite_metadata(path, **changes):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def test_missing_tensor_is_named(tmp_path):
    from safetensors.numpy import save_file

    w = random_weights(VARIANTS["ultraseg-130k"])
    save(tmp_path / "ok.safetensors", w)
    full = load(tmp_path / "ok.safetensors")
    tensors = dict(full.tensors)
    del tensors["decoder2.0.norm1.weight"]
    raw = (tmp_path / "ok.safetensors").read_bytes()
    meta = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])["__metadata__"]
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(WeightsError, match=r"missing tensor 'decoder2.0.norm1.weight' \(expected shape \(64,\)\)"):
        load(tmp_path / "bad.safetensors")


def test_wrong_shape_is_named(tmp_path):
    w = random_weights(VARIANTS["ultraseg-130k"])
    w.tensors["final.0.weight"] = np.zeros((3, 8, 1, 1), np.float32)
    with pytest.raises(WeightsError, match=r"'final.0.weight' has shape \(3, 8, 1, 1\), expected \(2, 8, 1, 1\)"):
        save(tmp_path / "w.safetensors", w)


def test_unknown_format_version_is_refused(tmp_path):
    save(tmp_path / "w.safetensors", random_weights(VARIANTS["ultraseg-108k"]))
    _rewrite_metadata(tmp_path / "w.safetensors", format_version="99")
    with pytest.raises(WeightsError, match="unknown format_version '99'"):
        load(tmp_path / "w.safetensors")


def test_every_shipped_model_loads_by_name_and_carries_its_record():
    """Each file in weights/ loads by name, names its data and splits, carries its test metrics,
    and has a row in the model card."""
    from pathlib import Path

    import npseg
    from npseg.segmenter import bundled_names

    card = (Path(__file__).resolve().parents[1] / "weights" / "README.md").read_text()
    names = bundled_names()
    assert "ultraseg-130k" in names and "ultraseg-108k" in names
    for name in names:
        w = npseg.load(name).weights
        prov = w.provenance
        assert set(prov["splits"]) == set(prov["datasets"]) and prov["epochs_run"] > 0, name
        for dataset, split in prov["splits"].items():
            assert split["test"] and not set(split["test"]) & set(split["train"]), (name, dataset)
        tested = w.metrics["datasets"]
        assert set(tested) <= set(prov["datasets"]) and tested, name
        for m in tested.values():
            assert m["n"] > 0 and 0 <= m["dice"]["mean"] <= 1 and m["npseg_torch_dice_diff"] <= 1e-3, name
        assert f"`{name}.safetensors`" in card, f"{name} has no row in weights/README.md"


@pytest.mark.parametrize("channel", [False, True, 0.0, 1.0, "1"])
def test_output_record_refuses_a_polyp_channel_that_is_not_an_integer(channel):
    """JSON false and 1.0 compare equal to 0 and 1, but index the logits otherwise (found by fuzzing)."""
    from npseg.preprocessing import output_problems

    assert output_problems({"activation": "softmax", "polyp_channel": channel}, 2)
    assert output_problems({"activation": "softmax", "polyp_channel": 1}, 2) == []


@pytest.mark.parametrize("epsilon, valid", [(1.0, True), (0.5, True), (0.0, False), (-1.0, False), ("1", False)])
def test_standardize_record_needs_a_positive_epsilon(epsilon, valid):
    from npseg.preprocessing import preprocessing_problems, standardize

    record = standardize()
    record["normalize"]["epsilon"] = epsilon
    assert (preprocessing_problems(record) == []) == valid
    record["normalize"]["scale"] = 1.0
    assert preprocessing_problems(record)


def test_segmenter_standardizes_each_channel_over_the_resized_frame(tmp_path):
    """normalize {kind: standardize}: x = (pixel - mean[c]) / (std[c] + epsilon) over the resized
    frame, channels in the file's colour order; the fast statistics equal NumPy's."""
    import cv2

    import npseg
    from npseg.preprocessing import PER_IMAGE_KINDS, image_statistics, standardize
    from npseg.segmenter import _frame_statistics

    w = random_weights(VARIANTS["ultraseg-108k"])
    w.preprocessing, w.input_size = standardize(epsilon=2.0), (64, 96)
    save(tmp_path / "w.safetensors", w)
    seg = npseg.load(tmp_path / "w.safetensors", backend="numpy")
    frame = np.random.default_rng(1).integers(0, 256, (120, 170, 3), dtype=np.uint8)
    frame[..., 2] //= 4  # a dark red channel: each channel has its own spread
    small = cv2.resize(frame, (96, 64), interpolation=cv2.INTER_LINEAR)
    rgb = small[:, :, ::-1].transpose(2, 0, 1).astype(np.float64)
    flat = rgb.reshape(3, -1)
    expected = (rgb - flat.mean(1)[:, None, None]) / (flat.std(1)[:, None, None] + 2.0)
    np.testing.assert_allclose(seg.preprocess(frame), expected, atol=1e-5)
    reference = image_statistics(small[:, :, ::-1])
    for kind, keys in (("standardize", ("mean", "std")), ("minmax", ("min", "max"))):
        fast = _frame_statistics(small, True, PER_IMAGE_KINDS[kind])
        assert set(fast) == set(keys)
        for key in keys:
            np.testing.assert_allclose(fast[key], reference[key], rtol=1e-9)
