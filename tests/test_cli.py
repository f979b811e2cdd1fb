"""The `npseg` command: outputs on real frames and videos, and one-line errors with exit codes."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import npseg
from npseg.cli import Progress, main
from npseg.overlay import draw_overlay
from npseg.segmenter import default_backend
from npseg.video import MaskStream

REPO = Path(__file__).resolve().parent.parent
BACKEND = default_backend()  # numba where it is installed: the tests stay fast
N_IMAGES = 3


@pytest.fixture(scope="module")
def model():
    # compiled here first: with an empty Numba cache the CLI would segment its first images on the
    # float64 reference while the kernels compile, and the masks are compared with predict() bit for bit
    model = npseg.load(backend=BACKEND)
    model.predict(np.zeros((64, 64, 3), np.uint8))
    return model


@pytest.fixture(scope="module")
def image_folder(data_dir, tmp_path_factory) -> Path:
    """A few real Kvasir-SEG frames, one of them in a subfolder (folders are searched recursively)."""
    folder = tmp_path_factory.mktemp("images")
    sources = sorted((data_dir / "kvasir-seg" / "images").glob("*.jpg"))[:N_IMAGES]
    (folder / "sub").mkdir()
    for i, src in enumerate(sources):
        shutil.copy(src, folder / ("sub" if i == 0 else "") / src.name)
    return folder


@pytest.fixture(scope="module")
def clip(data_dir, tmp_path_factory) -> Path:
    """A 12-frame 320x256 video made of real frames, as an endoscope recording would be."""
    sources = sorted((data_dir / "kvasir-seg" / "images").glob("*.jpg"))[:4]
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 256))
    for i in range(12):
        writer.write(cv2.resize(cv2.imread(str(sources[i // 3])), (320, 256)))
    writer.release()
    return path


def read_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    ok, frame = cap.read()
    while ok:
        frames.append(frame)
        ok, frame = cap.read()
    cap.release()
    return frames


def test_segment_folder_writes_masks_equal_to_predict(image_folder, model, tmp_path, capsys):
    rc = main(["segment", str(image_folder), "--out", str(tmp_path), "--backend", BACKEND])
    assert rc == 0
    images = sorted(image_folder.rglob("*.jpg"))
    assert len(images) == N_IMAGES
    for image_path in images:
        name = image_path.relative_to(image_folder).with_suffix("")
        frame = cv2.imread(str(image_path))
        mask = cv2.imread(str(tmp_path / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(tmp_path / "overlays" / f"{name}.jpg"))
        assert mask.shape == frame.shape[:2] and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask, model.predict(frame) * 255)
        assert overlay.shape == frame.shape
    out = capsys.readouterr().out
    assert f"segmented {N_IMAGES} image(s)" in out and "ms/frame" in out and str(tmp_path / "masks") in out


def test_segment_limit_and_threshold(image_folder, model, tmp_path):
    assert main(["segment", str(image_folder), "-o", str(tmp_path), "--limit", "1", "--threshold", "0.8",
                 "--backend", BACKEND]) == 0
    (mask_path,) = (tmp_path / "masks").rglob("*.png")
    first = sorted(p for p in image_folder.rglob("*.jpg"))[0]
    np.testing.assert_array_equal(cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED),
                                  model.predict(cv2.imread(str(first)), threshold=0.8) * 255)


def test_segment_skips_undecodable_image_and_exits_1(image_folder, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(image_folder, folder)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    rc = main(["segment", str(folder), "--out", str(tmp_path / "out"), "--backend", BACKEND])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.jpg" in err[0] and "skipped" in err[0]
    assert len(list((tmp_path / "out" / "masks").rglob("*.png"))) == N_IMAGES


def test_segment_skips_frame_predict_refuses(tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((8, 8, 3), np.uint8))
    assert main(["segment", str(tmp_path / "tiny.png"), "--out", str(tmp_path / "out"), "--backend", BACKEND]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "too small" in err[0]


def test_segment_ignores_its_own_output_inside_the_input_folder(image_folder, tmp_path, capsys):
    folder = tmp_path / "in"
    shutil.copytree(image_folder, folder)
    for _ in range(2):  # the second run must not segment the first run's overlays
        assert main(["segment", str(folder), "--out", str(folder / "results"), "--backend", BACKEND]) == 0
    assert f"segmented {N_IMAGES} image(s)" in capsys.readouterr().out.splitlines()[-3]


def test_video_writes_every_frame(clip, tmp_path, capsys):
    out = tmp_path / "overlay.mp4"
    assert main(["video", str(clip), "-o", str(out), "--backend", BACKEND]) == 0
    frames = read_video(out)
    assert len(frames) == 12 and frames[0].shape == (256, 320, 3)
    report = capsys.readouterr().out
    assert "wrote 12 frame(s)" in report and "FPS end to end" in report


def test_video_smoothing_and_max_frames(clip, tmp_path):
    out = tmp_path / "overlay.avi"
    assert main(["video", str(clip), "-o", str(out), "--smooth", "0.5", "--max-frames", "5",
                 "--backend", BACKEND]) == 0
    assert len(read_video(out)) == 5


def test_video_masks_equal_predict(clip, model):
    stream = MaskStream(model)
    for frame in read_video(clip)[::3]:
        small = stream.next(frame)
        full = cv2.resize(small, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(full, model.predict(frame))


@pytest.mark.parametrize("variant", ["aulunet", "microaunet"])  # one sigmoid logit, not two softmax logits
def test_video_masks_follow_a_sigmoid_file(clip, tmp_path, variant):
    from conftest import random_torch_model, write_weights

    weights = write_weights(random_torch_model(variant, seed=3), tmp_path / f"{variant}.safetensors")
    one_logit = npseg.load(weights, backend=BACKEND)
    plain, smoothed = MaskStream(one_logit), MaskStream(one_logit, smooth=0.5)
    for frame in read_video(clip)[:2]:
        full = cv2.resize(plain.next(frame), (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(full, one_logit.predict(frame))
        assert smoothed.next(frame).shape == one_logit.input_size


def test_smoothing_averages_probabilities(model):
    frame = np.full((64, 64, 3), 128, np.uint8)
    stream = MaskStream(model, smooth=0.9, threshold=0.5)
    stream.next(frame)
    stream._avg = np.ones_like(stream._avg)  # a confident past keeps the polyp through one odd frame
    assert stream.next(frame).all()


def test_overlay_tints_inside_and_keeps_outside():
    frame = np.full((200, 250, 3), 100, np.uint8)
    mask = np.zeros((40, 50), np.uint8)  # network-resolution mask, 5x smaller
    mask[10:30, 10:30] = 1
    drawn = draw_overlay(frame, mask)
    assert (frame == 100).all()  # the input is not modified
    assert drawn[100, 100, 1] > 150 and drawn[100, 100, 0] < 100  # inside: green tint
    assert (drawn[:30] == 100).all() and (drawn[:, 170:] == 100).all()  # well outside: untouched
    np.testing.assert_array_equal(draw_overlay(frame, np.zeros_like(mask)), frame)


def test_progress_line_on_a_terminal():
    stream = io.StringIO()
    progress = Progress("segment", 4, stream)
    progress.enabled = True  # as on a terminal
    for done in range(1, 5):
        progress.update(done, "12 ms/frame")
    progress.close()
    text = stream.getvalue()
    assert text.startswith("\rsegment [") and "4/4 12 ms/frame" in text and text.endswith("\n")
    assert not Progress("segment", 4, io.StringIO()).enabled  # not a terminal: scripts get clean logs


def test_info_and_bench(capfd):
    assert main(["info"]) == 0
    out = capfd.readouterr().out
    assert "ultraseg-130k" in out and "parameters:" in out and "provenance:" in out
    assert main(["info", "--json"]) == 0 and '"parameters"' in capfd.readouterr().out
    # the default bench re-runs itself on one CPU (a child process, whose output goes to the same fd)
    assert main(["bench", "--seconds", "0.2", "--frame-size", "240x320", "--backend", BACKEND]) == 0
    out = capfd.readouterr().out
    assert "FPS" in out and ("only" in out or "not pinned" in out)


def _bad_inputs(tmp: Path) -> dict[str, list[str]]:
    (tmp / "notes.jpg").write_text("not an image")
    (tmp / "empty").mkdir()
    (tmp / "a_file").write_text("")
    (tmp / "truncated.safetensors").write_bytes((REPO / "weights" / "ultraseg-130k.safetensors").read_bytes()[:5000])
    (tmp / "model.pth").write_bytes(b"PK\x03\x04 zip checkpoint")
    (tmp / "clip.mp4").write_text("not a video")
    tiny = str(tmp / "tiny.avi")
    writer = cv2.VideoWriter(tiny, cv2.VideoWriter_fourcc(*"MJPG"), 25, (8, 8))
    for _ in range(2):
        writer.write(np.zeros((8, 8, 3), np.uint8))
    writer.release()
    frame = str(tmp / "frame.png")
    cv2.imwrite(frame, np.zeros((64, 64, 3), np.uint8))
    (tmp / "other").mkdir()
    shutil.copy(frame, tmp / "other" / "frame.png")
    (tmp / "loop").symlink_to("loop")
    video = str(tmp / "two_frames.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
    for _ in range(2):
        writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    return {
        "missing image": ["segment", str(tmp / "nope.jpg")],
        "non-image file": ["segment", str(tmp / "notes.jpg")],
        "folder without images": ["segment", str(tmp / "empty")],
        "unknown weights name": ["segment", frame, "--weights", "ultraseg-9000"],
        "truncated weights": ["segment", frame, "--weights", str(tmp / "truncated.safetensors")],
        "unknown backend": ["segment", frame, "--backend", "cuda"],
        "unwritable output": ["segment", frame, "--out", str(tmp / "a_file" / "out")],
        "two inputs, one output name": ["segment", frame, str(tmp / "other" / "frame.png")],
        "missing video": ["video", str(tmp / "nope.mp4"), "-o", str(tmp / "o.mp4")],
        "not a video": ["video", str(tmp / "clip.mp4"), "-o", str(tmp / "o.mp4")],
        "video output folder missing": ["video", video, "-o", str(tmp / "no" / "o.mp4")],
        "video frames too small": ["video", tiny, "-o", str(tmp / "o.avi")],
        "camera that is not there": ["video", "9", "-o", str(tmp / "o.avi")],
        "info of a .pth": ["info", str(tmp / "model.pth")],
        "info of a missing file": ["info", str(tmp / "nope.safetensors")],
        "name too long": ["segment", str(tmp / ("a" * 300))],
        "video name too long": ["video", str(tmp / ("a" * 300)), "-o", str(tmp / "o.avi")],
        "output into a loop of links": ["segment", frame, "--out", str(tmp / "loop")],
        "video output onto a loop of links": ["video", video, "-o", str(tmp / "loop" / "o.avi")],
    }


BAD_CASES = ("missing image", "non-image file", "folder without images", "unknown weights name",
             "truncated weights", "unknown backend", "unwritable output", "two inputs, one output name",
             "missing video", "not a video",
             "video output folder missing", "video frames too small", "camera that is not there",
             "info of a .pth", "info of a missing file", "name too long", "video name too long",
             "output into a loop of links", "video output onto a loop of links")


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default --out would go
    rc = main(_bad_inputs(tmp_path)[case])
    assert not (tmp_path / "npseg-out").exists()  # a run that fails to start leaves nothing behind
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith("npseg: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out


def test_video_output_extension_checked(clip, tmp_path, capsys):
    assert main(["video", str(clip), "-o", str(tmp_path / "o.xyz"), "--backend", BACKEND]) == 2
    assert "extension" in capsys.readouterr().err


@pytest.mark.skipif(not re.search(r"GUI:\s+NONE", cv2.getBuildInformation()),
                    reason="this OpenCV has a GUI: --display would open a window")
def test_display_without_gui_is_one_line(clip, tmp_path, capsys):
    assert main(["video", str(clip), "-o", str(tmp_path / "o.avi"), "--display", "--backend", BACKEND]) == 2
    assert "GUI" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    for argv in (["segment", "x.jpg", "--threshold", "2"], ["video", "in.mp4"], ["frobnicate"], []):
        with pytest.raises(SystemExit) as exit_info:
            rc = main(argv)
            raise SystemExit(rc)
        assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_console_entry_point_runs_without_traceback(tmp_path):
    """`python -m npseg` as a user runs it: help with an example, and a one-line error."""
    help_run = subprocess.run([sys.executable, "-m", "npseg", "video", "--help"], capture_output=True, text=True,
                              cwd=REPO, timeout=120)
    assert help_run.returncode == 0 and "example" in help_run.stdout
    (tmp_path / "clip.mp4").write_text("not a video")  # FFmpeg itself would log "moov atom not found"
    for argv in (["segment", str(tmp_path / "missing.jpg")], ["video", str(tmp_path / "clip.mp4"), "-o", "x.mp4"]):
        bad = subprocess.run([sys.executable, "-m", "npseg", *argv], capture_output=True, text=True, cwd=REPO,
                             timeout=120)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("npseg: error: "), bad.stderr


# ---- robustness: the real command in a subprocess; nothing of the user's lost, never a crash ----

QUICK = ("--backend", "numpy", "--size", "32")  # the reference at a tiny input: no compilation, fast


def npseg_cli(*argv, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m npseg ARGV` as a user runs it; arguments may be bytes (names that are not UTF-8)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "npseg", *argv], cwd=cwd, capture_output=True, timeout=timeout,
                          env=env)


def assert_clean(result: subprocess.CompletedProcess, code: int, fragment: str = "") -> str:
    """Exit status `code`, no traceback; a failure ends with a one-line error or warning holding `fragment`."""
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == code, err
    assert "Traceback" not in err and "Segmentation fault" not in err
    if code:
        last = err.strip().splitlines()[-1]
        assert re.match(r"npseg( \w+)?: (error|warning): ", last), err  # "npseg segment: error:" from argparse
        assert fragment in last, err
    return err


def png(seed: int = 0, size=(40, 48)) -> bytes:
    frame = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return cv2.imencode(".png", frame)[1].tobytes()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def digests(folder: Path) -> dict[bytes, str]:
    """SHA-256 of every file below `folder`, by its name as bytes."""
    root = os.fsencode(folder)
    paths = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    return {os.path.relpath(p, root): hashlib.sha256(Path(os.fsdecode(p)).read_bytes()).hexdigest() for p in paths}


def synthetic_video(path: Path, frames: int, size=(128, 160)) -> Path:
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (size[1], size[0]))
    for i in range(frames):
        writer.write(np.roll(base, 3 * i, axis=1))
    writer.release()
    return path


def test_names_that_are_not_utf8_are_segmented(tmp_path):
    """OpenCV crashed (a segmentation fault) on such names: they are decoded and written by Python."""
    folder = tmp_path / os.fsdecode(b"in\xfe")
    folder.mkdir()
    (folder / os.fsdecode(b"frame\xff.png")).write_bytes(png())
    (folder / os.fsdecode(b"broken\xff.jpg")).write_bytes(b"\xff\xd8 not a jpeg")
    before = digests(tmp_path)
    out = os.fsdecode(b"out\xfd")
    err = assert_clean(npseg_cli("segment", os.fsencode(folder), "--out", out, *QUICK, cwd=tmp_path), 1)
    assert err.count("\n") == 1 and "broken\\udcff.jpg" in err and "skipped" in err  # named, escaped
    mask = cv2.imdecode(np.fromfile(tmp_path / out / "masks" / os.fsdecode(b"frame\xff.png"), np.uint8),
                        cv2.IMREAD_UNCHANGED)
    assert mask.shape == (40, 48)
    single = os.fsencode(folder / os.fsdecode(b"frame\xff.png"))
    assert_clean(npseg_cli("segment", single, "--out", "single", *QUICK, cwd=tmp_path), 0)
    assert {k: v for k, v in digests(tmp_path).items() if k in before} == before


def test_an_image_claiming_a_huge_size_is_skipped(tmp_path):
    """OpenCV raises (not returns None) for a header over 2**30 pixels: a traceback before."""
    (tmp_path / "bomb.png").write_bytes(png_claiming(40000, 40000))
    (tmp_path / "ok.png").write_bytes(png())
    err = assert_clean(npseg_cli("segment", ".", "--out", "res", *QUICK, cwd=tmp_path), 1, "bomb.png")
    assert "skipped" in err and (tmp_path / "res" / "masks" / "ok.png").is_file()


def test_video_input_not_utf8_is_refused_by_name_and_output_name_is_written(tmp_path):
    clip = synthetic_video(tmp_path / "clip.avi", 3)
    odd = tmp_path / os.fsdecode(b"clip\xff.avi")
    clip.rename(odd)
    assert_clean(npseg_cli("video", os.fsencode(odd), "-o", "o.avi", *QUICK, cwd=tmp_path), 2,
                 "clip\\udcff.avi: OpenCV cannot open a file whose name is not valid UTF-8")
    odd.rename(clip)
    assert_clean(npseg_cli("video", "clip.avi", "-o", os.fsdecode(b"o\xff.avi"), *QUICK, cwd=tmp_path), 0)
    assert len(read_video_bytes_name(tmp_path / os.fsdecode(b"o\xff.avi"))) == 3


def read_video_bytes_name(path: Path) -> list[np.ndarray]:
    """read_video for any name: through a symlink OpenCV can open."""
    link = path.parent / "readable.avi"
    link.symlink_to(path.name)
    try:
        return read_video(link)
    finally:
        link.unlink()


def test_video_failing_to_start_leaves_an_existing_output_as_it_was(tmp_path):
    (tmp_path / "garbage.mp4").write_bytes(b"not a video")
    tiny = tmp_path / "tiny.avi"
    writer = cv2.VideoWriter(str(tiny), cv2.VideoWriter_fourcc(*"MJPG"), 25, (8, 8))
    writer.write(np.zeros((8, 8, 3), np.uint8))
    writer.release()
    (tmp_path / "keep.avi").write_bytes(b"the user's earlier video")
    cases = {"garbage.mp4": "cannot open as a video", "missing.mp4": "no such video file",
             "keep.avi": "the output would overwrite the input",
             "tiny.avi": "frame is too small"}  # the last fails after the input opened
    for source, fragment in cases.items():
        assert_clean(npseg_cli("video", source, "-o", "keep.avi", *QUICK, cwd=tmp_path), 2, fragment)
        assert (tmp_path / "keep.avi").read_bytes() == b"the user's earlier video"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.mp4", "keep.avi", "tiny.avi"]  # no leftovers


def test_segment_never_writes_over_an_input(tmp_path):
    (tmp_path / "res" / "masks").mkdir(parents=True)
    (tmp_path / "res" / "masks" / "a.png").write_bytes(png())
    before = digests(tmp_path)
    for argv in (["res/masks/a.png", "--out", "res"], ["res/masks", "--out", "res"]):
        assert_clean(npseg_cli("segment", *argv, *QUICK, cwd=tmp_path), 2, "would overwrite the input image")
        assert digests(tmp_path) == before


def test_segment_out_dot_skips_only_its_own_output_folders(tmp_path):
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "a.png").write_bytes(png())
    for _ in range(2):  # the second run reads frames/ again, not the first run's masks/ and overlays/
        assert_clean(npseg_cli("segment", "frames", "--out", ".", *QUICK, cwd=tmp_path), 0)
    assert (tmp_path / "masks" / "a.png").is_file() and (tmp_path / "overlays" / "a.jpg").is_file()
    result = npseg_cli("segment", ".", "--out", ".", *QUICK, cwd=tmp_path)
    assert_clean(result, 0)
    assert b"segmented 1 image(s)" in result.stdout  # frames/a.png only


def _can_mount_tmpfs() -> bool:
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare and a private tmpfs mount to fill a disk")
@pytest.mark.parametrize("command", ["segment", "video"])
def test_full_disk_is_a_failed_write_and_leaves_no_partial_file(tmp_path, command):
    """A real full disk: a 160 KiB tmpfs mounted in a private mount namespace."""
    if command == "segment":
        (tmp_path / "in").mkdir()
        for i in range(8):
            (tmp_path / "in" / f"f{i}.png").write_bytes(png(i, (200, 300)))  # overlays of ~55 KB each
        run = "segment in --out full/o"
    else:
        synthetic_video(tmp_path / "clip.avi", 60, (256, 320))
        run = "video clip.avi -o full/o.avi"
    (tmp_path / "full").mkdir()
    script = (f"mount -t tmpfs -o size=160k tmpfs full && {shlex.quote(sys.executable)} -m npseg {run} "
              f"{' '.join(QUICK)}; code=$?; cp -a full kept; exit $code")  # keep what it left for the checks
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, timeout=180,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    err = assert_clean(result, 1, "No space left on device" if command == "segment" else "disk full?")
    left = sorted(p for p in (tmp_path / "kept").rglob("*") if p.is_file())
    assert not any(".part" in p.name for p in left) and not (tmp_path / "kept" / "o.avi").exists(), left
    named = re.search(r"full/(\S+): could not", err)
    assert named and not (tmp_path / "kept" / named.group(1)).exists(), err  # the failed file is named, not left
    for p in left:  # what was written is whole
        assert cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_UNCHANGED) is not None, p


def test_a_failed_image_write_is_exit_1_naming_the_file(tmp_path, capsys, monkeypatch):
    """The same check without a full disk: the write itself fails (in process)."""
    import errno

    from npseg import cli

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli, "write_bytes", disk_full)
    (tmp_path / "a.png").write_bytes(png())
    assert main(["segment", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *QUICK]) == 1
    err = capsys.readouterr().err
    assert err.startswith("npseg: error: ") and "a.png: could not write (No space left on device)" in err


def test_sigterm_during_video_finishes_the_file(tmp_path):
    synthetic_video(tmp_path / "long.avi", 3000)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "npseg", "video", "long.avi", "-o", "o.avi", *QUICK],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:  # until some frames reached the file
        parts = [p for p in tmp_path.iterdir() if ".part" in p.name]
        if parts and parts[0].stat().st_size > 64 << 10:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in err, err
    written = int(re.search(rb"wrote (\d+) frame", out).group(1))
    assert 0 < written < 3000 and len(read_video(tmp_path / "o.avi")) == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.avi", "o.avi"]


def forged_weights(path: Path, edit_header=None, edit_meta=None, edit_tensors=None) -> Path:
    """The bundled default with its header, metadata or tensors changed and both checksums recomputed
    (as a buggy or malicious writer would), so the check under test is the one that must refuse it."""
    from safetensors.numpy import save

    from npseg.weights import load as load_weights, tensors_checksum

    base = load_weights(npseg.segmenter.resolve_weights("ultraseg-130k"))
    raw = (REPO / "weights" / "ultraseg-130k.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    tensors = dict(base.tensors)
    (edit_tensors or (lambda t: None))(tensors)
    meta["tensors_sha256"] = tensors_checksum(tensors)
    (edit_meta or (lambda m: None))(meta)
    fields = {k: v for k, v in meta.items() if k != "metadata_sha256"}  # the documented canonical JSON
    meta["metadata_sha256"] = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"))
                                             .encode()).hexdigest()
    raw = save(tensors, metadata=meta)
    if edit_header:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        edit_header(header)
        text = json.dumps(header).encode()
        raw = struct.pack("<Q", len(text)) + text + raw[8 + n:]
    path.write_bytes(raw)
    return path


def _set_config(meta, **changes):
    meta["config"] = json.dumps(dict(json.loads(meta["config"]), **changes))


def _negative_variance(tensors):
    tensors["Down2.bn.running_var"] = tensors["Down2.bn.running_var"].copy()
    tensors["Down2.bn.running_var"][0] = -1.0


BAD_WEIGHTS = {  # case -> (forging edits, fragment of the one-line error: the tensor or field named)
    "negative BatchNorm variance": (dict(edit_tensors=_negative_variance),
                                    "'Down2.bn.running_var' holds 1 negative variance"),
    "huge tensor shape in the header": (
        dict(edit_header=lambda h: h["final.0.bias"].update(shape=[10**30])), "tensor 'final.0.bias' of shape"),
    "huge data offset in the header": (
        dict(edit_header=lambda h: h["final.0.bias"].update(data_offsets=[0, 10**30])), "tensor 'final.0.bias'"),
    "huge width in the config": (dict(edit_meta=lambda m: _set_config(m, widths=[8, 16, 10**30, 64, 96])),
                                 "'config' is invalid: field 'widths'"),
    "huge input_size in the metadata": (dict(edit_meta=lambda m: m.update(input_size="[1000000, 1000000]")),
                                        "'input_size' [1000000, 1000000] is invalid"),
}


@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_weights_with_bad_numbers_are_one_line_errors(tmp_path, case):
    edits, fragment = BAD_WEIGHTS[case]
    bad = forged_weights(tmp_path / "bad.safetensors", **edits)
    with pytest.raises(npseg.WeightsError, match=re.escape(fragment)):
        npseg.load(bad, backend="numpy")
    (tmp_path / "x.png").write_bytes(png())
    result = npseg_cli("segment", "x.png", "--weights", "bad.safetensors", "--backend", "numpy", cwd=tmp_path)
    assert_clean(result, 2, fragment)
    assert not (tmp_path / "npseg-out").exists()


def test_absurd_size_option_is_a_usage_error(tmp_path):
    for size in ("100000", "1" + "0" * 30):
        assert_clean(npseg_cli("segment", "x.png", "--size", size, cwd=tmp_path), 2, "--size")


@pytest.mark.parametrize("kind", ["symlink to /dev/zero", "named pipe", "sparse file of 2 GiB"])
def test_weights_path_that_is_no_model_file_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "w.safetensors"
    if kind == "named pipe":
        os.mkfifo(path)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    else:
        with open(path, "wb") as f:
            f.truncate(2 << 30)
    start = time.monotonic()
    assert_clean(npseg_cli("info", "w.safetensors", cwd=tmp_path, timeout=60), 2, "w.safetensors")
    assert time.monotonic() - start < 30


def test_info_prints_invalid_unicode_in_provenance_escaped(tmp_path):
    def lone_surrogate(meta):
        meta["provenance"] = json.dumps({"source": "scanner \ud800 export"})  # JSON "\ud800": valid JSON text

    forged_weights(tmp_path / "w.safetensors", edit_meta=lone_surrogate)
    result = npseg_cli("info", "w.safetensors", cwd=tmp_path)
    assert_clean(result, 0)
    assert b"source: scanner \\ud800 export" in result.stdout
    as_json = npseg_cli("info", "w.safetensors", "--json", cwd=tmp_path)
    assert_clean(as_json, 0)
    assert json.loads(as_json.stdout)["provenance"]["source"] == "scanner \ud800 export"


def test_a_folder_named_like_a_bundled_model_does_not_shadow_it(tmp_path):
    (tmp_path / "ultraseg-130k").mkdir()
    result = npseg_cli("info", "ultraseg-130k", cwd=tmp_path)
    assert_clean(result, 0)
    assert b"weights" in result.stdout.splitlines()[0]  # the bundled file, from the package's weights folder
    assert_clean(npseg_cli("info", "./ultraseg-130k", cwd=tmp_path), 2, "is a directory")
    assert_clean(npseg_cli("info", "file:ultraseg-130k", cwd=tmp_path), 2, "is a directory")
