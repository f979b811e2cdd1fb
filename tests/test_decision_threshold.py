"""The decision threshold a weights file may record: checked at load, applied by predict(), the
video stream and the torch cross-check alike, and chosen on validation frames by
`python -m trainer calibrate` (which never writes over a file)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from npseg.preprocessing import decision_threshold, output_problems, polyp_mask, polyp_probability


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5, -0.2, math.nan, True, "0.3", 1])
def test_output_record_refuses_a_threshold_that_is_not_a_probability_strictly_inside(threshold):
    assert output_problems({"activation": "softmax", "polyp_channel": 1, "threshold": threshold}, 2)


def test_output_record_takes_a_threshold_and_nothing_else_new():
    assert output_problems({"activation": "softmax", "polyp_channel": 1, "threshold": 0.3}, 2) == []
    assert output_problems({"activation": "sigmoid", "polyp_channel": 0, "threshold": 0.7}, 1) == []
    assert output_problems({"activation": "softmax", "polyp_channel": 1, "cutoff": 0.3}, 2)
    assert decision_threshold({"activation": "softmax", "polyp_channel": 1}) == 0.5


@pytest.mark.parametrize("activation, channels", [("softmax", 2), ("sigmoid", 1)])
@pytest.mark.parametrize("threshold", [0.2, 0.35, 0.5, 0.8])
def test_the_mask_on_the_logits_is_the_probability_above_the_threshold(activation, channels, threshold):
    out = {"activation": activation, "polyp_channel": channels - 1, "threshold": threshold}
    logits = np.random.default_rng(0).normal(0, 3, (channels, 64, 64)).astype(np.float32)
    prob = polyp_probability(logits, out)
    near = np.abs(prob - threshold) < 1e-5  # float32 rounding decides these either way
    assert np.array_equal(polyp_mask(logits, out)[~near], (prob > threshold)[~near])
    assert near.mean() < 0.01


def test_predict_and_the_video_stream_use_the_file_threshold(tmp_path):
    from dataclasses import replace

    import npseg
    from npseg.video import MaskStream
    from npseg.weights import save

    base = npseg.load("ultraseg-130k", backend="numpy", size=64)
    path = tmp_path / "t.safetensors"
    save(path, replace(base.weights, output={**base.weights.output, "threshold": 0.2}))
    model = npseg.load(path, backend="numpy", size=64)
    frame = np.random.default_rng(1).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    assert np.array_equal(model.predict(frame), model.predict(frame, threshold=0.2))
    assert np.array_equal(MaskStream(model, smooth=0.3).next(frame),
                          (polyp_probability(model.logits(frame), model.weights.output) > 0.2).astype(np.uint8))


def test_choose_takes_the_best_mean_and_breaks_ties_towards_one_half():
    from trainer.calibrate import choose

    grid = (0.3, 0.4, 0.5, 0.6)
    assert choose({"a": {"dice": [0.5, 0.7, 0.6, 0.5]}, "b": {"dice": [0.5, 0.5, 0.5, 0.5]}}, grid) == 0.4
    assert choose({"a": {"dice": [0.7, 0.6, 0.6, 0.6]}, "b": {"dice": [0.5, 0.6, 0.6, 0.6]}}, grid) == 0.5


def test_calibrate_records_a_threshold_chosen_on_validation_frames(data_dir, tmp_path):
    pytest.importorskip("torch")
    from test_trainer_cli import one_line_error, trainer

    import npseg
    from conftest import REPO

    out = tmp_path / "cal.safetensors"
    args = ["calibrate", REPO / "weights" / "ultraseg-130k.safetensors", "--data", data_dir / "kvasir-seg",
            data_dir / "cvc-clinicdb", "-o", out, "--limit", "2"]
    done = trainer(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    w = npseg.load(out).weights
    record = w.provenance["decision_threshold"]
    assert w.output["threshold"] in record["grid"] and record["chosen_on"] == "validation splits"
    assert set(record["validation"]) == {"kvasir-seg", "cvc-clinicdb"} and w.metrics == {}
    assert f"decision threshold {w.output['threshold']}" in done.stdout
    one_line_error(trainer(*args, cwd=tmp_path), "exists")  # never over a file
