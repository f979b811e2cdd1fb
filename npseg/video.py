"""Video in, overlay video out: decode, segment, draw, encode, one frame at a time.

The mask is computed and outlined at the network's resolution and only stretched
to the frame inside its bounding box, so drawing stays a few ms per frame at
1280x1024. Decoding is OpenCV's (FFmpeg). Encoding is the costly part: .avi/.mkv
are Motion JPEG whose frames libjpeg-turbo compresses (cv2.imencode) and FFmpeg
only packs, about half the CPU of FFmpeg's MPEG-4 encoder used for .mp4/.mov.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .files import opencv_path, replacing
from .overlay import draw_label, draw_overlay
from .preprocessing import decision_threshold, polyp_mask, polyp_probability
from .segmenter import Segmenter

# Output container by extension -> codec (FourCC) that OpenCV's bundled FFmpeg can write.
CODECS = {".avi": "MJPG", ".mkv": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v"}
JPEG_QUALITY = 85
DEFAULT_FPS = 30.0


class VideoError(Exception):
    """An input that cannot be opened or an output that cannot be written."""


class VideoWriteError(VideoError):
    """The run started but its output could not be written completely (a full disk)."""


class MaskStream:
    """Per-frame masks at the network resolution, optionally smoothed over time.

    `smooth` is the weight of the past in an exponential moving average of the
    polyp probability (0 = off, 0.5 = the newest frame counts half). Without
    smoothing or a threshold the decision is predict's argmax, so the masks
    (stretched to the frame) equal `Segmenter.predict`."""

    def __init__(self, model: Segmenter, smooth: float = 0.0, threshold: float | None = None):
        if not 0.0 <= smooth < 1.0:
            raise ValueError(f"smooth must be in [0, 1), got {smooth}")
        self.model, self.smooth, self.threshold = model, smooth, threshold
        self._out = model.weights.output  # softmax over two logits or sigmoid of one, as the file says
        self._avg = None

    def next(self, frame: np.ndarray) -> np.ndarray:
        lo = self.model.logits(frame)
        if self.smooth == 0.0 and self.threshold is None:
            return polyp_mask(lo, self._out).astype(np.uint8)
        prob = polyp_probability(lo, self._out)
        if self.smooth and self._avg is not None:
            prob = self.smooth * self._avg + (1.0 - self.smooth) * prob
        self._avg = prob
        threshold = decision_threshold(self._out) if self.threshold is None else self.threshold
        return (prob > threshold).astype(np.uint8)


def check_input(source: str) -> None:
    """Refuse, before anything is written, an input that cannot be opened: a missing file,
    or a name OpenCV cannot take."""
    if source.isdigit():
        return
    if not Path(source).is_file():
        raise VideoError(f"{source}: no such video file (give a file or a camera index such as 0)")
    if opencv_path(source) is None:
        raise VideoError(f"{source}: OpenCV cannot open a file whose name is not valid UTF-8; rename it")


def check_output(output: str, source: str) -> None:
    """Refuse, before anything is written, an output that cannot be written or would
    replace the input."""
    path = Path(output)
    ext = path.suffix.lower()
    if ext not in CODECS:
        raise VideoError(f"{output}: unsupported output extension {ext or '(none)'!r}; use one of {sorted(CODECS)}")
    if not path.parent.is_dir():
        raise VideoError(f"{output}: cannot write, folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise VideoError(f"{output}: is a folder; give the video file to write")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise VideoError(f"{output}: cannot write, folder {str(path.parent)!r} is not writable")
    if opencv_path(path.parent) is None:
        raise VideoError(f"{output}: OpenCV cannot write into a folder whose name is not valid UTF-8")
    if not source.isdigit() and (os.path.realpath(path) == os.path.realpath(source)
                                 or path.exists() and path.samefile(source)):
        raise VideoError(f"{output}: the output would overwrite the input")


def open_input(source: str) -> tuple[cv2.VideoCapture, bool]:
    """A video file, or a camera given by its index ("0"). Returns (capture, is_camera)."""
    check_input(source)
    is_camera = source.isdigit()
    cap = cv2.VideoCapture(int(source) if is_camera else source)
    if not cap.isOpened():
        raise VideoError(f"{source}: cannot open {'camera' if is_camera else 'as a video'}")
    return cap, is_camera


class VideoOutput:
    """An overlay video file; Motion JPEG frames are compressed here and passed to FFmpeg
    as ready packets (VIDEOWRITER_PROP_RAW_VIDEO) when this OpenCV supports it."""

    def __init__(self, path: str, fps: float, width: int, height: int):
        ext = Path(path).suffix.lower()
        fourcc = cv2.VideoWriter_fourcc(*CODECS[ext])
        self.packets = False
        if CODECS[ext] == "MJPG" and hasattr(cv2, "VIDEOWRITER_PROP_RAW_VIDEO"):
            self._writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, fourcc, fps, (width, height),
                                           [cv2.VIDEOWRITER_PROP_RAW_VIDEO, 1])
            self.packets = self._writer.isOpened() and self._writer.set(cv2.VIDEOWRITER_PROP_KEY_FLAG, 1)
        if not self.packets:
            self._writer = cv2.VideoWriter(path, cv2.CAP_FFMPEG, fourcc, fps, (width, height))
        if not self._writer.isOpened():
            raise VideoError(f"{path}: cannot write a video there (permissions?)")

    def write(self, frame: np.ndarray) -> None:
        if self.packets:
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            self._writer.write(jpeg.reshape(1, -1))
        else:
            self._writer.write(frame)

    def release(self) -> None:
        self._writer.release()


@dataclass
class VideoResult:
    """Timings after warm-up. Wall time is what a viewer sees; CPU time is this process's
    own work, the figure to trust when other programs share the core."""

    frames: int
    seconds: float  # wall: decode + segment + draw + encode (+ display)
    cpu_seconds: float  # the same span in this process's CPU time (all its threads)
    segment_cpu_seconds: float  # CPU time in the network (preprocess + forward + decision)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1000 * self.cpu_seconds / max(self.frames, 1)

    @property
    def segment_cpu_ms_per_frame(self) -> float:
        return 1000 * self.segment_cpu_seconds / max(self.frames, 1)


def run(model: Segmenter, source: str, output: str, smooth: float = 0.0, threshold: float | None = None,
        display: bool = False, max_frames: int | None = None, on_frame=None) -> VideoResult:
    """Segment `source` into the overlay video `output`; `on_frame(done, total, fps)` reports progress.

    Stops at the end of the input, after `max_frames`, on Ctrl-C (or SIGTERM, which the
    command line turns into the same interrupt), or on q/Esc in the window. The video is
    written beside `output` and renamed onto it only once complete and verified: a run
    that fails leaves an existing `output` as it was."""
    check_output(output, source)
    cap, is_camera = open_input(source)
    window = False
    try:
        ok, frame = cap.read()
        if not ok:
            raise VideoError(f"{source}: no frame could be read")
        try:
            model.logits(frame)  # warm-up (JIT, buffers) outside the timed loop; checks the frame size
        except ValueError as e:
            raise VideoError(f"{source}: {e}") from None
        if display:
            _open_window()
            window = True
        try:
            with replacing(output) as temp:
                return _write_video(cap, frame, str(temp), output, MaskStream(model, smooth, threshold),
                                    window, _frame_total(cap, is_camera, max_frames), max_frames, on_frame)
        except OSError as e:  # the folder takes no new file, or the finished file cannot be renamed
            raise VideoError(f"{output}: cannot write there ({e.strerror or e})") from None
    finally:
        cap.release()
        if window:
            cv2.destroyAllWindows()


def _frame_total(cap, is_camera: bool, max_frames: int | None) -> int | None:
    """How many frames the run will segment, when known (for the progress line)."""
    total = None if is_camera else int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    return total if max_frames is None else min(total or max_frames, max_frames)


def _write_video(cap, frame, temp: str, output: str, masks: MaskStream, window: bool,
                 total: int | None, max_frames: int | None, on_frame) -> VideoResult:
    """Segment the frames from `frame` on into the video file `temp`, closed and verified."""
    fps_in = cap.get(cv2.CAP_PROP_FPS)
    fps_in = fps_in if 1.0 <= fps_in <= 240.0 else DEFAULT_FPS
    writer = VideoOutput(temp, fps_in, frame.shape[1], frame.shape[0])
    frames, seg_cpu, ok = 0, 0.0, True
    recent = deque(maxlen=31)  # start times of the last 31 frames: the FPS readout over 30 intervals
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        while ok:
            t0, c0 = time.perf_counter(), time.process_time()
            mask = masks.next(frame)
            seg_cpu += time.process_time() - c0
            draw_overlay(frame, mask, in_place=True)
            recent.append(t0)
            fps_now = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
            draw_label(frame, f"{fps_now:5.1f} FPS")
            writer.write(frame)
            frames += 1
            if on_frame:
                on_frame(frames, total, fps_now)
            if window:
                cv2.imshow("npseg", frame)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            if max_frames is not None and frames >= max_frames:
                break
            ok, frame = cap.read()
    except KeyboardInterrupt:
        if not frames:
            raise  # nothing to keep: the run was interrupted, the output stays as it was
        # stopping a camera with Ctrl-C is normal: finish the file and report
    finally:
        writer.release()
    result = VideoResult(frames, time.perf_counter() - start, time.process_time() - start_cpu, seg_cpu)
    _verify(temp, output, frames)
    return result


def _verify(path: str, output: str, frames: int) -> None:
    """OpenCV's writer reports no I/O error: a full disk leaves a truncated file behind a
    successful run. A complete file opens, holds every frame and decodes its last one."""
    cap = cv2.VideoCapture(path)
    try:
        found = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        last_ok = found == frames and cap.set(cv2.CAP_PROP_POS_FRAMES, frames - 1) and cap.grab()
    finally:
        cap.release()
    if not last_ok:
        raise VideoWriteError(f"{output}: could not be written completely ({found} of {frames} frame(s) "
                              "readable; disk full?); the partial file was removed")


def _open_window() -> None:
    try:
        cv2.namedWindow("npseg", cv2.WINDOW_NORMAL)
    except cv2.error:
        raise VideoError("--display needs an OpenCV with GUI support; this one has none "
                         "(opencv-python-headless): pip install opencv-python, or drop --display") from None
