"""The `npseg` command: outputs on real frames and videos, and one-line errors with exit codes."""
from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
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
    return npseg.load(backend=BACKEND)


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
    }


BAD_CASES = ("missing image", "non-image file", "folder without images", "unknown weights name",
             "truncated weights", "unknown backend", "unwritable output", "two inputs, one output name",
             "missing video", "not a video",
             "video output folder missing", "video frames too small", "camera that is not there",
             "info of a .pth", "info of a missing file")


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
