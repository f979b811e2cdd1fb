"""Single-core speed of npseg against the runtimes a user could install instead.

    OPENBLAS_NUM_THREADS=1 python benchmarks/speed.py            # full run (several minutes)
    python benchmarks/speed.py --frames 60 --rounds 2            # quick look
    python benchmarks/speed.py --cpu-proxy                       # older / low-power x86 CPUs, as a proxy
    python benchmarks/speed.py --baseline HEAD~1                 # also npseg-numba of an earlier commit

One row group per model variant that ships a bundled weights file (any family of the
registry; ONNX Runtime and torch where the trainer has the family). Every measurement
runs in its own subprocess pinned to one core (`taskset -c 0`, or --core N) with one
thread everywhere, on the same weights and the same input, and is timed in wall time and
in the CPU time of that thread. The shared machine is noisy, so engines run in alternating
rounds (numba, ORT, torch, numba, ...) and are compared as ratios measured in the same
run (with --baseline, npseg-numba of that commit, exported to a temporary folder, is one
more engine of the rounds: a before/after ratio on the same load). Writes benchmarks/results/speed.json, its part of benchmarks/RESULTS.md and
benchmarks/speed.png (--cpu-proxy: benchmarks/results/cpus.json and its part).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline import export_commit  # noqa: E402  (benchmarks/ is not a package)
from results_md import write_part  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
SIZE = 256
LARGER = 352  # a second table: the size the UltraLightUNet and PraNet-lineage papers train polyps at
E2E_MODEL = "ultraseg-130k"  # the default model; the first bundled variant where it is missing
DEPLOYABLE = ("npseg-numba", "onnxruntime", "torch-eager")
ENGINES = DEPLOYABLE + ("npseg-numpy",)
ONE_THREAD = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
FRAME_SIZES = ((1024, 1280), (1080, 1920))
# npseg-numba again with OPENBLAS_CORETYPE unset, when the environment pins it (this machine's sets
# Haswell: NumPy's OpenBLAS, which runs npseg's wide 1x1 convs and bottleneck, then uses AVX2
# kernels on an AVX-512 CPU, while torch's and ONNX Runtime's own kernels detect AVX-512 regardless)
UNPINNED = "npseg-numba-openblas-auto"
BEFORE = "npseg-numba-before"  # --baseline: npseg-numba of an earlier commit
NATIVE_BLAS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # removed together: OpenBLAS sizes itself for this CPU
CORE = 0  # the core every worker is pinned to (--core)


# ---------------------------------------------------------------------------------------------
# workers: each runs in a fresh pinned process and prints one JSON line
# ---------------------------------------------------------------------------------------------
def _hw(size) -> tuple[int, int]:
    """(height, width) of a square side, an (h, w) pair or an "HxW" string."""
    if isinstance(size, str):
        size = tuple(map(int, size.split("x"))) if "x" in size else int(size)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _label(size) -> str:
    h, w = _hw(size)
    return f"{h}x{w}"


def _input(size, seed=0):
    return np.random.default_rng(seed).random((3, *_hw(size)), dtype=np.float32)


def _engine_forward(engine, weights_path, onnx_path, size):
    """A callable running one forward of the fixed input of `size` (side or (h, w)) with `engine`."""
    size = _hw(size)
    x = _input(size)
    if engine.startswith("npseg-"):
        import npseg

        engine = npseg.load(weights_path, backend=engine.split("-")[1], size=size)._engine
        np.copyto(engine.input_buffer(*size), x)  # what predict() runs: the plan on its own input
        return lambda: engine.run_input(*size)
    if engine == "torch-eager":
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        from trainer.models import torch_model_from_weights

        model, xt = torch_model_from_weights(weights_path)[0], torch.from_numpy(x)[None]

        def run():
            with torch.inference_mode():
                return model(xt)
        return run
    if engine == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
        name, feed = sess.get_inputs()[0].name, x[None]
        return lambda: sess.run(None, {name: feed})
    raise ValueError(engine)


def worker_forward(args):
    run = _engine_forward(args.engine, args.weights, args.onnx, args.size)
    for _ in range(args.warmup):
        run()
    times, cpu = [], []
    for _ in range(args.frames):
        t, c = time.perf_counter(), time.thread_time()
        run()
        times.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.thread_time() - c) * 1e3)  # every engine runs on this thread (one thread each)
    return {"ms": times, "cpu_ms": cpu}


def worker_e2e(args):
    """predict() on BGR frames of each size vs the bare forward, in one process, at the file's own input
    size (what `npseg.load(name).predict(frame)` runs); then peak RSS."""
    import cv2

    import npseg

    seg = npseg.load(args.weights)
    h_in, w_in = seg.input_size
    engine = seg._engine
    x = seg.preprocess(np.zeros((h_in, w_in, 3), np.uint8))
    rng = np.random.default_rng(1)
    out = {"backend": seg.backend, "input_size": list(seg.input_size)}
    for h, w in FRAME_SIZES:
        frame = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 8)  # image-like
        fwd, e2e, e2e_cpu = [], [], []
        for i in range(args.warmup + args.frames):  # interleaved: the same noise hits both
            t0 = time.perf_counter()
            np.copyto(engine.input_buffer(h_in, w_in), x)
            engine.run_input(h_in, w_in)
            t1, c1 = time.perf_counter(), time.process_time()
            seg.predict(frame)
            t2, c2 = time.perf_counter(), time.process_time()
            if i >= args.warmup:
                fwd.append((t1 - t0) * 1e3)
                e2e.append((t2 - t1) * 1e3)
                e2e_cpu.append((c2 - c1) * 1e3)  # every thread of the process (OpenCV's resizes may use more)
        out[f"{w}x{h}"] = {"forward_ms": fwd, "predict_ms": e2e, "predict_cpu_ms": e2e_cpu}
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _peak_rss_mb():
    """VmHWM: unlike ru_maxrss it is not inherited from the (large) parent across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# ---------------------------------------------------------------------------------------------
# orchestration
# ---------------------------------------------------------------------------------------------
def _spawn(mode, extra_env=None, drop_env=(), **kw):
    cmd = ["taskset", "-c", str(CORE), sys.executable, str(Path(__file__).resolve()), "--worker", mode]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(REPO), **(extra_env or {})}
    for k in drop_env:
        env.pop(k, None)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(f"{mode} worker failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def bundled_models() -> dict[str, Path]:
    """One bundled weights file per model variant (the file named after the variant where there is
    one, e.g. ultraseg-130k.safetensors rather than ultraseg-130k-kvasir.safetensors)."""
    from npseg.segmenter import bundled_names, resolve_weights
    from npseg.weights import load as load_weights

    out: dict[str, Path] = {}
    for name in bundled_names():
        path = resolve_weights(name)
        variant = load_weights(path).config.name
        if variant not in out or name == variant:
            out[variant] = path
    return dict(sorted(out.items()))


def _prepare_weights(tmp: Path) -> dict:
    """Per variant: its bundled file, its own input size, and ONNX exports (from the torch model built
    on the same tensors) at SIZE and at that size; no exports where the trainer lacks the family."""
    from npseg.weights import load as load_weights
    from trainer.export import export_onnx
    from trainer.models import torch_model_from_weights

    out = {}
    for variant, path in bundled_models().items():
        own = _hw(load_weights(path).input_size)
        try:
            model = torch_model_from_weights(path)[0]
        except KeyError:  # npseg ships the family, the trainer has no torch module for it
            model = None
        onnx = {size: model and str(export_onnx(model, tmp / f"{variant}-{_label(size)}.onnx", size))
                for size in {_hw(SIZE), _hw(LARGER), own}}
        out[variant] = {"weights": str(path), "own_size": own, "onnx": onnx}
    return out


def _time_engines(variant, f, size, runs, frames, rounds, numpy_frames) -> dict:
    """Engine runs alternating in `rounds` rounds on one variant at `size`: per-run stats, ratios
    to ONNX Runtime and torch, and the numba / ONNX Runtime ratio within each round. `runs`: label ->
    (engine, environment to set, environment variables to remove)."""
    size = _hw(size)
    runs = {k: v for k, v in runs.items() if v[0].startswith("npseg-") or f["onnx"][size]}
    samples = {e: [] for e in runs}
    cpu_samples = {e: [] for e in runs}
    round_medians = {e: [] for e in runs}
    for r in range(rounds):
        for label, (engine, env, drop) in runs.items():
            if engine == "npseg-numpy" and r:  # the slow reference: one round is enough
                continue
            res = _spawn("forward", extra_env=env, drop_env=drop, engine=engine, weights=f["weights"],
                         onnx=f["onnx"][size], size=_label(size), frames=numpy_frames if engine == "npseg-numpy" else frames,
                         warmup=3 if engine == "npseg-numpy" else 20)
            samples[label] += res["ms"]
            cpu_samples[label] += res["cpu_ms"]
            round_medians[label].append(float(np.median(res["ms"])))
            print(f"{variant} {_label(size)} round {r + 1}/{rounds} {label:12s} median {np.median(res['ms']):7.2f} ms, "
                  f"CPU {np.median(res['cpu_ms']):7.2f} ms", flush=True)
    table = {e: {**_stats(ms), "cpu_median_ms": float(np.median(cpu_samples[e]))} for e, ms in samples.items()}
    for e in table:
        table[e]["round_medians_ms"] = round_medians[e]
        for ref, key in (("onnxruntime", "vs_onnxruntime"), ("torch-eager", "vs_torch")):
            if ref in table:  # time ratios: below 1 is faster than the reference
                table[e][key] = table[e]["median_ms"] / table[ref]["median_ms"]
                table[e][key + "_cpu"] = table[e]["cpu_median_ms"] / table[ref]["cpu_median_ms"]
                # the same ratio within each round: neighbours in time share the machine's load
                table[e][key + "_per_round"] = [n / o for n, o in zip(round_medians[e], round_medians[ref])]
    return table


def _stats(ms):
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "min_ms": float(a.min()),
            "frames": int(a.size), "fps": float(1e3 / np.median(a))}


def _runs(labels) -> dict:
    return {label: (label, {}, ()) for label in labels}


def _machine(load_before) -> dict:
    import numba
    import onnxruntime
    import torch

    return {"cpu": _cpu_name(), "python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "load_average_before": load_before, "load_average_after": os.getloadavg()}


def run_benchmark(frames: int, rounds: int, numpy_frames: int, tmp: Path, baseline: str | None = None) -> dict:
    files = _prepare_weights(tmp)
    load_before = os.getloadavg()
    runs = _runs(ENGINES)
    if "OPENBLAS_CORETYPE" in os.environ:
        runs[UNPINNED] = ("npseg-numba", {}, NATIVE_BLAS)
    if baseline:
        tree, baseline = export_commit(baseline, tmp / "baseline")
        runs[BEFORE] = ("npseg-numba", {"PYTHONPATH": str(tree)}, ())
    speed = {v: _time_engines(v, f, SIZE, runs, frames, rounds, numpy_frames) for v, f in files.items()}
    larger = {v: _time_engines(v, f, LARGER, _runs(DEPLOYABLE), frames, rounds, 0) for v, f in files.items()}
    # what the bundled files run at by default, where that is not SIZE
    own_size = {v: {"size": list(f["own_size"]),
                    "table": _time_engines(v, f, f["own_size"], _runs(DEPLOYABLE), frames, rounds, 0)}
                for v, f in files.items() if f["own_size"] not in (_hw(SIZE), _hw(LARGER))}

    e2e_model = E2E_MODEL if E2E_MODEL in files else next(iter(files))
    e2e_raw = _spawn("e2e", weights=files[e2e_model]["weights"], frames=max(frames // 2, 50), warmup=10)
    e2e = {"model": e2e_model, "backend": e2e_raw["backend"], "input_size": e2e_raw["input_size"],
           "peak_rss_mb": e2e_raw["peak_rss_mb"]}
    for h, w in FRAME_SIZES:
        d = e2e_raw[f"{w}x{h}"]
        fwd, pred = np.median(d["forward_ms"]), np.median(d["predict_ms"])
        e2e[f"{w}x{h}"] = {"forward_median_ms": float(fwd), "predict_median_ms": float(pred),
                           "predict_p90_ms": float(np.percentile(d["predict_ms"], 90)), "ratio": float(pred / fwd)}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(load_before),
        "setup": {"input": f"3x{SIZE}x{SIZE}", "pinning": f"taskset -c {CORE}", "threads": 1,
                  "frames_per_round": frames,
                  "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
                  "rounds": rounds, "numpy_reference_frames": numpy_frames, "baseline": baseline,
                  "weights": {v: f"bundled weights/{Path(f['weights']).name}" for v, f in files.items()}},
        "forward": speed, "forward_larger": {"size": LARGER, "tables": larger}, "forward_own_size": own_size,
        "end_to_end": e2e,
    }


# Older x86-64 CPUs imitated on this one: Numba's code generated for an older target (NUMBA_CPU_FEATURES
# empty: the target's own features, not this CPU's) and NumPy's OpenBLAS pinned to an older core.
_NUMBA_TARGET = {"native": {}, "haswell": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""},
                 "x86-64-v2": {"NUMBA_CPU_NAME": "x86-64-v2", "NUMBA_CPU_FEATURES": ""}}
_BLAS_CORE = {"native": {}, "Haswell": {"OPENBLAS_CORETYPE": "Haswell"}, "Nehalem": {"OPENBLAS_CORETYPE": "Nehalem"}}
CPU_PROXIES = (("native", "native", "this CPU"), ("haswell", "native", "AVX2 code, this CPU's BLAS"),
               ("native", "Haswell", "this CPU's code, AVX2 BLAS"),
               ("haswell", "Haswell", "AVX2 CPU (Haswell .. Zen 3)"),
               ("x86-64-v2", "native", "SSE4.2 code, this CPU's BLAS"),
               ("x86-64-v2", "Nehalem", "SSE4.2 CPU (x86-64-v2: Nehalem .. Atom)"))


def run_cpu_proxy(frames: int, rounds: int, tmp: Path) -> dict:
    """npseg-numba on E2E_MODEL at SIZE with older code targets and BLAS cores, beside ONNX Runtime
    (which picks its own kernels for this CPU)."""
    files = _prepare_weights(tmp)
    model = E2E_MODEL if E2E_MODEL in files else next(iter(files))
    load_before = os.getloadavg()
    runs = {f"npseg-numba {target} / BLAS {blas}": ("npseg-numba", {**_NUMBA_TARGET[target], **_BLAS_CORE[blas]},
                                                      NATIVE_BLAS)
            for target, blas, _ in CPU_PROXIES}
    runs["onnxruntime"] = ("onnxruntime", {}, ())
    table = _time_engines(model, files[model], SIZE, runs, frames, rounds, 0)
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": _machine(load_before), "model": model, "size": SIZE, "frames_per_round": frames,
            "rounds": rounds, "table": table}


def write_cpu_proxy_markdown(res: dict) -> None:
    m = res["machine"]
    lines = ["## Older and low-power x86 CPUs, as a proxy", "",
             f"`benchmarks/speed.py --cpu-proxy`, {res['date']}, {m['cpu']}; {res['model']}, "
             f"{res['size']}×{res['size']}, one core, {res['rounds']} alternating rounds of {res['frames_per_round']} "
             f"frames, load average {m['load_average_before'][0]:.1f} / {m['load_average_after'][0]:.1f}. "
             "Numba's code generated for an older x86-64 target (`NUMBA_CPU_NAME`, with `NUMBA_CPU_FEATURES` empty "
             "so the target's own features apply) and NumPy's OpenBLAS pinned to an older core "
             "(`OPENBLAS_CORETYPE`; native: it and `OPENBLAS_L2_SIZE` unset). ONNX Runtime picks its kernels for "
             "this CPU whatever the variables say, so its row is this CPU's; on an older CPU it slows down too.", "",
             CPU_TIME_NOTE, "",
             "| Numba target | OpenBLAS core | imitates | median ms | min ms | median CPU ms | × native CPU time | "
             "× ONNX Runtime CPU time |", "|---|---|---|---|---|---|---|---|"]
    t = res["table"]
    native = t["npseg-numba native / BLAS native"]["cpu_median_ms"]
    for target, blas, what in CPU_PROXIES:
        r = t[f"npseg-numba {target} / BLAS {blas}"]
        lines.append(f"| {target} | {blas} | {what} | {r['median_ms']:.2f} | {r['min_ms']:.2f} | "
                     f"{r['cpu_median_ms']:.2f} | {r['cpu_median_ms'] / native:.2f} | "
                     f"{_ratio(r, 'vs_onnxruntime_cpu')} |")
    o = t["onnxruntime"]
    lines.append(f"| ONNX Runtime | – | this CPU | {o['median_ms']:.2f} | {o['min_ms']:.2f} | "
                 f"{o['cpu_median_ms']:.2f} | {o['cpu_median_ms'] / native:.2f} | 1.00 |")
    write_part("cpus", "\n".join(lines + ["", CPU_PROXY_NOTES]))


CPU_PROXY_NOTES = (
    "Per kernel (`benchmarks/steps.py` in thread CPU time, UltraSeg-130K at 256x256, x86-64-v2 code against "
    "native on this CPU, 2026-12-07): 21.3 against 8.6 ms for the forward; the 2x2 and 4x4 stride-2 convs "
    "3.8-4.3x, the first layer's float64 statistics pass 3.3x, the direct and Winograd 3x3 convs 2.4-2.7x, "
    "resizes and gate heads 2.3-2.6x, the GEMMs (OpenBLAS, native) 1.3x. Nothing falls off a cliff: no kernel "
    "turns scalar (that would be 10x or more), the losses follow the vector width (SSE4.2: 4 float32 lanes and "
    "no FMA, against AVX-512's 16 with FMA), worst where even and odd columns are split (stride 2) and where "
    "the sums are float64. AVX2 code (haswell) was within 10 % of native while Numba's native code kept to "
    "256-bit vectors; since npseg lets it use 512-bit ones (npseg.ops._jit.allow_wide_vectors) native is the "
    "faster by 16-23 %, and an AVX2 CPU runs at about 0.5x ONNX Runtime's time on this one.")


def _cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


ENGINE_NOTES = (
    "What bounds npseg-numba (per-step profile: `benchmarks/steps.py`, results in "
    "`benchmarks/results/steps-*.json`): for UltraSeg-130K about a fifth of the forward is the dense 3x3 convs "
    "with fewer than 64 outputs, run as row-wise Winograd F(2, 3) (16->48 at 64x64 about 0.39 ms, 8->16 at "
    "128x128 0.34), a fifth single-thread OpenBLAS GEMMs (1x1 convs with >= 48 inputs and the 64->96 "
    "bottleneck, 86-100 GFLOP/s), an eighth the first layer (a statistics pass of its 3->8 conv for the "
    "GroupNorm, then the conv, GroupNorm and 2x2 stride-2 conv folded into one 4x4 stride-2 conv), an eighth "
    "the direct grouped/dilated and depthwise convs (EDB branches at about 55 GFLOP/s) and a tenth the 2x2 "
    "stride-2 convs; the rest are memory passes and small kernels (resizes, padding, norms, gate heads, "
    "merges; 80 steps per frame). Measured and not adopted: 2-D Winograd F(2x2, 3x3) (same accuracy, slower "
    "as a Numba kernel), transforming the Winograd input in L2-sized bands, Winograd for the 64->96 bottleneck "
    "(slower than the GEMM) and for the first layer's statistics pass (no gain), the EDB's three branch convs "
    "in one kernel or two output rows per pass (slower), fusing each decoder stage's resize, gate head and "
    "merge, and padded copies written from producers' epilogues (where the plain output is read too; the "
    "first EDB's residual add now writes the padded copy the second EDB reads, which saves a pad pass), the "
    "48->48 2x2 stride-2 conv as space-to-depth + GEMM (8.6 % of the forward against the kernel's 5.6 %, "
    "and further from torch), and chaining the stride-2 convs' taps through the accumulator (below); the "
    "Winograd kernel's input channels two per pass (the same sums, in the same order: no measurable change) and "
    "its accumulators held in registers as 8-wide tuples (the same results, about 10x slower: the compiler kept "
    "the tuples scalar). Adopted on 2026-12-07: (1) 512-bit vectors: LLVM tunes this CPU to prefer 256-bit ones "
    "although it has AVX-512, and lifting that (npseg.ops._jit.allow_wide_vectors) took the forward from 6.53 "
    "to 5.94 ms in alternating rounds; (2) scratch rows laid out against 4K aliasing (npseg.ops.scratch): a "
    "load waits for a pending store whose address matches it modulo 4 KB, and the Winograd kernel's four "
    "accumulator rows were 4 KB apart, with its input rows wherever the allocator put them. That is why the "
    "same kernel took 0.5-1.1 ms from one process to the next; laid out, 0.50-0.54 ms, and the forward "
    "5.35 against 6.03 ms (steps.py, three alternating runs). Not adopted: the same layout for the DSConv "
    "and gated pointwise kernels' rows (MicroAUNet's DSConv steps 2.1 -> 6.0 ms, cause not found). "
    "Numerical budget: on the upstream golden inputs torch's float32 logits are 7.4e-5 from the float64 "
    "reference and npseg's 2.5e-5 at 256x256 (3.9e-5 before Winograd's row-filter taps were chained through its "
    "accumulator, three FMAs instead of four operations, 6-10 % off that kernel), against the 1e-4 the golden "
    "test allows between npseg and torch (npseg's distance to the golden logits: 7.3e-5). The conv kernels "
    "compile without reassociation, so their float32 sums keep the written order; the order is chosen per "
    "kernel by that budget: chained taps in the 4x4 stride-2 conv put the logits 1.1e-4 from the golden ones "
    "(over), in the 2x2 stride-2 convs 8.2e-5 (for 1 % of the forward), in the direct 3x3 conv twice as far "
    "from the float64 reference. On a shared machine the medians also carry preemption by other processes "
    "(compare the min column).")


def _ratio(t: dict, key: str, fmt: str = "{:.2f}") -> str:
    return fmt.format(t[key]) if key in t else "–"


def _forward_rows(model: str, size, table: dict) -> list[str]:
    h, w = _hw(size)
    return [f"| {model} | {h}×{w} | {engine} | {t['median_ms']:.2f} | {t['p90_ms']:.2f} | {t['min_ms']:.2f} | "
            f"{t['fps']:.0f} | {t['cpu_median_ms']:.2f} | {_ratio(t, 'vs_onnxruntime')} | "
            f"{_ratio(t, 'vs_onnxruntime_cpu')} | {_ratio(t, 'vs_torch_cpu')} |"
            for engine, t in table.items()]


FORWARD_HEADER = ["| model | input | engine | median ms | p90 ms | min ms | FPS | median CPU ms | × ONNX Runtime time "
                  "| × ONNX Runtime CPU time | × torch CPU time |", "|---|---|---|---|---|---|---|---|---|---|---|"]
CPU_TIME_NOTE = ("CPU ms: the CPU time of the one thread every engine runs on (`time.thread_time`); unlike the wall "
                 "times it leaves out the time other processes held the core, so on a shared machine its ratios are "
                 "the steadier comparison.")


def _per_round_line(tables: dict) -> str:
    return "npseg-numba / ONNX Runtime within each round (medians): " + "; ".join(
        f"{v} " + ", ".join(f"{r:.2f}" for r in t["npseg-numba"]["vs_onnxruntime_per_round"])
        for v, t in tables.items() if "vs_onnxruntime_per_round" in t["npseg-numba"]) + "."


def write_markdown(res: dict, path: Path):
    m, s = res["machine"], res["setup"]
    lines = [
        "# Speed",
        "",
        f"`benchmarks/speed.py`, {res['date']}, {m['cpu']}; one core (`{s['pinning']}`), one thread everywhere, "
        f"batch 1. numba {m['numba']}, onnxruntime {m['onnxruntime']}, torch {m['torch']}. One model per "
        "variant with a bundled weights file.",
        f"Engines alternate in {s['rounds']} rounds of {s['frames_per_round']} frames after warm-up, each in its own "
        f"process; the NumPy reference (float64, readable) runs {s['numpy_reference_frames']} frames once. "
        f"Load average before/after: {m['load_average_before'][0]:.1f} / {m['load_average_after'][0]:.1f} "
        "(shared machine: compare the ratios, not the absolute times).",
        "",
        f"## Forward, {SIZE}×{SIZE}, one core",
        "", CPU_TIME_NOTE, "", *FORWARD_HEADER,
    ]
    for variant, table in res["forward"].items():
        lines += _forward_rows(variant, SIZE, table)
    lines += ["", _per_round_line(res["forward"])]
    before = [(v, t) for v, t in res["forward"].items() if BEFORE in t]
    if before:
        lines += ["", f"{BEFORE}: npseg-numba of commit {s['baseline']}, one more engine of the same rounds. "
                  "npseg-numba / before, CPU time (medians): " + "; ".join(
                      f"{v} {t['npseg-numba']['cpu_median_ms'] / t[BEFORE]['cpu_median_ms']:.3f}" for v, t in before)
                  + "; within each round (wall): " + "; ".join(
                      f"{v} " + ", ".join(f"{a / b:.2f}" for a, b in zip(t['npseg-numba']['round_medians_ms'],
                                                                          t[BEFORE]['round_medians_ms']))
                      for v, t in before) + "."]
    if s.get("openblas_coretype"):
        lines += ["", f"This machine's environment sets `OPENBLAS_CORETYPE={s['openblas_coretype']}`, which the "
                  "npseg-numba rows keep (as `make bench` and CI run). It pins NumPy's OpenBLAS, which runs npseg's "
                  "wide 1x1 convs, to that core's kernels; torch's and ONNX Runtime's own kernels are not affected "
                  f"by it. {UNPINNED} is the same engine with the variable unset, so OpenBLAS picks its kernels for "
                  "this CPU itself."]
    lines += ["", ENGINE_NOTES]
    larger = res["forward_larger"]
    lines += ["", f"## Forward, {larger['size']}×{larger['size']}, one core", "",
              "The input the UltraLightUNet paper (and PraNet's lineage) trains and tests polyps at; the same "
              "rounds as above.", "", *FORWARD_HEADER]
    for variant, table in larger["tables"].items():
        lines += _forward_rows(variant, larger["size"], table)
    lines += ["", _per_round_line(larger["tables"])]
    if res.get("forward_own_size"):
        lines += ["", "## Forward at each bundled file's own input size, one core", "",
                  "The size the file was trained at and `npseg.load(name)` predicts at unless given `size=`.", "",
                  *FORWARD_HEADER]
        for variant, d in res["forward_own_size"].items():
            lines += _forward_rows(variant, d["size"], d["table"])
    e = res["end_to_end"]
    h_in, w_in = e["input_size"]
    lines += ["", f"## End to end: `predict(frame)` (BGR uint8 frame → mask), {e['model']} at its own input size "
              f"{w_in}×{h_in}, backend {e['backend']}", "",
              "| frame | forward median ms | predict median ms | predict p90 ms | predict / forward |",
              "|---|---|---|---|---|"]
    for h, w in FRAME_SIZES:
        d = e[f"{w}x{h}"]
        lines.append(f"| {w}×{h} | {d['forward_median_ms']:.2f} | {d['predict_median_ms']:.2f} | "
                     f"{d['predict_p90_ms']:.2f} | {d['ratio']:.2f} |")
    lines += ["", f"Peak RSS of the end-to-end process (after 1280×1024 and 1920×1080 frames): "
              f"{e['peak_rss_mb']:.0f} MB. Start-up times: `benchmarks/startup.py`, below.", "",
              "![speed](speed.png)"]
    write_part("speed", "\n".join(lines), path)


def plot(res: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 2 * len(res["forward"])), 4.5))
    variants = list(res["forward"])
    engines = [e for e in res["forward"][variants[0]] if e != "npseg-numpy"]
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        med = [res["forward"][v].get(engine, {}).get("median_ms", np.nan) for v in variants]
        p90 = [res["forward"][v].get(engine, {}).get("p90_ms", np.nan) for v in variants]
        xs = np.arange(len(variants)) + (i - (len(engines) - 1) / 2) * width
        bars = ax.bar(xs, med, width, label=engine, yerr=[np.zeros(len(med)), np.subtract(p90, med)], capsize=3)
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    ax.set_xticks(range(len(variants)), variants)
    ax.set_ylabel("ms / frame (median, bar to p90)")
    ax.set_title(f"forward, 3x{SIZE}x{SIZE}, one core, one thread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    global CORE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=100, help="timed frames per engine per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--numpy-frames", type=int, default=20)
    ap.add_argument("--core", type=int, default=CORE, help="CPU core to pin every measurement to (default 0)")
    ap.add_argument("--cpu-proxy", action="store_true", help="time older x86-64 code targets and BLAS cores only")
    ap.add_argument("--baseline", metavar="COMMIT", help="also time npseg-numba of this commit in the same rounds")
    ap.add_argument("--worker", choices=["forward", "e2e"], help=argparse.SUPPRESS)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    ap.add_argument("--onnx", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=_hw, default=SIZE, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=20, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    CORE = args.core
    if args.worker:
        print(json.dumps({"forward": worker_forward, "e2e": worker_e2e}[args.worker](args)))
        return
    if args.cpu_proxy:
        with tempfile.TemporaryDirectory() as tmp:
            res = run_cpu_proxy(args.frames, args.rounds, Path(tmp))
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "cpus.json").write_text(json.dumps(res, indent=1))
        write_cpu_proxy_markdown(res)
        return
    with tempfile.TemporaryDirectory() as tmp:
        res = run_benchmark(args.frames, args.rounds, args.numpy_frames, Path(tmp), args.baseline)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, HERE / "RESULTS.md")
    plot(res, HERE / "speed.png")
    for variant, table in res["forward"].items():
        print(variant, {e: round(t["median_ms"], 2) for e, t in table.items()},
              "numba/ORT " + _ratio(table["npseg-numba"], "vs_onnxruntime"))


if __name__ == "__main__":
    main()
