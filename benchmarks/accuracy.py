"""Test-split accuracy of the shipped models through each engine, on the same weights.

    python benchmarks/accuracy.py                   # every bundled model, all test images (~10 min)
    python benchmarks/accuracy.py --limit 20        # quick look: first 20 test images per dataset

For each bundled weights file and each dataset in its recorded splits, every test image is
preprocessed once (npseg's preprocessing, the training one) and segmented by npseg-numba
(`Segmenter.predict`, the deployed path), the NumPy reference, torch eager and ONNX Runtime
(the torch model exported on the same tensors): argmax of the two logits at the model's input
size, nearest resize to the image. Dice, IoU and HD95 are per image at the original mask resolution
(`trainer.evaluate`), next to the paper's numbers. Engines are also compared directly: the
largest logit difference from torch and the images whose masks differ from npseg-numba's.
One thread everywhere; pin it with `taskset -c 0` on a shared machine. Writes
benchmarks/results/accuracy.json, benchmarks/ACCURACY.md and benchmarks/accuracy.png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import tempfile
import time
from pathlib import Path

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
ENGINES = ("npseg-numba", "npseg-numpy", "torch-eager", "onnxruntime")
# UltraSeg paper, per-dataset models on its own splits (Dice)
PAPER_DICE = {("ultraseg-130k", "kvasir-seg"): 0.7489, ("ultraseg-130k", "polypgen"): 0.6826,
              ("ultraseg-108k", "kvasir-seg"): 0.7516, ("ultraseg-108k", "polypgen"): 0.6496}


def _runtimes(weights_path: Path, input_size: tuple[int, int], tmp: Path) -> dict:
    """torch and ONNX Runtime on the weights: name -> callable(preprocessed [3, H, W] float32) -> logits [2, H, W]."""
    import onnxruntime as ort
    import torch

    from trainer.models import torch_model_from_weights
    from trainer.export import export_onnx

    torch.set_num_threads(1)
    model = torch_model_from_weights(weights_path)[0]
    opts = ort.SessionOptions()  # default graph optimisations, as a user would run it
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    onnx_path = export_onnx(model, tmp / (weights_path.stem + ".onnx"), input_size)
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    def torch_logits(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)[None])[0].numpy()

    return {"torch-eager": torch_logits, "onnxruntime": lambda x: sess.run(None, {"x": x[None]})[0][0]}


def evaluate_model(name: str, data_dir: Path, limit: int | None, tmp: Path) -> dict:
    import npseg

    from trainer import data as D
    from trainer.evaluate import dice_iou, hd95

    seg = npseg.load(name, backend="numba")
    reference = npseg.load(name, backend="numpy")
    runtimes = _runtimes(Path(seg.weights.path), seg.input_size, tmp)
    splits = seg.weights.provenance["splits"]
    out = {}
    for dataset, split in splits.items():
        root = data_dir / dataset
        pairs = {p.stem: p for p in D.list_pairs(root)}
        stems = split["test"][:limit] if limit else split["test"]
        scores = {e: {"dice": [], "iou": [], "hd95": []} for e in ENGINES}
        max_logit_diff = {e: 0.0 for e in ENGINES}
        masks_differ = {e: 0 for e in ENGINES}
        t0 = time.time()
        for stem in stems:
            frame, gt = D.read_pair(pairs[stem])
            x = seg.preprocess(frame)
            logits = {e: np.asarray(run(x), np.float64) for e, run in runtimes.items()}
            logits["npseg-numba"] = np.asarray(seg.logits(frame), np.float64)
            logits["npseg-numpy"] = np.asarray(reference.logits(frame), np.float64)
            deployed = seg.predict(frame)
            deployed_scores = (*dice_iou(deployed, gt), hd95(deployed, gt))
            for e in ENGINES:
                metrics = deployed_scores
                if e != "npseg-numba":
                    small = (logits[e][1] > logits[e][0]).astype(np.uint8)
                    pred = cv2.resize(small, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST)
                    if not np.array_equal(pred, deployed):  # else the same scores (HD95 is slow at full size)
                        masks_differ[e] += 1
                        metrics = (*dice_iou(pred, gt), hd95(pred, gt))
                for m, v in zip(("dice", "iou", "hd95"), metrics):
                    scores[e][m].append(v)
                max_logit_diff[e] = max(max_logit_diff[e], float(np.abs(logits[e] - logits["torch-eager"]).max()))
        out[dataset] = {
            "n": len(stems),
            "seconds": round(time.time() - t0, 1),
            "paper_dice": PAPER_DICE.get((seg.config.name, dataset)),
            "engines": {e: {**{m: {"mean": float(np.mean(v)), "std": float(np.std(v))} for m, v in scores[e].items()},
                            "max_abs_logit_diff_vs_torch": max_logit_diff[e],
                            "images_whose_mask_differs_from_npseg_numba": masks_differ[e]} for e in ENGINES},
        }
        print(f"{name} {dataset}: n {len(stems)}, Dice " + ", ".join(
            f"{e} {np.mean(scores[e]['dice']):.4f}" for e in ENGINES), flush=True)
    return {"variant": seg.config.name, "trained_on": sorted(seg.weights.provenance.get("datasets", {})),
            "datasets": out}


def write_markdown(res: dict, path: Path) -> None:
    lines = [
        "# Accuracy", "",
        f"`benchmarks/accuracy.py`, {res['date']}: every bundled model on the test part of each dataset "
        "in its recorded splits" + (f" (first {res['limit']} images per dataset)" if res["limit"] else "") +
        ". Same weights and preprocessing for every engine; argmax at each model's input size, nearest "
        "resize to the image; per-image metrics at the original mask resolution (empty-mask rules: "
        "`trainer/evaluate.py`). "
        "The paper's numbers are its own models on its own splits: compare in kind.", "",
        "## Test Dice by engine", "",
        "| model | test set | n | npseg-numba | npseg-numpy | torch-eager | onnxruntime | IoU (npseg) | "
        "HD95 px (npseg) | paper Dice |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in res["models"].items():
        for dataset, r in m["datasets"].items():
            e = r["engines"]
            paper = f"{r['paper_dice']:.4f}" if r["paper_dice"] else "-"
            lines.append(f"| `{name}` | {dataset} | {r['n']} | " + " | ".join(
                f"{e[k]['dice']['mean']:.4f}" for k in ENGINES) +
                f" | {e['npseg-numba']['iou']['mean']:.4f} | {e['npseg-numba']['hd95']['mean']:.1f} | {paper} |")
    lines += ["", "## Engines against each other", "",
              "Largest |logit difference| from torch over the test images, and the images whose mask "
              "differs from npseg-numba's by at least one pixel.", "",
              "| model | test set | npseg-numba | npseg-numpy | onnxruntime | masks differing (numpy / torch / ORT) |",
              "|---|---|---|---|---|---|"]
    for name, m in res["models"].items():
        for dataset, r in m["datasets"].items():
            e = r["engines"]
            differ = " / ".join(str(e[k]["images_whose_mask_differs_from_npseg_numba"])
                                for k in ("npseg-numpy", "torch-eager", "onnxruntime"))
            lines.append(f"| `{name}` | {dataset} | " + " | ".join(
                f"{e[k]['max_abs_logit_diff_vs_torch']:.1e}" for k in ("npseg-numba", "npseg-numpy", "onnxruntime"))
                + f" | {differ} of {r['n']} |")
    worst = {k: max(r["engines"][k]["max_abs_logit_diff_vs_torch"] for m in res["models"].values()
                    for r in m["datasets"].values()) for k in ("npseg-numba", "npseg-numpy", "onnxruntime")}
    lines += ["", f"Over every model and test image the largest logit difference from torch is "
              f"{worst['npseg-numba']:.1e} for npseg-numba, {worst['npseg-numpy']:.1e} for the NumPy reference "
              f"(which computes in float64, so this is mostly torch's own float32 rounding) and "
              f"{worst['onnxruntime']:.1e} for ONNX Runtime (default session options)."]
    path.write_text("\n".join(lines) + "\n")


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{name.replace('ultraseg-', '')}\n{dataset}", r) for name, m in res["models"].items()
            for dataset, r in m["datasets"].items()]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(rows)), 4.5))
    width = 0.8 / len(ENGINES)
    for i, engine in enumerate(ENGINES):
        xs = np.arange(len(rows)) + (i - (len(ENGINES) - 1) / 2) * width
        ax.bar(xs, [r["engines"][engine]["dice"]["mean"] for _, r in rows], width, label=engine)
    paper = [(k, r["paper_dice"]) for k, (_, r) in enumerate(rows) if r["paper_dice"]]
    ax.scatter([k for k, _ in paper], [v for _, v in paper], marker="_", s=600, color="black", zorder=3,
               label="paper (own split)")
    ax.set_xticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean test Dice")
    ax.set_title("Shipped models, test splits, by engine")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    from npseg.segmenter import bundled_names

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"),
                    help="folder holding the datasets named in the splits (default ../shared/data)")
    ap.add_argument("--models", nargs="+", default=None, help="bundled model names (default: all)")
    ap.add_argument("--limit", type=int, default=None, help="first N test images per dataset (quick look)")
    args = ap.parse_args(argv)
    data_dir = Path(args.data)
    if not data_dir.is_dir():
        raise SystemExit(f"{data_dir}: no such folder; pass --data FOLDER holding kvasir-seg/ and polypgen/")
    models = args.models or bundled_names()
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "limit": args.limit,
           "engines": list(ENGINES), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            res["models"][name] = evaluate_model(name, data_dir, args.limit, Path(tmp))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "accuracy.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, HERE / "ACCURACY.md")
    plot(res, HERE / "accuracy.png")
    print(f"wrote {RESULTS / 'accuracy.json'}, {HERE / 'ACCURACY.md'}, {HERE / 'accuracy.png'}")


if __name__ == "__main__":
    main()
