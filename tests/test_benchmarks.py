"""The accuracy benchmark on a few real test images: every engine scores the shipped model alike,
and the report and plot are written. The accuracy-against-speed map: its dominance arithmetic, and
a quick run on one bundled file whose JSON, Markdown page and plot parse."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


def _benchmark_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_accuracy_benchmark_engines_agree(data_dir, tmp_path):
    acc = _benchmark_script("accuracy")
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


def test_pareto_front_and_dominance():
    pareto = _benchmark_script("pareto")
    dice = {"fast": 0.70, "slow-better": 0.80, "slow-worse": 0.65, "same-speed-worse": 0.69}
    ms = {"fast": 5.0, "slow-better": 10.0, "slow-worse": 20.0, "same-speed-worse": 5.0}
    res = pareto.pareto_map(dice, ms)
    assert res["front"] == ["fast", "slow-better"]
    assert [d["by"] for d in res["dominated"]["slow-worse"]] == ["fast", "slow-better"]
    by_fast = res["dominated"]["slow-worse"][0]
    assert by_fast["times_faster"] == pytest.approx(4.0) and by_fast["dice_gain"] == pytest.approx(0.05)
    assert res["dominated"]["same-speed-worse"] == [{"by": "fast", "times_faster": 1.0,
                                                     "dice_gain": pytest.approx(0.01)}]


def test_pareto_quick_map_of_one_bundled_file(tmp_path):
    """npseg only and 3 frames: the smallest run through every part (workers, FLOPs, outputs)."""
    pareto = _benchmark_script("pareto")
    pareto.main(["--quick", "--bundled", "ultraseg-108k", "--frames", "3", "--engines", "npseg-numba",
                 "--out", str(tmp_path)])
    res = json.loads((tmp_path / "pareto.json").read_text())
    m = res["models"]["ultraseg-108k"]
    assert m["parameters"] > 100_000 and 0 < m["gflops_256"] < m["gflops_own"]
    assert m["ms_256"]["npseg-numba"] > 0 and m["end_to_end"]["predict_median_ms"] > 0
    assert set(res["panels"]) == {"kvasir-seg", "polypgen", "cvc-clinicdb"}
    assert res["pareto"]["kvasir-seg"]["front"] == ["ultraseg-108k"]
    page = (tmp_path / "PARETO.md").read_text()
    assert "| `ultraseg-108k` | kvasir-seg | test split | 200 |" in page and "Pareto front" in page
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_reads_test_and_held_out_figures():
    """A dataset the file did not train on is a held-out figure (its own panel, a mean per file);
    files without size buckets show none; a file without metrics is on no panel."""
    from types import SimpleNamespace

    pareto = _benchmark_script("pareto")
    buckets = {b: {"n": 1, "dice": 0.5} for b in pareto.SIZE_BUCKETS}

    def scores(dice, sizes=None):
        return {"n": 10, "dice": {"mean": dice}, "iou": {"mean": dice - 0.1},
                **({"by_polyp_size": sizes} if sizes else {})}

    loo = SimpleNamespace(provenance={"datasets": {"kvasir-seg": "", "polypgen": ""}},
                          metrics={"part": "all", "datasets": {"cvc-clinicdb": scores(0.6, buckets)}})
    old = SimpleNamespace(provenance={"datasets": {"kvasir-seg": ""}},
                          metrics={"part": "test", "datasets": {"kvasir-seg": scores(0.8)}})
    acc = {name: pareto.recorded_accuracy(w) for name, w in (("loo", loo), ("old", old))}
    assert acc["loo"]["cvc-clinicdb"]["held_out"] and acc["loo"]["cvc-clinicdb"]["by_size"]["<1%"] == 0.5
    assert not acc["old"]["kvasir-seg"]["held_out"] and acc["old"]["kvasir-seg"]["by_size"] is None
    models = {name: {"accuracy": a} for name, a in acc.items()} | {"unscored": {"accuracy": {}}}
    assert pareto.panels(models) == {"kvasir-seg": {"old": 0.8}, pareto.HELD_OUT: {"loo": 0.6}}


def test_pareto_keeps_earlier_points_marked(tmp_path):
    """--keep: models of an earlier map that this run does not time stay, with the date they were timed."""
    pareto = _benchmark_script("pareto")
    old = {"date": "2026-12-07T04:00:00+00:00",
           "models": {"gone": {"file": "runs/x.safetensors"}, "mapped": {"file": "weights/y.safetensors"}}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    kept = pareto.carried_over(tmp_path / "old.json", {"mapped"})
    assert kept == {"gone": {"file": "runs/x.safetensors", "timed_in": old["date"]}}
    note = pareto._carried_note({"models": {**kept, "mapped": {}}})
    assert len(note) == 2 and "`gone`, timed in the run of 2026-12-07T04:00:00+00:00" in note[1]
