"""The `npseg` command: segment images and folders, segment video, inspect weights, benchmark.

Exit codes (stable, for scripts):
  0    success
  1    runtime failure: the run started but not everything was produced
       (an image that could not be decoded or is too small/large for predict,
       a write that failed mid-run)
  2    usage or bad input: bad arguments, a missing or unreadable input,
       unknown or invalid weights, an output path that cannot be written
  130  interrupted (Ctrl-C or SIGTERM); `npseg video` instead stops cleanly, keeps the
       frames written so far and exits 0

Errors are one line on stderr ("npseg: error: ..."), never a traceback. Outputs are
written whole or not at all (a temporary file renamed into place), and never over an
input file.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from . import __version__
from .engines import MAX_INPUT_SIDE
from .files import opencv_path, write_bytes
from .jobs import default_jobs, worker_pool
from .ops._jit import load_target_for_kernels
from .overlay import draw_overlay
from .segmenter import bundled_names, default_backend, load, resolve_weights
from .weights import WeightsError
from .weights import load as load_weights

OK, RUNTIME_FAILURE, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
DEFAULT_WEIGHTS = "ultraseg-130k"
IMAGES_PER_WORKER = 8  # segment's default --jobs starts no more workers than this many images keep busy


class CliError(Exception):
    """An expected failure: reported as one line and an exit code."""

    def __init__(self, message: str, code: int = BAD_INPUT):
        super().__init__(message)
        self.code = code


def one_line(message: str) -> str:
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def warn(message: str) -> None:
    print(f"npseg: warning: {one_line(message)}", file=sys.stderr)


class Progress:
    """A single self-rewriting stderr line, shown only on a terminal (scripts get clean logs)."""

    def __init__(self, label: str, total: int | None, stream=sys.stderr):
        self.label, self.total, self.stream = label, total, stream
        self.enabled = stream.isatty()
        self._last = 0.0
        self._shown = False

    def update(self, done: int, note: str = "") -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and done != self.total):
            return
        self._last = now
        if self.total:
            filled = int(24 * done / self.total)
            bar = f"[{'#' * filled}{'.' * (24 - filled)}] {done}/{self.total}"
        else:
            bar = f"{done}"
        self.stream.write(f"\r{self.label} {bar} {note}\033[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """End the line (before a warning, or at the end); the next update starts a new one."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False


# ---------------------------------------------------------------- argument types

def _size(text: str) -> tuple[int, int]:
    """'256' or 'HxW' such as '320x256'."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not all(16 <= p <= MAX_INPUT_SIDE and p % 16 == 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text[:24]!r}: give N or HxW, multiples of 16 from 16 to {MAX_INPUT_SIDE} "
                                         "(e.g. 256 or 320x256)")
    return parts[0], parts[1]


def _frame_size(text: str) -> tuple[int, int]:
    """'HxW' such as '1024x1280'."""
    try:
        height, width = (int(p) for p in text.lower().split("x"))
    except ValueError:
        height = width = 0
    if not (16 <= height <= 8192 and 16 <= width <= 8192):
        raise argparse.ArgumentTypeError(f"{text!r}: give HxW between 16 and 8192, e.g. 1024x1280")
    return height, width


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number between 0 and 1 (exclusive)")
    return value


def _smoothing(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number in [0, 1) (0 = off)")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive whole number")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 600.0:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds in (0, 600]")
    return value


# ---------------------------------------------------------------- shared helpers

def _load_model(args, compile_in_background: bool = False):
    try:
        model = load(args.weights, backend=args.backend, size=args.size, compile_in_background=compile_in_background)
        if model.backend == "numba":
            load_target_for_kernels()
        return model
    except WeightsError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{args.weights}: cannot read weights file ({e.strerror or e})") from None
    except ValueError as e:  # unknown backend, input size the model cannot take
        raise CliError(str(e)) from None
    except MemoryError:
        raise CliError(f"{args.weights}: not enough memory to build the model at this input size") from None


def end_of_start_up() -> None:
    """The command's entry point (npseg.__main__) starts with the cyclic garbage collector off; from
    here on it collects again, without the start-up's long-lived objects (frozen: never traversed
    again). Called once the model is warm, or before anything that allocates much (compiling)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _describe(model) -> str:
    h, w = model.input_size
    return f"{model.config.name}, {model.backend} backend, {h}x{w} input"


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"{path}: cannot create output folder ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"{path}: output folder is not writable")
    return path


# ---------------------------------------------------------------- segment

def collect_images(paths: list[str], out: Path) -> list[tuple[Path, Path]]:
    """(image file, output name without suffix) for every input: files as given,
    folders searched recursively for image files (sorted, so runs are repeatable)."""
    # os.path.realpath, not Path.resolve: a loop of links is a name that leads nowhere, not an error
    written = [Path(os.path.realpath(out / "masks")), Path(os.path.realpath(out / "overlays"))]
    found = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found += _images_in(path, written)
        elif path.is_file():
            name = opencv_path(path)  # a name OpenCV cannot take is checked when decoded
            if name is not None and not cv2.haveImageReader(name):
                raise CliError(f"{text}: not an image file OpenCV can read")
            found.append((path, Path(path.stem)))
        else:
            raise CliError(f"{text}: no such file or folder")
    names = {}
    for image, name in found:
        if name in names and names[name] != image:
            raise CliError(f"{names[name]} and {image} would both be written as {name}.png: "
                           "segment them in separate runs (different --out)")
        names[name] = image
    return found


def _images_in(folder: Path, written: list[Path]) -> list[tuple[Path, Path]]:
    """The image files below `folder`, leaving out the output folders (`written`) where
    they lie inside it: an earlier run's results are not inputs."""
    root = Path(os.path.realpath(folder))
    inside = [d for d in written if root in d.parents]

    def is_output(p: Path) -> bool:
        where = Path(os.path.realpath(p.parent))
        return any(where == d or d in where.parents for d in inside)

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                   and not p.name.startswith(".") and not is_output(p))
    if not files:
        raise CliError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
    return [(p, p.relative_to(folder).with_suffix("")) for p in files]


def _refuse_overwriting_inputs(images: list[tuple[Path, Path]], mask_dir: Path, overlay_dir: Path) -> None:
    """An output that already exists as one of the input files (by identity: links and
    case-insensitive file systems included) would destroy it."""
    def identity(path: Path) -> tuple[int, int] | None:
        try:
            s = path.stat()
        except OSError:  # not there (yet): nothing to overwrite
            return None
        return s.st_dev, s.st_ino

    inputs = {identity(image): image for image, _ in images}
    inputs.pop(None, None)
    for _, name in images:
        for target in (mask_dir / f"{name}.png", overlay_dir / f"{name}.jpg"):
            if identity(target) in inputs:
                raise CliError(f"{target}: this output would overwrite the input image "
                               f"{inputs[identity(target)]}; choose another --out")


def _read_image(path: Path) -> np.ndarray | None:
    """BGR uint8, or None when the file cannot be read or decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # handles any path encoding, unlike cv2.imread
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except (OSError, cv2.error):  # cv2.error: a header claiming over 2**30 pixels
        return None
    return image if image is not None and image.size else None


def _write_image(path: Path, image: np.ndarray, params=()) -> None:
    """Encoded here and written by Python (cv2.imwrite cannot take every file name and
    reports no write error); a failed write leaves no partial file."""
    ok, encoded = cv2.imencode(path.suffix, image, list(params))
    if not ok:
        raise CliError(f"{path}: could not encode the image", RUNTIME_FAILURE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, encoded)
    except OSError as e:
        raise CliError(f"{path}: could not write ({e.strerror or e})", RUNTIME_FAILURE) from None


def _segment_image(model, image_path: Path, name: str, mask_dir: Path, overlay_dir: Path, threshold):
    """Segments one image and writes its outputs: (model seconds, None), or (None, why it was skipped)."""
    frame = _read_image(image_path)
    if frame is None:
        return None, f"{image_path}: cannot read or decode this image; skipped"
    t0 = time.perf_counter()
    try:
        mask = model.predict(frame, threshold=threshold)
    except ValueError as e:  # a frame predict refuses (too small or too large): its message says why
        return None, f"{image_path}: {e}; skipped"
    seconds = time.perf_counter() - t0
    _write_image(mask_dir / f"{name}.png", mask * np.uint8(255))
    _write_image(overlay_dir / f"{name}.jpg", draw_overlay(frame, mask), (cv2.IMWRITE_JPEG_QUALITY, 90))
    return seconds, None


_worker_model: dict = {}  # the model of this worker process (segment --jobs N)


def _start_segment_worker(weights: Path, backend: str, size: tuple[int, int]) -> None:
    if "model" not in _worker_model:  # spawned, not forked from the parent that holds it
        model = load(weights, backend=backend, size=size)
        model.predict(np.zeros((64, 64, 3), np.uint8))  # loads the kernels outside the per-frame figures
        _worker_model["model"] = model


def _segment_in_worker(image_path, name, mask_dir, overlay_dir, threshold):
    """_segment_image in a worker process; a CliError comes back as (message, code)."""
    try:
        return _segment_image(_worker_model["model"], image_path, name, mask_dir, overlay_dir, threshold), None
    except CliError as e:
        return (None, None), (str(e), e.code)


def _segmented(model, images, mask_dir: Path, overlay_dir: Path, threshold, jobs: int):
    """_segment_image's result for each image in order, here or over `jobs` worker processes."""
    if jobs == 1:
        for image_path, name in images:
            yield _segment_image(model, image_path, name, mask_dir, overlay_dir, threshold)
        return
    from concurrent.futures.process import BrokenProcessPool

    n = len(images)
    _worker_model["model"] = model  # what forked workers start with
    try:
        with worker_pool(jobs, _start_segment_worker, (model.weights.path, model.backend, model.input_size)) as pool:
            for result, error in pool.map(_segment_in_worker, [p for p, _ in images], [name for _, name in images],
                                          [mask_dir] * n, [overlay_dir] * n, [threshold] * n):
                if error is not None:
                    raise CliError(*error)
                yield result
    except BrokenProcessPool:
        raise CliError("a worker process ended unexpectedly (out of memory?); try --jobs 1", RUNTIME_FAILURE) from None
    finally:
        _worker_model.clear()


def cmd_segment(args) -> int:
    out = Path(args.out)
    found = collect_images(args.paths, out)
    _refuse_overwriting_inputs(found, out / "masks", out / "overlays")
    images = found[: args.limit]
    # default: the CPUs here, but a worker (about a second to start) only for every IMAGES_PER_WORKER images
    most = len(images) if args.jobs else len(images) // IMAGES_PER_WORKER
    jobs = max(1, min(args.jobs or default_jobs(), most))
    # in one process the first images may run on the NumPy reference while the kernels compile
    # (a first run after an install starts at once); worker processes load the kernels this
    # process compiles into Numba's cache during the warm-up
    model = _load_model(args, compile_in_background=jobs == 1)  # before creating any folder
    mask_dir, overlay_dir = _writable_dir(out / "masks"), _writable_dir(out / "overlays")
    if jobs > 1:  # the warm-up compiles here if the cache lacks the kernels
        end_of_start_up()
    t0 = time.perf_counter()
    model.predict(np.zeros((64, 64, 3), np.uint8))  # compile / warm up outside the per-frame figures
    warmup_s = time.perf_counter() - t0
    end_of_start_up()
    progress = Progress("segment", len(images))
    skipped, done, model_s = [], 0, 0.0
    start = time.perf_counter()
    results = _segmented(model, images, mask_dir, overlay_dir, args.threshold, jobs)
    try:
        for (image_path, _), (seconds, problem) in zip(images, results):
            if problem is not None:
                skipped.append(image_path)
                progress.close()
                warn(problem)
                continue
            model_s += seconds
            done += 1
            progress.update(done + len(skipped), f"{1000 * model_s / done:.0f} ms/frame")
    finally:
        results.close()  # an interrupted run stops its workers after the images in hand
        progress.close()
    total_s = time.perf_counter() - start
    if done:
        processes = "" if jobs == 1 else f" in {jobs} processes"
        print(f"segmented {done} image(s) with {_describe(model)}{processes}: "
              f"{1000 * model_s / done:.1f} ms/frame model, {1000 * total_s / done:.1f} ms/frame with I/O "
              f"(+ {warmup_s:.1f} s warm-up); {done / total_s:.1f} images/s")
        print(f"masks:    {mask_dir}/  (PNG, 0 = background, 255 = polyp)")
        print(f"overlays: {overlay_dir}/  (JPEG)")
    if getattr(model._engine, "_compiling", False):  # the run ended before the kernels were compiled
        print("note: the NumPy reference segmented while the kernels compiled (a first run after an install); "
              "on POSIX systems a low-priority background process finishes them, after which runs start in "
              "about a second (`npseg warmup` compiles every bundled model's)")
    if skipped:
        print(f"skipped {len(skipped)} image(s) that could not be segmented, listed on stderr")
        return RUNTIME_FAILURE
    return OK


def cmd_warmup(args) -> int:
    """Compiles the kernels of the given models (default: every bundled one) into Numba's cache."""
    if args.background:  # lowest CPU priority, and one such process per model, size and cache
        os.nice(19)
        args.lock = _background_warmup_lock(args.models, args.size)
        if args.lock is None:
            return OK  # another one is compiling the same kernels
    for name in args.models or bundled_names():
        t0 = time.perf_counter()
        args.weights = name
        model = _load_model(args)
        model.predict(np.zeros((64, 64, 3), np.uint8))
        print(f"{model.config.name} ({name}): kernels ready in {time.perf_counter() - t0:.1f} s")
    return OK


def _background_warmup_lock(models, size):
    """For `warmup --background` (a first run's unfinished compile, handed over at its exit): an
    open file exclusively locked for these models, size and Numba cache, to hold until the process
    ends; None if another process holds it."""
    import fcntl
    import hashlib
    import tempfile

    key = hashlib.sha1(json.dumps([models, size, os.environ.get("NUMBA_CACHE_DIR")]).encode()).hexdigest()[:16]
    lock = open(Path(tempfile.gettempdir()) / f"npseg-warmup-{key}.lock", "w")  # noqa: SIM115 - returned open
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


# ---------------------------------------------------------------- video

def cmd_video(args) -> int:
    from . import video

    try:  # everything that can be checked before the model loads
        video.check_input(args.input)
        video.check_output(args.output, args.input)
    except video.VideoError as e:
        raise CliError(str(e)) from None
    model = _load_model(args, compile_in_background=True)  # a first run shows frames at once
    progress = Progress("video", None)

    def on_frame(done, total, fps):
        progress.total = total
        progress.update(done, f"{fps:.1f} FPS")

    try:
        result = video.run(model, args.input, args.output, smooth=args.smooth, threshold=args.threshold,
                           display=args.display, max_frames=args.max_frames, on_frame=on_frame)
    except video.VideoWriteError as e:
        raise CliError(str(e), RUNTIME_FAILURE) from None
    except video.VideoError as e:
        raise CliError(str(e)) from None
    finally:
        progress.close()
    cpu_ms = result.cpu_ms_per_frame
    print(f"wrote {result.frames} frame(s) to {args.output} with {_describe(model)}")
    print(f"achieved {result.fps:.1f} FPS end to end (decode + segment + draw + encode)")
    print(f"CPU time {cpu_ms:.1f} ms/frame ({1000 / max(cpu_ms, 1e-9):.1f} FPS when the core is not shared), "
          f"of which segmentation {result.segment_cpu_ms_per_frame:.1f} ms")
    return OK


# ---------------------------------------------------------------- info

def cmd_info(args) -> int:
    try:
        weights = load_weights(resolve_weights(args.weights))
    except WeightsError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{args.weights}: cannot read weights file ({e.strerror or e})") from None
    stats = ("running_mean", "running_var")
    n_all = sum(int(t.size) for t in weights.tensors.values())
    n_learned = sum(int(t.size) for k, t in weights.tensors.items() if not k.endswith(stats))
    summary = {
        "file": weights.path,
        "file_bytes": Path(weights.path).stat().st_size,
        "architecture": weights.family.name,
        "variant": weights.config.name,
        "parameters": n_learned,
        "stored_values": n_all,
        "tensors": len(weights.tensors),
        "input_size": list(weights.input_size),
        "config": weights.config.to_dict(),
        "preprocessing": weights.preprocessing,
        "output": weights.output,
        "provenance": weights.provenance,
        "metrics": weights.metrics,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return OK
    h, w = weights.input_size
    print(f"file:          {summary['file']} ({summary['file_bytes'] / 1024:.0f} KiB, sha256-verified)")
    print(f"architecture:  {weights.family.name}, {weights.config.name}")
    print(f"parameters:    {n_learned:,} learned ({n_all:,} values incl. norm statistics, "
          f"{len(weights.tensors)} tensors)")
    print(f"input size:    {h}x{w}")
    print("config:        " + ", ".join(f"{k}={v}" for k, v in summary["config"].items()))
    print("preprocessing: " + ", ".join(f"{k}={v}" for k, v in weights.preprocessing.items()))
    print("output:        " + ", ".join(f"{k}={v}" for k, v in weights.output.items()))
    for title, table in (("provenance", weights.provenance), ("metrics", weights.metrics)):
        print(f"{title}:" + ("" if table else "    (none recorded)"))
        for key, value in table.items():
            print(f"  {key}: {value if isinstance(value, str) else json.dumps(value)}")
    return OK


# ---------------------------------------------------------------- bench

def _one_core_rerun(argv: list[str]) -> int | None:
    """Run this command again in a child process restricted to one CPU, unless this process
    already is. Pinning a running process is not enough: thread pools (NumPy's OpenBLAS,
    used by the engine's matrix products) sized themselves at import from the CPUs then
    allowed, and their threads would fight over the one core. Linux only; elsewhere None."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) == 1:
        return None
    cpu = min(os.sched_getaffinity(0))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.call([sys.executable, "-m", "npseg", *argv], env=env,
                           preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def _timed(fn, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Wall and CPU milliseconds per call (CPU time is the figure to trust on a shared core)."""
    wall, cpu, deadline = [], [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(wall) < 5:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return 1000 * np.array(wall), 1000 * np.array(cpu)


def cmd_bench(args) -> int:
    if args.pin:
        code = _one_core_rerun(args.argv)
        if code is not None:
            return code
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    where = f"on CPU {cpus[0]} only" if len(cpus) == 1 else f"not pinned ({len(cpus) or 'all'} CPUs)"
    model = _load_model(args)
    height, width = args.frame_size
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 5)
    t0 = time.perf_counter()
    model.predict(frame)
    first_s = time.perf_counter() - t0
    print(f"npseg {__version__}: {_describe(model)}, {where}")
    print(f"first call (compile / warm-up): {first_s:.2f} s")
    net_h, net_w = model.input_size
    small = np.ascontiguousarray(cv2.resize(frame, (net_w, net_h)))  # no resizing: about the network alone
    for label, image in ((f"predict, {height}x{width} frame", frame), (f"predict, {net_h}x{net_w} frame", small)):
        wall, cpu = _timed(lambda: model.predict(image), args.seconds / 2)
        print(f"{label + ':':30s} median {np.median(wall):6.2f} ms  p90 {np.percentile(wall, 90):6.2f} ms  "
              f"-> {1000 / np.median(wall):6.1f} FPS  (CPU time median {np.median(cpu):.2f} ms; {wall.size} runs)")
    return OK


# ---------------------------------------------------------------- parser

EXIT_CODES = """exit codes: 0 ok, 1 runtime failure (the run started but not everything was
produced), 2 usage or bad input (arguments, unreadable input, unknown or invalid
weights, unwritable output), 130 interrupted."""


def _add_model_options(p, threshold: bool = True) -> None:
    p.add_argument("--weights", default=DEFAULT_WEIGHTS, metavar="NAME|FILE",
                   help=f"bundled model name ({', '.join(bundled_names()) or 'none bundled'}) or a .safetensors "
                        f"file (default: {DEFAULT_WEIGHTS})")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help=f"engine: numba (fast) or numpy (reference); default: {default_backend()}")
    p.add_argument("--size", type=_size, default=None, metavar="N|HxW",
                   help="network input size (multiples of 16); default: the size the weights were trained at")
    if threshold:
        p.add_argument("--threshold", type=_probability, default=None, metavar="P",
                       help="polyp where probability > P; default: the weights file's decision threshold (0.5 unless "
                            "it records one)")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Wraps one-paragraph descriptions; keeps multi-line texts (examples, exit codes) as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    fmt = _HelpFormatter
    parser = argparse.ArgumentParser(
        prog="npseg", formatter_class=fmt,
        description="Real-time colonoscopy polyp segmentation on one CPU core.",
        epilog="examples:\n  npseg segment frames/ --out results\n  npseg video clip.mp4 -o overlay.avi\n"
               "  npseg info ultraseg-130k\n  npseg bench\n\n" + EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"npseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    _add_segment_command(sub, fmt)
    _add_warmup_command(sub, fmt)
    _add_video_command(sub, fmt)
    _add_info_command(sub, fmt)
    _add_bench_command(sub, fmt)
    return parser


def _add_segment_command(sub, fmt) -> None:
    p = sub.add_parser(
        "segment", formatter_class=fmt, help="images or folders -> masks and overlays",
        description="Segment images (files, or folders searched recursively) into OUT/masks/NAME.png "
                    "(0/255, the frame's size) and OUT/overlays/NAME.jpg (frame, translucent mask, outline). "
                    "NAME keeps the path inside a given folder.",
        epilog="example:\n  npseg segment kvasir-seg/images/ extra.jpg --out results --limit 50\n\n" + EXIT_CODES)
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files and/or folders")
    p.add_argument("--out", "-o", default="npseg-out", metavar="DIR", help="output folder (default: npseg-out)")
    p.add_argument("--limit", type=_positive, default=None, metavar="N", help="segment only the first N images")
    p.add_argument("--jobs", "-j", type=_positive, default=None, metavar="N",
                   help=f"worker processes, one thread each (default: the CPUs here, {default_jobs()}, "
                        f"at most one per {IMAGES_PER_WORKER} images)")
    _add_model_options(p)
    p.set_defaults(run=cmd_segment)


def _add_warmup_command(sub, fmt) -> None:
    p = sub.add_parser(
        "warmup", formatter_class=fmt, help="compile the models' kernels once, after an install",
        description="Compile the Numba kernels of the given models (default: every bundled model) into Numba's "
                    "cache, so that later runs start in about a second. Without it the first run after an "
                    "install segments its first frames with the slower NumPy reference while the kernels compile.",
        epilog="example:\n  npseg warmup\n\n" + EXIT_CODES)
    p.add_argument("models", nargs="*", metavar="NAME|FILE", help="bundled model names or weights files")
    p.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    p.add_argument("--size", type=_size, default=None, help=argparse.SUPPRESS)
    # a first run's kernels, finished after it exits (npseg.background_compile.hand_over_unfinished)
    p.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(run=cmd_warmup)


def _add_video_command(sub, fmt) -> None:
    p = sub.add_parser(
        "video", formatter_class=fmt, help="video file or camera -> overlay video",
        description="Segment every frame of a video file (or a camera, by index) and write a video of overlays "
                    "with the mask outline and an FPS readout. Output by extension: .avi/.mkv (Motion JPEG: "
                    "least CPU, larger files; best for real time) or .mp4/.m4v/.mov (MPEG-4 Part 2: compact, "
                    "about twice the encoding CPU). Stop a camera with Ctrl-C (or q in the window).",
        epilog="examples:\n  npseg video colonoscopy.mp4 -o overlay.avi --smooth 0.5\n"
               "  npseg video 0 -o live.avi --display\n\n" + EXIT_CODES)
    p.add_argument("input", metavar="INPUT", help="video file, or camera index such as 0")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="overlay video to write")
    p.add_argument("--smooth", type=_smoothing, default=0.0, metavar="ALPHA",
                   help="temporal smoothing: exponential moving average of the polyp probability with weight "
                        "ALPHA on the past, in [0, 1); 0 (default) = off, 0.5 = steadier outlines")
    display = p.add_mutually_exclusive_group()
    display.add_argument("--display", dest="display", action="store_true", help="also show the overlay in a window")
    display.add_argument("--no-display", dest="display", action="store_false", help="no window (default)")
    p.add_argument("--max-frames", type=_positive, default=None, metavar="N", help="stop after N frames")
    _add_model_options(p)
    p.set_defaults(run=cmd_video, display=False)


def _add_info_command(sub, fmt) -> None:
    p = sub.add_parser(
        "info", formatter_class=fmt, help="what a weights file holds",
        description="Architecture, parameter count, config, preprocessing, provenance and metrics recorded in a "
                    "weights file (after verifying its checksum).",
        epilog="examples:\n  npseg info ultraseg-130k\n  npseg info my-model.safetensors --json\n\n" + EXIT_CODES)
    p.add_argument("weights", nargs="?", default=DEFAULT_WEIGHTS, metavar="WEIGHTS",
                   help=f"bundled model name or .safetensors file (default: {DEFAULT_WEIGHTS})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=cmd_info)


def _add_bench_command(sub, fmt) -> None:
    p = sub.add_parser(
        "bench", formatter_class=fmt, help="quick single-core speed check",
        description="Time predict() on a synthetic frame with this machine's engine on one CPU core (Linux: "
                    "re-runs itself restricted to one CPU, BLAS with one thread), after a warm-up call (which "
                    "includes Numba compilation on a cold cache).",
        epilog="examples:\n  npseg bench\n  npseg bench --backend numpy --seconds 2 --frame-size 1080x1920\n\n"
               + EXIT_CODES)
    p.add_argument("--seconds", type=_seconds, default=3.0, metavar="S", help="time to spend measuring (default 3)")
    p.add_argument("--frame-size", type=_frame_size, default=(1024, 1280), metavar="HxW",
                   help="frame size handed to predict (default 1024x1280)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="run in this process on whatever CPUs it may use")
    _add_model_options(p, threshold=False)
    p.set_defaults(run=cmd_bench)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM stops a run as Ctrl-C does: outputs finished or removed


def _escape_unprintable() -> None:
    """File names that are not valid UTF-8, and lone surrogates in a weights file's
    metadata, print as backslash escapes instead of failing the run."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    # Our one-line errors say what went wrong; OpenCV's and FFmpeg's own log lines ("can't
    # open camera by index", "moov atom not found") would only add noise. To see them again:
    # OPENCV_LOG_LEVEL=INFO OPENCV_FFMPEG_LOGLEVEL=32 npseg ...
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    if "OPENCV_LOG_LEVEL" not in os.environ:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    _escape_unprintable()
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints usage + error and exits 2
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return BAD_INPUT
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    if args.command != "segment":  # segment ends its start-up once its model is warm
        end_of_start_up()
    try:
        return args.run(args)
    except CliError as e:
        print(f"npseg: error: {one_line(e)}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("npseg: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # e.g. `npseg info | head`: the reader left, nothing to report
        sys.stderr.close()
        return OK
    except MemoryError:
        print("npseg: error: out of memory", file=sys.stderr)
        return RUNTIME_FAILURE
    except OSError as e:  # a path the system refuses outright (a name too long, a loop of links)
        where = f"{e.filename}: " if e.filename else ""
        print(f"npseg: error: {one_line(where + (e.strerror or str(e)))}", file=sys.stderr)
        return BAD_INPUT
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
