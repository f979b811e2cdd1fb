"""Every shipped model on one map: test Dice per dataset against one-core milliseconds per frame.

    make pareto                                         # every bundled file, full timing (several minutes)
    python benchmarks/pareto.py --quick                 # fewer frames, one round (under 3 minutes)
    python benchmarks/pareto.py --weights runs/x/best.safetensors ...   # unshipped files on the same map
    python benchmarks/pareto.py --bundled ultraseg-108k --weights ...   # only some bundled files
    python benchmarks/pareto.py --keep benchmarks/results/pareto.json   # keep earlier points whose files are gone

For each weights file: parameters, GFLOPs at 256x256 and at the file's own input size (counted on
the torch module by torch.utils.flop_counter.FlopCounterMode), one-core forward ms at 256x256 for
npseg-numba, ONNX Runtime and torch eager in alternating rounds (the workers and round logic of
benchmarks/speed.py: one pinned process per measurement, one thread, warm-up, medians), npseg's
end-to-end `npseg.load(file).predict(frame)` on a 1280x1024 frame, and the accuracy the file records
(its `metrics`, written by `python -m trainer export --evaluate`). Files sharing an architecture and
input size share one timing: speed depends on the graph, not on the weight values.
Writes benchmarks/results/pareto.json, benchmarks/PARETO.md, benchmarks/pareto.png and the model
choice paragraph of README.md (with --out DIR: the three files in DIR, README untouched).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]  # + this npseg, trainer
import speed  # noqa: E402  (benchmarks/ is not a package)
from results_md import write_part  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SIZE = speed.SIZE
FRAME = (1024, 1280)  # (h, w) of the end-to-end frame; speed.py's e2e worker times it
SIZE_BUCKETS = ("<1%", "1-5%", "5-20%", ">20%")  # trainer.evaluate.SIZE_BUCKETS, by name
HELD_OUT = "held out (mean)"  # the panel of datasets a file never trained on
FLOPS_NOTE = ("GFLOPs: convolutions and matrix products counted by `torch.utils.flop_counter.FlopCounterMode` on "
              "the torch module, one multiply-add = 2 FLOPs; norms, activations, resizes and gates are not counted.")
QUICK_NOTE = ("**Quick run** (`--quick`): few frames and rounds, so the times are indicative only; "
              "`make pareto` times every engine in three alternating rounds.")
MODES = {"full": {"frames": 100, "rounds": 3, "e2e_frames": 60, "e2e_warmup": 10},
         "quick": {"frames": 20, "rounds": 1, "e2e_frames": 10, "e2e_warmup": 3}}


# ---------------------------------------------------------------------------------------------
# what each file is and records
# ---------------------------------------------------------------------------------------------
def weights_files(bundled: list[str] | None, extra: list[str]) -> dict[str, Path]:
    """label -> file: the bundled files by name (all of them when `bundled` is None), then the extra
    files, labelled by their folder and stem (runs/NAME/best.safetensors -> NAME/best)."""
    from npseg.segmenter import bundled_names, resolve_weights

    names = bundled_names() if bundled is None else bundled
    files = {name: resolve_weights(name) for name in names}
    for p in map(Path, extra):
        if not p.is_file():
            raise SystemExit(f"{p}: no such weights file")
        label = f"{p.resolve().parent.name}/{p.stem}"
        if label in files:
            raise SystemExit(f"{p}: a second file labelled {label}; give each file its own folder or name")
        files[label] = p.resolve()
    return files


def recorded_accuracy(w) -> dict:
    """dataset -> {n, dice, iou, by_size (None where the file predates size buckets), held_out}: a
    dataset the file did not train on is a held-out (leave-one-dataset-out) figure."""
    trained_on = set(w.provenance.get("datasets", {}))
    part = w.metrics.get("part")
    out = {}
    for dataset, r in w.metrics.get("datasets", {}).items():
        held_out = dataset not in trained_on
        if not held_out and part != "test":
            continue  # only test-split figures are comparable between files
        sizes = r.get("by_polyp_size")
        out[dataset] = {"n": r["n"], "dice": r["dice"]["mean"], "iou": r["iou"]["mean"], "held_out": held_out,
                        "by_size": {b: sizes[b]["dice"] for b in SIZE_BUCKETS} if sizes else None,
                        "split_sha256": w.provenance.get("split_sha256", {}).get(dataset)}
    return out


def gflops(model, size: tuple[int, int]) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, *size))
    return counter.get_total_flops() / 1e9


def describe(label: str, path: Path) -> dict:
    """The file's architecture, parameters, GFLOPs and recorded accuracy."""
    from npseg.weights import load as load_weights
    from trainer.models import torch_model_from_weights

    w = load_weights(path)
    own = w.input_size
    try:
        model = torch_model_from_weights(path)[0]
    except KeyError:  # npseg has the family, the trainer has no torch module for it
        model = None
    stats = ("running_mean", "running_var")  # stored, not learned (as `npseg info` counts)
    return {"file": str(path), "family": w.family.name, "variant": w.config.name, "config": w.config.to_dict(),
            "input_size": list(own), "trained_on": sorted(w.provenance.get("datasets", {})),
            "parameters": sum(int(t.size) for k, t in w.tensors.items() if not k.endswith(stats)),
            "gflops_256": None if model is None else gflops(model, (SIZE, SIZE)),
            "gflops_own": None if model is None else gflops(model, own),
            "accuracy": recorded_accuracy(w)}


def architecture(m: dict) -> str:
    """What the forward's speed depends on: family and config (and, end to end, the input size)."""
    return json.dumps([m["family"], m["config"]], sort_keys=True)


# ---------------------------------------------------------------------------------------------
# timing (benchmarks/speed.py's pinned workers)
# ---------------------------------------------------------------------------------------------
def time_forward(models: dict, engines: list[str], frames: int, rounds: int, tmp: Path) -> dict:
    """architecture -> speed.py's engine table at SIZE x SIZE, `engines` alternating in `rounds` rounds."""
    from trainer.export import export_onnx
    from trainer.models import torch_model_from_weights

    tables = {}
    for label, m in models.items():
        key = architecture(m)
        if key in tables:
            continue
        onnx = None  # without it speed._time_engines times npseg only
        if engines != ["npseg-numba"] and m["gflops_256"] is not None:  # the trainer has the family
            model = torch_model_from_weights(m["file"])[0]
            onnx = str(export_onnx(model, tmp / f"{len(tables)}.onnx", (SIZE, SIZE)))
        f = {"weights": m["file"], "onnx": {speed._hw(SIZE): onnx}}  # speed keys sizes as (h, w)
        tables[key] = speed._time_engines(label, f, SIZE, speed._runs(engines), frames, rounds, 0)
    return tables


def time_end_to_end(models: dict, frames: int, warmup: int, rounds: int) -> dict:
    """(architecture, input size) -> npseg predict() on a FRAME-sized BGR frame at the file's own size,
    the architectures alternating in `rounds` rounds (neighbours in time share the machine's load)."""
    files: dict[str, tuple[str, str]] = {}
    for label, m in models.items():  # the first file of each architecture and size stands for the others
        files.setdefault(json.dumps([architecture(m), m["input_size"]]), (label, m["file"]))
    wall, cpu, round_cpu = ({key: [] for key in files} for _ in range(3))
    for r in range(rounds):
        for key, (label, path) in files.items():
            d = speed._spawn("e2e", weights=path, frames=max(frames // rounds, 1), warmup=warmup)
            wall[key] += d[f"{FRAME[1]}x{FRAME[0]}"]["predict_ms"]
            cpu[key] += d[f"{FRAME[1]}x{FRAME[0]}"]["predict_cpu_ms"]
            round_cpu[key].append(float(np.median(d[f"{FRAME[1]}x{FRAME[0]}"]["predict_cpu_ms"])))
            print(f"{label} round {r + 1}/{rounds} predict {np.median(wall[key]):.2f} ms, CPU "
                  f"{np.median(cpu[key]):.2f} ms per {FRAME[1]}x{FRAME[0]} frame", flush=True)
    return {key: {"predict_median_ms": float(np.median(wall[key])),
                  "predict_p90_ms": float(np.percentile(wall[key], 90)),
                  "predict_cpu_median_ms": float(np.median(cpu[key])), "round_cpu_medians_ms": round_cpu[key],
                  "frames": len(wall[key])} for key in files}


def attach_timings(models: dict, forward: dict, e2e: dict) -> None:
    for m in models.values():
        table = forward[architecture(m)]
        m["ms_256"] = {e: t["median_ms"] for e, t in table.items()}
        m["cpu_ms_256"] = {e: t["cpu_median_ms"] for e, t in table.items()}
        m["npseg_vs_onnxruntime_cpu_256"] = table["npseg-numba"].get("vs_onnxruntime_cpu")
        m["end_to_end"] = e2e[json.dumps([architecture(m), m["input_size"]])]


# ---------------------------------------------------------------------------------------------
# the map: panels, Pareto fronts, dominance
# ---------------------------------------------------------------------------------------------
def panels(models: dict) -> dict:
    """panel -> {label: Dice}: one panel per test dataset, and HELD_OUT (each file's mean over the
    datasets it did not train on) where any file records one."""
    out: dict[str, dict] = {}
    for label, m in models.items():
        held = [r["dice"] for r in m["accuracy"].values() if r["held_out"]]
        for dataset, r in m["accuracy"].items():
            if not r["held_out"]:
                out.setdefault(dataset, {})[label] = r["dice"]
        if held:
            out.setdefault(HELD_OUT, {})[label] = float(np.mean(held))
    return dict(sorted(out.items(), key=lambda kv: (kv[0] == HELD_OUT, kv[0])))


def pareto_map(dice: dict, ms: dict) -> dict:
    """The front (fastest first) and, for every other model, each front model that dominates it (no
    slower and no less accurate, better in one): how many times as fast and how much more Dice."""
    def dominates(b, a):
        return ms[b] <= ms[a] and dice[b] >= dice[a] and (ms[b] < ms[a] or dice[b] > dice[a])

    front = sorted((k for k in dice if not any(dominates(b, k) for b in dice)), key=lambda k: (ms[k], -dice[k]))
    dominated = {a: [{"by": b, "times_faster": ms[a] / ms[b], "dice_gain": dice[b] - dice[a]}
                     for b in front if dominates(b, a)] for a in dice if a not in front}
    return {"front": front, "dominated": dominated}


def round_spread(models: dict) -> float | None:
    """The largest round-to-round spread (max / min - 1) of a file's predict CPU median; None with one round."""
    spreads = [max(r) / min(r) - 1 for r in (m["end_to_end"]["round_cpu_medians_ms"] for m in models.values())
               if len(r) > 1]
    return max(spreads) if spreads else None


def end_to_end_ms(models: dict) -> dict:
    return {label: m["end_to_end"]["predict_cpu_median_ms"] for label, m in models.items()}


def choice_sentence(maps: dict, dice: dict, ms: dict) -> str:
    """Which model to pick for which time budget, per test panel, from the measured fronts."""
    parts = []
    for panel, pm in maps.items():
        steps = [f"from {ms[k]:.1f} ms `{k}` (Dice {dice[panel][k]:.3f})" for k in pm["front"]]
        parts.append(f"on {panel} " + ", ".join(steps))
    return ("Which model for which time budget (CPU ms of npseg `predict` on a 1280×1024 frame, one core of this "
            "machine; "
            "each step is the most accurate model within that budget, the rest are dominated): "
            + "; ".join(parts) + ".")


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def _num(v, fmt="{:.3f}") -> str:
    return "—" if v is None else fmt.format(v)


def _speed_rows(res: dict) -> list[str]:
    lines = [f"| model | family / variant | input | parameters | GFLOPs {SIZE}² | GFLOPs own size | "
             f"npseg CPU ms {SIZE}² | ONNX Runtime CPU ms {SIZE}² | torch CPU ms {SIZE}² | npseg / ONNX Runtime | "
             f"npseg `predict` {FRAME[1]}×{FRAME[0]}: wall ms (p90) | `predict` CPU ms | trained on | held-out Dice |",
             "|---" * 14 + "|"]
    for label, m in res["models"].items():
        ms, h, w = m["cpu_ms_256"], *m["input_size"]
        e = m["end_to_end"]
        lines.append(
            f"| `{label}` | {m['family']} / {m['variant']} | {w}×{h} | {m['parameters']:,} | "
            f"{_num(m['gflops_256'])} | {_num(m['gflops_own'])} | {ms['npseg-numba']:.2f} | "
            f"{_num(ms.get('onnxruntime'), '{:.2f}')} | {_num(ms.get('torch-eager'), '{:.2f}')} | "
            f"{_num(m['npseg_vs_onnxruntime_cpu_256'], '{:.2f}')} | {e['predict_median_ms']:.2f} "
            f"({e['predict_p90_ms']:.2f}) | {e['predict_cpu_median_ms']:.2f} | {', '.join(m['trained_on']) or '—'} | "
            f"{_num(res['panels'].get(HELD_OUT, {}).get(label), '{:.4f}')} |")
    return lines


def _accuracy_rows(res: dict) -> list[str]:
    lines = ["| model | dataset | figure | n | Dice | IoU | " + " | ".join(f"Dice {b}" for b in SIZE_BUCKETS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(SIZE_BUCKETS)]
    for label, m in res["models"].items():
        if not m["accuracy"]:
            lines.append(f"| `{label}` | — | no metrics recorded: not on the map | — | — | — |"
                         + " — |" * len(SIZE_BUCKETS))
        for dataset, r in m["accuracy"].items():
            sizes = r["by_size"] or {}
            lines.append(f"| `{label}` | {dataset} | {'held out' if r['held_out'] else 'test split'} | {r['n']} | "
                         f"{r['dice']:.4f} | {r['iou']:.4f} | " + " | ".join(_num(sizes.get(b)) for b in SIZE_BUCKETS)
                         + " |")
    return lines


def _speed_gain(times_faster: float, spread: float | None) -> str:
    if times_faster == 1.0:
        return "the same timing"
    noise = spread is None or times_faster - 1 <= spread
    return f"{times_faster:.2f}× as fast" + (", within the timing noise" if noise else "")


def _spread_text(spread: float | None) -> str:
    if spread is None:
        return ("One round, so the timing noise is not measured: every speed difference between files of different "
                "architectures counts as within it below.")
    return (f"Timing noise: the largest round-to-round spread of a file's `predict` CPU median is {spread:.1%}; "
            "speed differences no larger are marked as within it below.")


def _split_line(res: dict, panel: str) -> list[str]:
    """Whether the files of a test panel were scored on the same recorded test split."""
    if panel == HELD_OUT:
        return []
    splits: dict[str, list[str]] = {}
    for label in res["panels"][panel]:
        splits.setdefault(res["models"][label]["accuracy"][panel]["split_sha256"] or "not recorded", []).append(label)
    if len(splits) == 1:
        return [f"Every file here was scored on the same test split (split SHA-256 `{next(iter(splits))}`).", ""]
    return ["The files here were scored on different test splits, so compare them with care: " + "; ".join(
        f"`{sha}`: " + ", ".join(f"`{k}`" for k in labels) for sha, labels in splits.items()) + ".", ""]


def _dominance_lines(res: dict) -> list[str]:
    lines = []
    for panel, pm in res["pareto"].items():
        dice = res["panels"][panel]
        lines += [f"### {panel}", "", *_split_line(res, panel), "Pareto front, fastest first: " + ", ".join(
            f"`{k}` ({res['x_ms'][k]:.2f} ms, Dice {dice[k]:.4f})" for k in pm["front"]) + "."]
        for a, by in pm["dominated"].items():
            lines.append(f"- `{a}` ({res['x_ms'][a]:.2f} ms, Dice {dice[a]:.4f}) is dominated by " + "; ".join(
                f"`{d['by']}` ({_speed_gain(d['times_faster'], res['round_spread'])}, Dice {d['dice_gain']:+.4f})"
                for d in by) + ".")
        lines.append("")
    return lines


def _held_out_note(res: dict) -> str:
    if HELD_OUT in res["panels"]:
        return (f"Held-out (leave-one-dataset-out) figures: the panel `{HELD_OUT}` and the held-out column are "
                "each file's mean Dice over the datasets it records but did not train on; a file that records none "
                "shows — and is not in that panel.")
    return ("No file on this map records a leave-one-dataset-out figure, so the held-out column shows — for every "
            "file and there is no held-out panel. Such figures exist only for the UltraSeg-108K recipe runs in "
            "`docs/lab/generalisation.md`, which are not shipped files.")


def _carried_note(res: dict) -> list[str]:
    carried = {label: m["timed_in"] for label, m in res["models"].items() if "timed_in" in m}
    if not carried:
        return []
    return ["", "Kept from an earlier run (`--keep`; their files are not in this tree): " + "; ".join(
        f"`{label}`, timed in the run of {date}" for label, date in carried.items()) + ". Their times come from that "
        "run, not from this one's rounds."]


def write_markdown(res: dict, path: Path) -> None:
    m, s = res["machine"], res["setup"]
    lines = [
        "# Accuracy against one-core speed, every model", "",
        f"`benchmarks/pareto.py{' --quick' if s['mode'] == 'quick' else ''}`, {res['date']}, {m['cpu']}; "
        f"numba {m['numba']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}. Load average (1 min) before / "
        f"after: {m['load_average_before'][0]:.2f} / {m['load_average_after'][0]:.2f}. Wall time of the whole "
        f"run: {res['wall_s']:.0f} s; {m['logical_cpus']} logical CPUs.", "",
        *([QUICK_NOTE, ""] if s["mode"] == "quick" else []),
        f"Speed: every measurement in its own process pinned to one core (`{s['pinning']}`), one thread everywhere, "
        f"{s['warmup_frames']} warm-up frames; at {SIZE}×{SIZE} the engines alternate in {s['rounds']} round(s) of "
        f"{s['frames_per_round']} frames (medians); npseg `predict` on a {FRAME[1]}×{FRAME[0]} BGR frame (resize, "
        f"normalise, forward at the file's own input size, upsample, threshold) over {s['e2e_frames']} frames, "
        "the files alternating in the same number of rounds. "
        "Files sharing an architecture and input size share one timing (speed depends on the graph, not the "
        "weight values). CPU ms: at 256×256 the CPU time of the one thread each engine runs on, as "
        "`benchmarks/speed.py` measures it; for `predict` that of its process (all threads). Unlike wall time it "
        "leaves out the time other processes held the core: on a shared machine the steadier figure, on a core of "
        "its own the same (wall-time medians are in the JSON). The map's time axis is `predict`'s CPU ms. "
        "Compare ratios rather than absolute times. "
        + _spread_text(res["round_spread"]), "",
        FLOPS_NOTE, "",
        "Accuracy: as each file records it (`metrics`, written by `python -m trainer export --evaluate`): mean "
        "test-split Dice and IoU through npseg at the file's own input size, at the original mask resolution; "
        "Dice by polyp size (the ground-truth mask's share of the frame) where the file records it, — where it "
        "predates the size buckets. " + _held_out_note(res), "",
        "![accuracy against speed](pareto.png)", "",
        "## Speed and size", "", *_speed_rows(res), "",
        "## Recorded accuracy", "", *_accuracy_rows(res), "",
        f"## Where each model is dominated (x: CPU ms of npseg `predict` per {FRAME[1]}×{FRAME[0]} frame)", "",
        "A model is dominated when another is no slower and no less accurate on that panel, and better in one; "
        "each model of the front that dominates it is given with how many times as fast it is and its Dice "
        "difference.", "",
        *_dominance_lines(res), res["choice"], *_carried_note(res)]
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def _label_points(ax, points: dict) -> None:
    """Each point's label to its right; labels of points near in x are stacked away from the nearer edge
    (down in the upper half, up in the lower), joined to their point by a line, so that none overlaps
    another (files of one architecture share an x)."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    frac = {k: (np.log(xv / x0) / np.log(x1 / x0), (yv - y0) / (y1 - y0)) for k, (xv, yv) in points.items()}
    upper = sorted((k for k in frac if frac[k][1] >= 0.5), key=lambda k: -frac[k][1])
    lower = sorted((k for k in frac if frac[k][1] < 0.5), key=lambda k: frac[k][1])
    placed: list[tuple[float, float]] = []  # label positions, in axes fractions
    for label in upper + lower:
        (fx, fy), step = frac[label], -0.045 if label in upper else 0.045
        ty = fy + 0.01
        while any(abs(fx - px) < 0.3 and abs(ty - py) < 0.045 for px, py in placed):
            ty += step
        placed.append((fx, ty))
        ax.annotate(label, points[label], xytext=(fx + 0.02, ty), textcoords="axes fraction", fontsize=7,
                    va="center", arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"} if abs(ty - fy) > 0.04
                    else None)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    names = list(res["panels"])
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 5 * rows), squeeze=False, sharex=True)
    for ax in axes.flat[len(names):]:
        ax.remove()
    families = sorted({m["family"] for m in res["models"].values()})
    colour = {f: plt.get_cmap("tab10")(i) for i, f in enumerate(families)}
    x = res["x_ms"]
    for ax, panel in zip(axes.flat, names):
        dice, front = res["panels"][panel], res["pareto"][panel]["front"]
        for label, d in dice.items():
            on_front = label in front
            ax.scatter(x[label], d, s=60 if on_front else 35, color=colour[res["models"][label]["family"]],
                       edgecolor="black" if on_front else "none", zorder=3)
        ax.step([x[k] for k in front], [dice[k] for k in front], where="post", color="grey", lw=1, zorder=2)
        ax.set_xscale("log")
        ax.margins(x=0.2, y=0.1)  # room for the labels
        _label_points(ax, {label: (x[label], d) for label, d in dice.items()})
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(FormatStrFormatter("%g"))  # a narrow range has no major tick inside
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(f"npseg predict, CPU ms per {FRAME[1]}x{FRAME[0]} frame, one core (log)")
        ax.set_ylabel("mean Dice" + (" (held-out datasets)" if panel == HELD_OUT else " (test split)"))
        ax.set_title(panel)
        ax.grid(True, which="both", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colour[f], label=f) for f in families]
    handles.append(plt.Line2D([], [], color="grey", label="Pareto front"))
    fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=len(handles))  # below: never over a label
    fig.tight_layout(rect=(0, 0.05 / rows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def carried_over(path: Path, labels) -> dict:
    """The models of an earlier run's pareto.json that this run does not map, with their recorded
    accuracy and timings and the date of that run (for files no longer at hand, e.g. run outputs)."""
    old = json.loads(path.read_text())
    return {label: {**m, "timed_in": m.get("timed_in", old["date"])}
            for label, m in old["models"].items() if label not in labels}


def run(files: dict, mode: dict, engines: list[str], tmp: Path, keep: Path | None = None) -> dict:
    start, load_before = time.perf_counter(), os.getloadavg()
    models = {label: describe(label, path) for label, path in files.items()}
    forward = time_forward(models, engines, mode["frames"], mode["rounds"], tmp)
    e2e = time_end_to_end(models, mode["e2e_frames"], mode["e2e_warmup"], mode["rounds"])
    attach_timings(models, forward, e2e)
    if keep is not None:
        models.update(carried_over(keep, models))
    dice, x = panels(models), end_to_end_ms(models)
    maps = {panel: pareto_map(d, x) for panel, d in dice.items()}
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {**speed._machine(load_before), "logical_cpus": os.cpu_count()},
            "wall_s": time.perf_counter() - start,
            "setup": {"mode": mode["name"], "pinning": f"taskset -c {speed.CORE}", "threads": 1,
                      "frames_per_round": mode["frames"], "rounds": mode["rounds"],
                      "warmup_frames": 20,  # speed._time_engines' warm-up
                      "e2e_frames": mode["e2e_frames"], "flops": FLOPS_NOTE,
                      "x": f"npseg predict median CPU ms (the process's), {FRAME[1]}x{FRAME[0]} BGR frame, the file's "
                           "own input size"},
            "models": models, "panels": dice, "x_ms": x, "pareto": maps, "round_spread": round_spread(models),
            "choice": choice_sentence({p: m for p, m in maps.items() if p != HELD_OUT}, dice, x)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer frames, one round (a few minutes)")
    ap.add_argument("--bundled", nargs="*", metavar="NAME", help="bundled files to map (default: all; none: "
                    "--bundled with no name)")
    ap.add_argument("--weights", nargs="+", default=[], metavar="PATH", help="more weights files to map")
    ap.add_argument("--engines", nargs="+", choices=speed.DEPLOYABLE, default=list(speed.DEPLOYABLE),
                    help="engines timed at 256x256 (default: all three; npseg-numba is always timed)")
    ap.add_argument("--frames", type=int, help="timed frames per engine per round (default: the mode's)")
    ap.add_argument("--rounds", type=int, help="alternating rounds (default: the mode's)")
    ap.add_argument("--core", type=int, default=speed.CORE, help="CPU core to pin every measurement to")
    ap.add_argument("--out", type=Path, help="write pareto.json, PARETO.md and pareto.png here (README untouched)")
    ap.add_argument("--keep", type=Path, metavar="JSON", help="an earlier pareto.json: its models that this run does "
                    "not map stay on the map with their recorded timings (marked with that run's date)")
    args = ap.parse_args(argv)
    speed.CORE = args.core
    name = "quick" if args.quick else "full"
    mode = {**MODES[name], "name": name}
    if args.frames:
        mode.update(frames=args.frames, e2e_frames=args.frames)
    if args.rounds:
        mode.update(rounds=args.rounds)
    files = weights_files(args.bundled, args.weights)
    if not files:
        raise SystemExit("no weights files to map")
    with tempfile.TemporaryDirectory() as tmp:
        res = run(files, mode, sorted(set(args.engines) | {"npseg-numba"}, key=speed.DEPLOYABLE.index), Path(tmp),
                  args.keep)
    json_path, md_path, png_path = ((args.out / "pareto.json", args.out / "PARETO.md", args.out / "pareto.png")
                                    if args.out else (HERE / "results" / "pareto.json", HERE / "PARETO.md",
                                                      HERE / "pareto.png"))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(res, indent=1))
    write_markdown(res, md_path)
    plot(res, png_path)
    if not args.out:
        write_part("pareto", f"![accuracy against one-core speed](benchmarks/pareto.png)\n\n{res['choice']}",
                   REPO / "README.md")
    print(f"wrote {json_path}, {md_path}, {png_path} in {res['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
