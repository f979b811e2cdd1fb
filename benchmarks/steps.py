"""Where npseg-numba's forward time goes: every plan step timed on its own, one core.

    taskset -c 0 python benchmarks/steps.py                 # every bundled model variant, 256x256
    taskset -c 0 python benchmarks/steps.py --weights ultraseg-130k --frames 300

Runs the plan's steps one by one (after warm-up), takes the mean per step, and
groups the steps by kernel. Times are this thread's CPU time (time.thread_time), so
preemption by other processes on a shared machine does not count; the per-step sum is a
little above the forward time (each timer call adds about a microsecond). Writes
benchmarks/results/steps-<model>.json, prints a table (GFLOP/s for the convolution steps
whose FLOPs are known from their operand shapes) and, profiling every bundled model,
writes its part of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import npseg  # noqa: E402
from results_md import write_part  # noqa: E402  (benchmarks/ is on sys.path when this script runs)
from speed import _cpu_name, bundled_models  # noqa: E402


def _kernel_name(step) -> str:
    fn = step.func if isinstance(step, partial) else step
    return getattr(fn, "__name__", None) or getattr(getattr(fn, "py_func", None), "__name__", repr(fn))


def _operands(step) -> list[tuple[int, ...]]:
    args = step.args if isinstance(step, partial) else ()
    return [tuple(a.shape) for a in args if isinstance(a, np.ndarray) and a.ndim >= 2]


def _flops(name: str, shapes: list[tuple[int, ...]]) -> float | None:
    """Multiply-adds x 2 for GEMMs and direct 3x3 convs (out = 2nd 4-d operand's Cout x its taps x pixels)."""
    if name == "dot" and len(shapes) >= 2:
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2.0 * m * k * n
    if name == "conv3x3_nb" and len(shapes) >= 3:
        cout, cin_g, kh, kw = shapes[1]
        return 2.0 * cout * cin_g * kh * kw * int(np.prod(shapes[2][1:]))
    return None


def profile(weights: str, size: int, frames: int, warmup: int) -> dict:
    engine = npseg.load(weights, backend="numba", size=size)._engine
    np.copyto(engine.input_buffer(size, size), np.random.default_rng(0).random((3, size, size), dtype=np.float32))
    for _ in range(warmup):
        engine.run_input(size, size)
    plan = engine.plan(size, size)
    total = np.zeros(len(plan.steps))
    for _ in range(frames):
        for i, step in enumerate(plan.steps):
            t = time.thread_time()
            step()
            total[i] += time.thread_time() - t
    ms = total / frames * 1e3
    forward = []
    for _ in range(frames):
        t = time.thread_time()
        engine.run_input(size, size)
        forward.append((time.thread_time() - t) * 1e3)
    steps = []
    for i, (step, t) in enumerate(zip(plan.steps, ms)):
        name, shapes = _kernel_name(step), _operands(step)
        flops = _flops(name, shapes)
        steps.append({"index": i, "kernel": name, "operands": ["x".join(map(str, sh)) for sh in shapes],
                      "ms": float(t),
                      "gflops": None if flops is None else flops / (t * 1e6)})
    by_kernel = collections.defaultdict(lambda: {"ms": 0.0, "steps": 0})
    for s in steps:
        by_kernel[s["kernel"]]["ms"] += s["ms"]
        by_kernel[s["kernel"]]["steps"] += 1
    return {"weights": Path(weights).name, "input": f"3x{size}x{size}", "frames": frames, "machine": _cpu_name(),
            "forward_median_ms": float(np.median(forward)), "steps_sum_ms": float(ms.sum()),
            "by_kernel": dict(sorted(by_kernel.items(), key=lambda kv: -kv[1]["ms"])), "steps": steps}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="a bundled model name or weights file (default: every bundled variant)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--top", type=int, default=12, help="slowest steps to print")
    args = ap.parse_args(argv)
    results = [profile(w, args.size, args.frames, args.warmup)
               for w in ([args.weights] if args.weights else [str(p) for p in bundled_models().values()])]
    for res in results:
        _report(res, args.top)
    if not args.weights:  # the bundled models' profiles go to RESULTS.md
        write_part("steps", _markdown(results))


STEPS_NOTES = (
    "Where the remaining time goes: the convolutions are at or near their arithmetic bound under the fixed "
    "summation order the numerical budget asks for (`benchmarks/RESULTS.md`, speed part: Winograd's row "
    "filters now three FMAs per three taps, the direct and stride-2 convs one more operation per tap group); "
    "the GEMMs are OpenBLAS's single-thread sgemm at these small shapes; the first layer is a statistics pass "
    "and a folded 4x4 stride-2 conv; about a fifth are memory passes (pads, GroupNorm statistics, GSA norms, "
    "resizes, gate heads, merges, adds), each a few percent at most.")


def _markdown(results: list[dict]) -> str:
    lines = ["## Where npseg-numba's forward time goes (`benchmarks/steps.py`)", "",
             f"Every plan step timed on its own in the CPU time of its thread, {results[0]['frames']} frames after "
             f"warm-up, {results[0]['input']}, {results[0]['machine']}, load average {os.getloadavg()[0]:.1f} "
             "(a busy machine also slows a thread's own CPU time: compare the shares). Per step: "
             "`benchmarks/results/steps-<model>.json`.", ""]
    for res in results:
        lines += [f"{Path(res['weights']).stem}: forward median {res['forward_median_ms']:.2f} ms CPU, "
                  f"{len(res['steps'])} steps.", "", "| kernel | steps | ms | share |", "|---|---|---|---|"]
        lines += [f"| {name} | {k['steps']} | {k['ms']:.3f} | {k['ms'] / res['steps_sum_ms']:.0%} |"
                  for name, k in res["by_kernel"].items()]
        lines.append("")
    return "\n".join(lines + [STEPS_NOTES])


def _report(res: dict, top: int) -> None:
    out = HERE / "results" / f"steps-{Path(res['weights']).stem}.json"
    out.parent.mkdir(exist_ok=True)
    # one line per step: the file stays diffable without a line per dimension
    body = json.dumps({k: v for k, v in res.items() if k != "steps"}, indent=1)[:-2]
    out.write_text(body + ',\n "steps": [\n' + ",\n".join("  " + json.dumps(s) for s in res["steps"]) + "\n ]\n}\n")
    print(f"{res['weights']} {res['input']}: forward median {res['forward_median_ms']:.2f} ms, "
          f"sum of {len(res['steps'])} steps {res['steps_sum_ms']:.2f} ms")
    print("| kernel | steps | ms | share |\n|---|---|---|---|")
    for name, k in res["by_kernel"].items():
        print(f"| {name} | {k['steps']} | {k['ms']:.3f} | {k['ms'] / res['steps_sum_ms']:.0%} |")
    print(f"\nslowest {top} steps:")
    for s in sorted(res["steps"], key=lambda s: -s["ms"])[:top]:
        rate = "" if s["gflops"] is None else f" {s['gflops']:.0f} GFLOP/s"
        print(f"  #{s['index']:<3d} {s['kernel']:22s} {s['ms']:.3f} ms{rate}  {s['operands']}")
    print(f"wrote {out}\n")


if __name__ == "__main__":
    main()
