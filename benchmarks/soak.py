"""Soak: many frames of varying sizes through one Segmenter; resident memory must stay flat.

    OPENBLAS_NUM_THREADS=1 python benchmarks/soak.py [--frames 10000] [--backend numba]

Frames are crops of random size (non-contiguous views) of a few large base
images (Kvasir-SEG frames when the shared data is present, synthetic otherwise);
one in ten is handed over as grayscale and one in ten as BGRA, so the
conversion paths soak too. RSS is read after loading, after a warm-up (Numba
compilation, per-size plans, allocator pools) and then every `--every` frames;
the pass criterion is growth after warm-up below `--limit-mb` (20 MB).
Writes benchmarks/results/soak.json. Not a CI test: it takes minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import npseg  # noqa: E402  (after the path set-up, so the checkout's npseg is measured)

MB = 1024 * 1024


def rss_mb() -> float:
    """Current resident set size (Linux /proc; getrusage's peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except OSError:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def base_images(shared: Path, rng: np.random.Generator) -> list[np.ndarray]:
    """1080x1920 canvases to crop from: real frames upscaled, or coloured noise."""
    paths = sorted((shared / "data" / "kvasir-seg" / "images").glob("*.jpg"))[:4]
    images = [cv2.imread(str(p)) for p in paths]
    images = [cv2.resize(im, (1920, 1080), interpolation=cv2.INTER_LINEAR) for im in images if im is not None]
    if not images:
        images = [cv2.GaussianBlur(rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8), (0, 0), 9)
                  for _ in range(4)]
    return images


def frame_stream(images: list[np.ndarray], count: int, rng: np.random.Generator):
    """Random-size crops; one in ten grayscale, one in ten BGRA."""
    for i in range(count):
        base = images[i % len(images)]
        h, w = int(rng.integers(240, 1081)), int(rng.integers(320, 1921))
        y, x = int(rng.integers(0, 1081 - h)), int(rng.integers(0, 1921 - w))
        crop = base[y:y + h, x:x + w]
        kind = i % 10
        if kind == 3:
            yield cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        elif kind == 7:
            yield cv2.cvtColor(crop, cv2.COLOR_BGR2BGRA)
        else:
            yield crop


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--every", type=int, default=500, help="RSS sample interval (frames)")
    parser.add_argument("--backend", default=None, help="numba (default when available) or numpy")
    parser.add_argument("--limit-mb", type=float, default=20.0)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("NPSEG_SHARED", REPO.parent / "shared")))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    images = base_images(args.shared, rng)
    rss_start = rss_mb()
    model = npseg.load("ultraseg-130k", backend=args.backend)
    rss_loaded = rss_mb()
    print(f"{model}; RSS {rss_start:.1f} MB at start, {rss_loaded:.1f} MB after load", flush=True)

    samples, times, polyp_fraction = [], [], 0.0
    rss_warm = None
    started = time.perf_counter()
    for i, frame in enumerate(frame_stream(images, args.frames, rng), 1):
        t = time.perf_counter()
        mask = model.predict(frame)
        times.append(time.perf_counter() - t)
        assert mask.shape == frame.shape[:2]
        polyp_fraction += float(mask.mean()) / args.frames
        if i == args.warmup:
            rss_warm = rss_mb()
            print(f"after {i} warm-up frames: RSS {rss_warm:.1f} MB", flush=True)
        if i % args.every == 0 or i == args.frames:
            samples.append({"frame": i, "rss_mb": round(rss_mb(), 2)})
            print(f"{i:>6} frames  RSS {samples[-1]['rss_mb']:.1f} MB  "
                  f"median {1000 * np.median(times[-args.every:]):.1f} ms", flush=True)
    wall = time.perf_counter() - started
    if rss_warm is None:
        raise SystemExit(f"--frames {args.frames} must exceed --warmup {args.warmup}")

    rss_end = rss_mb()
    after_warmup = [s["rss_mb"] for s in samples if s["frame"] > args.warmup]
    growth = rss_end - rss_warm
    ms = 1000 * np.array(times)
    result = {
        "frames": args.frames,
        "warmup_frames": args.warmup,
        "backend": model.backend,
        "model": model.config.name,
        "input_size": list(model.input_size),
        "frame_sizes": "random crops, h 240-1080, w 320-1920; 10% gray, 10% BGRA",
        "source_images": "kvasir-seg" if (args.shared / "data" / "kvasir-seg").is_dir() else "synthetic",
        "rss_mb": {"start": round(rss_start, 2), "after_load": round(rss_loaded, 2),
                   "after_warmup": round(rss_warm, 2), "end": round(rss_end, 2),
                   "max_after_warmup": round(max(after_warmup), 2)},
        "growth_after_warmup_mb": round(growth, 2),
        "limit_mb": args.limit_mb,
        "passed": growth < args.limit_mb,
        "samples": samples,
        "predict_ms": {"median": round(float(np.median(ms)), 2), "p90": round(float(np.percentile(ms, 90)), 2),
                       "p99": round(float(np.percentile(ms, 99)), 2), "max": round(float(ms.max()), 2)},
        "wall_s": round(wall, 1),
        "mean_polyp_fraction": round(polyp_fraction, 4),
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
                    "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
        "commit": commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    verdict = "PASS" if result["passed"] else "FAIL"
    print(f"{verdict}: {args.frames} frames, RSS {rss_warm:.1f} MB after warm-up -> {rss_end:.1f} MB at end "
          f"(growth {growth:+.1f} MB, limit {args.limit_mb:g}); wrote {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
