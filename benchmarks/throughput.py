"""Throughput of `npseg segment FOLDER --jobs N`: images per second for each N, and the scaling.

    python benchmarks/throughput.py                      # N = 1 and 2, 200 Kvasir-SEG images, 3 rounds
    python benchmarks/throughput.py --jobs 1 2 4 --images 200

The runs alternate (N = 1, 2, 1, 2, ...) on the same images with Numba's cache warm
(`npseg warmup` first). Images per second is what `npseg segment` reports: decoding,
predict and writing both outputs, after the model is loaded and warm. Writes
benchmarks/results/throughput.json and its part of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from results_md import write_part  # noqa: E402
from speed import _cpu_name  # noqa: E402

IMAGES = REPO.parent / "shared" / "data" / "kvasir-seg" / "images"


def _images_per_second(folder: Path, jobs: int, limit: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "npseg", "segment", str(folder), "--jobs", str(jobs), "--limit", str(limit),
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return float(re.search(r"([0-9.]+) images/s", proc.stdout).group(1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--folder", type=Path, default=IMAGES)
    args = ap.parse_args(argv)
    subprocess.run([sys.executable, "-m", "npseg", "warmup", "ultraseg-130k"], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    load_before = os.getloadavg()[0]
    rates: dict[int, list[float]] = {n: [] for n in args.jobs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in args.jobs:
                rates[n].append(_images_per_second(args.folder, n, args.images, Path(tmp) / f"out-{n}-{r}"))
                print(f"round {r + 1}/{args.rounds} --jobs {n}: {rates[n][-1]:.1f} images/s", flush=True)
    base = float(np.median(rates[args.jobs[0]]))
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "cpu": _cpu_name(),
           "cpus": os.cpu_count(), "images": args.images, "rounds": args.rounds, "load_before": load_before,
           "load_after": os.getloadavg()[0],
           "jobs": {n: {"images_per_s": rs, "median": float(np.median(rs)), "scaling": float(np.median(rs)) / base}
                    for n, rs in rates.items()}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "throughput.json").write_text(json.dumps(res, indent=1))
    lines = ["## Throughput on more cores: `npseg segment FOLDER --jobs N`", "",
             f"`benchmarks/throughput.py`, {res['date']}, {res['cpu']}, {res['cpus']} CPUs; UltraSeg-130K at its own "
             f"input size, {args.images} Kvasir-SEG images (decode, predict, write mask and overlay), {args.rounds} "
             f"alternating rounds, medians; load average {load_before:.1f} before, {res['load_after']:.1f} after "
             "(other processes share these cores: the scaling is a lower bound).", "",
             "| --jobs | images/s | scaling |", "|---|---|---|"]
    lines += [f"| {n} | {d['median']:.1f} | {d['scaling']:.2f}× |" for n, d in res["jobs"].items()]
    write_part("jobs", "\n".join(lines))


if __name__ == "__main__":
    main()
