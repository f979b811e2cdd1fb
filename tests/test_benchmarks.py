"""The accuracy benchmark on a few real test images: every engine scores the shipped model alike,
and the report and plot are written."""
from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def _accuracy_script():
    spec = importlib.util.spec_from_file_location("accuracy", REPO / "benchmarks" / "accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_benchmark_engines_agree(data_dir, tmp_path):
    acc = _accuracy_script()
    model = acc.evaluate_model("ultraseg-130k-kvasir", data_dir, limit=2, tmp=tmp_path)
    r = model["datasets"]["kvasir-seg"]
    assert r["n"] == 2 and r["paper_dice"] == acc.PAPER_DICE[("ultraseg-130k", "kvasir-seg")]
    dice = {e: r["engines"][e]["dice"]["mean"] for e in acc.ENGINES}
    assert max(dice.values()) - min(dice.values()) < 1e-3, dice
    assert r["engines"]["npseg-numba"]["max_abs_logit_diff_vs_torch"] < 1e-3
    res = {"date": "now", "limit": 2, "engines": list(acc.ENGINES), "models": {"ultraseg-130k-kvasir": model}}
    acc.write_markdown(res, tmp_path / "ACCURACY.md")
    acc.plot(res, tmp_path / "accuracy.png")
    text = (tmp_path / "ACCURACY.md").read_text()
    assert "`ultraseg-130k-kvasir` | kvasir-seg | 2 |" in text
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
