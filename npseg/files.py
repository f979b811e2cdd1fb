"""Output files that are written whole or not at all, and file names OpenCV can take.

Every output is written to a temporary file beside its target and renamed onto
the target only once it is complete: a full disk, a crash or an interrupt never
leaves a truncated file, and never replaces a good one with a broken one.
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def opencv_path(path: str | os.PathLike) -> str | None:
    """`path` as a string OpenCV can open, or None. OpenCV encodes names as UTF-8 and
    crashes (a segmentation fault) on the surrogates Python uses for the bytes of a
    name that is not valid UTF-8, so such names must never reach it."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _create_beside(target: Path) -> Path:
    """A new empty file in the target's folder, hidden, with the target's suffix (FFmpeg
    chooses the container by it) and an ASCII name (so OpenCV can take it whatever the
    target's own name is)."""
    while True:
        temp = target.parent / f".npseg-{secrets.token_hex(4)}.part{target.suffix}"
        try:
            os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # mode as umask allows
            return temp
        except FileExistsError:
            continue


@contextmanager
def replacing(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `target` to write; renamed onto `target` when the block
    ends normally, removed when it raises (interrupts included). OSError when the
    folder cannot take a new file."""
    target = Path(target)
    temp = _create_beside(target)
    try:
        yield temp
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write `data` as the whole content of `target`; OSError (a full disk, permissions)
    leaves any previous `target` as it was."""
    with replacing(target) as temp, open(temp, "wb") as f:
        f.write(data)
